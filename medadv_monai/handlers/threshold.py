"""Ignite handlers: choose decision thresholds on the validation split, a single-logit classifier's (Youden's J)
and a multi-label segmentation network's per region (Dice)."""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping, Sequence

import ignite.distributed as idist
import torch
from ignite.engine import Engine, Events
from monai.handlers import from_engine

from medadv_monai.metrics import youden_threshold

__all__ = ["CalibrateRegionThresholds", "CalibrateThreshold"]

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


#: the candidate region thresholds (probabilities) of :class:`CalibrateRegionThresholds`
REGION_THRESHOLD_GRID = tuple(round(0.05 * k, 2) for k in range(1, 20))


class CalibrateRegionThresholds:
    """At the end of each validation run, set each region's threshold to the one that maximises its Dice.

    The rule, per output channel (region) :math:`c`: among the candidate probabilities ``grid``, the threshold
    :math:`p_c` whose hard masks :math:`\\sigma(z_c) \\ge p_c` have the highest Dice with the ground truth over
    all validation voxels together (ties: the candidate nearest 0.5). A region without a foreground voxel in the
    validation split keeps its threshold. :class:`~medadv_monai.networks.ThresholdedNetwork` stores
    :math:`t_c = \\mathrm{logit}(p_c)` in its state dict and subtracts it in eval mode, so the model saved after
    this handler (list it before the checkpoint saver) carries its thresholds, and every later prediction, Dice,
    attack loss and attack-success count uses them. The counts are histograms (a few numbers per candidate), summed
    over processes under DDP, so the split's size costs no memory.

    The evaluator's outputs are shifted by the current thresholds; the raw logits are recovered by adding them
    back. Its Dice metrics were computed during the run with the previous thresholds (chosen on the previous
    epoch). Each chosen probability goes into ``engine.state.metrics`` as ``<metric_prefix><name>``; the pooled
    Dice at 0.5 and at the chosen threshold are logged.

    Args:
        network: a :class:`~medadv_monai.networks.ThresholdedNetwork` (a network without ``region_thresholds`` is
            left alone; a DDP wrapper is looked through).
        names: one name per output channel, e.g. ``["WT", "TC", "ET"]``.
        output_transform: engine output -> ``(logits, label)``: the evaluator's logits before any activation (keep
            a copy in the postprocessing, e.g. ``CopyItemsd(keys=pred, names=logits)``) and the region masks.
        grid: candidate thresholds, probabilities in (0, 1).
        metric_prefix: where the chosen probabilities go in ``engine.state.metrics``.
    """

    def __init__(self, network: torch.nn.Module, names: Sequence[str],
                 output_transform: Callable = from_engine(["logits", "label"]),
                 grid: Sequence[float] = REGION_THRESHOLD_GRID, metric_prefix: str = "val_threshold_") -> None:
        grid_t = torch.as_tensor(sorted(float(p) for p in grid), dtype=torch.float64)
        if not len(grid_t) or not bool(((grid_t > 0) & (grid_t < 1)).all()):
            raise ValueError(f"CalibrateRegionThresholds: grid {list(grid)!r}: expected probabilities in (0, 1)")
        self.network, self.names = network, [str(n) for n in names]
        self.output_transform, self.metric_prefix = output_transform, metric_prefix
        self.grid, self.cuts = grid_t, torch.logit(grid_t).float()
        self._reset(None)

    def attach(self, engine: Engine) -> None:
        engine.add_event_handler(Events.EPOCH_STARTED, self._reset)
        engine.add_event_handler(Events.ITERATION_COMPLETED, self._collect)
        engine.add_event_handler(Events.EPOCH_COMPLETED, self._calibrate)

    def _thresholds(self) -> torch.Tensor | None:
        t = getattr(getattr(self.network, "module", self.network), "region_thresholds", None)
        return t if isinstance(t, torch.Tensor) else None

    def _reset(self, engine: Engine | None) -> None:
        # per region: counts of foreground / background voxels by the number of candidate logits they reach
        shape = (len(self.names), len(self.cuts) + 1)
        self.fg, self.bg = torch.zeros(shape, dtype=torch.float64), torch.zeros(shape, dtype=torch.float64)

    def _collect(self, engine: Engine) -> None:
        t = self._thresholds()
        if t is None:
            return
        logits, label = (torch.stack(list(v)) if isinstance(v, (list, tuple)) else v
                         for v in self.output_transform(engine.state.output))
        if logits.shape[1] != len(self.names) or label.shape != logits.shape:
            raise ValueError(f"CalibrateRegionThresholds: logits {tuple(logits.shape)} and label "
                             f"{tuple(label.shape)}: expected the same shape with {len(self.names)} channels "
                             f"({self.names})")
        raw = logits.detach().float().cpu() + t.detach().cpu().view(1, -1, *([1] * (logits.ndim - 2)))
        reached = torch.bucketize(raw, self.cuts, right=True).transpose(0, 1).reshape(len(self.names), -1)
        fg = torch.as_tensor(label).detach().cpu().transpose(0, 1).reshape(len(self.names), -1) > 0.5
        bins = len(self.cuts) + 1
        for c in range(len(self.names)):
            self.fg[c] += torch.bincount(reached[c][fg[c]], minlength=bins).double()
            self.bg[c] += torch.bincount(reached[c][~fg[c]], minlength=bins).double()

    def _calibrate(self, engine: Engine) -> None:
        t = self._thresholds()
        if t is None:
            return
        fg, bg = idist.all_reduce(self.fg.clone()), idist.all_reduce(self.bg.clone())
        # voxels predicted foreground at candidate k: those that reach more than k candidate logits
        tp = fg.flip(1).cumsum(1).flip(1)[:, 1:]
        fp = bg.flip(1).cumsum(1).flip(1)[:, 1:]
        positives = fg.sum(1, keepdim=True)
        dice = 2 * tp / (2 * tp + fp + (positives - tp)).clamp_min(1e-12)
        half = int(torch.argmin((self.grid - 0.5).abs()))
        for c, name in enumerate(self.names):
            if positives[c, 0] <= 0:
                logger.info(f"region {name}: no foreground voxel in the validation split, threshold kept")
                continue
            best = dice[c].max()
            ties = torch.nonzero(dice[c] >= best).flatten()
            k = int(ties[torch.argmin((self.grid[ties] - 0.5).abs())])
            t[c] = self.cuts[k].to(t.device)
            engine.state.metrics[self.metric_prefix + name] = float(self.grid[k])
            logger.info(f"region {name} threshold (validation Dice over all voxels): {float(self.grid[k]):.2f}, "
                        f"Dice {float(dice[c, half]):.4f} at {float(self.grid[half]):.2f} -> {float(best):.4f}")
