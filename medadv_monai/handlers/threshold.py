"""Ignite handler: choose a single-logit classifier's decision threshold on the validation split."""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping

import torch
from ignite.engine import Engine, Events
from monai.handlers import from_engine

from medadv_monai.metrics import youden_threshold

__all__ = ["CalibrateThreshold"]

logger = logging.getLogger(__name__)


def _fraction(hits: torch.Tensor, among: torch.Tensor) -> float:
    return float(hits[among].float().mean()) if bool(among.any()) else float("nan")


#: rate -> (predicted positive, truly positive) -> value
_RATES: dict[str, Callable[[torch.Tensor, torch.Tensor], float]] = {
    "accuracy": lambda p, y: float((p == y).float().mean()),
    "sensitivity": lambda p, y: _fraction(p, y),
    "specificity": lambda p, y: _fraction(~p, ~y),
}


def _per_sample(values: object) -> torch.Tensor:
    """``(N,)`` from a batched tensor ``(N, 1)`` or a decollated list of ``(1,)`` tensors."""
    if isinstance(values, (list, tuple)):
        return torch.stack([torch.as_tensor(v).detach().reshape(-1)[0] for v in values]).cpu()
    t = torch.as_tensor(values).detach()
    return t.reshape(len(t), -1)[:, 0].cpu()


class CalibrateThreshold:
    """At the end of each validation run, set ``network.decision_threshold`` to the Youden threshold of its logits.

    The rule: the logit threshold :math:`t` that maximises Youden's J (sensitivity + specificity - 1) on the
    validation slices (:func:`~medadv_monai.metrics.youden_threshold`). :class:`~medadv_monai.networks.
    SliceClassifier` stores :math:`t` in its state dict and subtracts it from its logit in eval mode, so the model
    saved after this handler (list it before the checkpoint saver) carries its threshold, and every later
    prediction, accuracy and attack-success count uses it. The value is also put in ``engine.state.metrics`` as
    ``metric_name``. The evaluator's outputs are already shifted by the current threshold; the raw logits are
    recovered by adding it back (from probabilities when ``sigmoid`` is set, i.e. after an ``Activationsd``).

    The evaluator's threshold-dependent metrics were computed during the run with the previous threshold; those
    named in ``recompute`` are replaced by their values at the new one (the threshold the saved model carries;
    chosen on these same slices, so they are optimistic). List this handler first among the evaluator's handlers,
    so the loggers and writers after it see the new values.

    Args:
        network: the classifier (its ``decision_threshold`` buffer is set; a network without one is left alone).
        output_transform: engine output -> ``(pred, label)`` lists or tensors.
        sigmoid: the predictions are probabilities (post-sigmoid), not logits.
        metric_name: where the threshold goes in ``engine.state.metrics``.
        recompute: ``{metric name in engine.state.metrics: "accuracy" | "sensitivity" | "specificity"}``.
    """

    def __init__(self, network: torch.nn.Module, output_transform: Callable = from_engine(["pred", "label"]),
                 sigmoid: bool = True, metric_name: str = "val_threshold",
                 recompute: Mapping[str, str] | None = None) -> None:
        self.network, self.output_transform = network, output_transform
        self.sigmoid, self.metric_name = sigmoid, metric_name
        unknown = sorted(set((recompute or {}).values()) - set(_RATES))
        if unknown:
            raise ValueError(f"CalibrateThreshold: recompute {unknown}: expected some of {sorted(_RATES)}")
        self.recompute = dict(recompute or {})
        self.scores: list[torch.Tensor] = []
        self.labels: list[torch.Tensor] = []

    def attach(self, engine: Engine) -> None:
        engine.add_event_handler(Events.EPOCH_STARTED, self._reset)
        engine.add_event_handler(Events.ITERATION_COMPLETED, self._collect)
        engine.add_event_handler(Events.EPOCH_COMPLETED, self._calibrate)

    def _reset(self, engine: Engine) -> None:
        self.scores, self.labels = [], []

    def _collect(self, engine: Engine) -> None:
        pred, label = self.output_transform(engine.state.output)
        self.scores.append(_per_sample(pred).float())
        self.labels.append(_per_sample(label))

    def _calibrate(self, engine: Engine) -> None:
        current = getattr(self.network, "decision_threshold", None)
        if not isinstance(current, torch.Tensor) or not self.scores:
            return
        scores = torch.cat(self.scores)
        if self.sigmoid:
            scores = torch.logit(scores.clamp(1e-7, 1 - 1e-7))
        logits, labels = scores + float(current), torch.cat(self.labels)
        t = youden_threshold(logits, labels)
        current.fill_(t)
        engine.state.metrics[self.metric_name] = t
        predicted, positive = logits >= t, labels > 0.5  # what the model predicts with t subtracted
        for name, rate in self.recompute.items():
            engine.state.metrics[name] = _RATES[rate](predicted, positive)
        logger.info(f"decision threshold (Youden's J on the validation split): logit {t:.4f}")

