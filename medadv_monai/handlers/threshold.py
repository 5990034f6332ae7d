"""Ignite handler: choose a single-logit classifier's decision threshold on the validation split."""

from __future__ import annotations

import logging
from collections.abc import Callable

import torch
from ignite.engine import Engine, Events
from monai.handlers import from_engine

from medadv_monai.metrics import youden_threshold

__all__ = ["CalibrateThreshold"]

logger = logging.getLogger(__name__)


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

    Args:
        network: the classifier (its ``decision_threshold`` buffer is set; a network without one is left alone).
        output_transform: engine output -> ``(pred, label)`` lists or tensors.
        sigmoid: the predictions are probabilities (post-sigmoid), not logits.
        metric_name: where the threshold goes in ``engine.state.metrics``.
    """

    def __init__(self, network: torch.nn.Module, output_transform: Callable = from_engine(["pred", "label"]),
                 sigmoid: bool = True, metric_name: str = "val_threshold") -> None:
        self.network, self.output_transform = network, output_transform
        self.sigmoid, self.metric_name = sigmoid, metric_name
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
        t = youden_threshold(scores + float(current), torch.cat(self.labels))
        current.fill_(t)
        engine.state.metrics[self.metric_name] = t
        logger.info(f"decision threshold (Youden's J on the validation split): logit {t:.4f}")
