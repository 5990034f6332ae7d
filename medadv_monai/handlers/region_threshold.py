"""Ignite handler: choose a multi-label segmentation network's decision threshold per region on the validation
split (the best pooled Dice)."""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence

import ignite.distributed as idist
import torch
from ignite.engine import Engine, Events
from monai.handlers import from_engine

from medadv_monai.errors import MedAdvInputError

__all__ = ["REGION_THRESHOLD_GRID", "CalibrateRegionThresholds"]

logger = logging.getLogger(__name__)

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
            raise MedAdvInputError(f"CalibrateRegionThresholds: grid {list(grid)!r}: expected probabilities in (0, 1)")
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
            raise MedAdvInputError(f"CalibrateRegionThresholds: logits {tuple(logits.shape)} and label "
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
