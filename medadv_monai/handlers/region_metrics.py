"""Per-region Dice of a multi-label segmentation engine: per slice (one ``MeanDice`` per region channel) and per
subject (:class:`SubjectDice`, the slices of a subject taken together as its volume, as BraTS reports Dice).

MONAI's ``MeanDice`` first averages the channels present in each sample, then the samples, so slices holding only
WT would weigh it most; a segmentation of the standard regions (WT, TC, ET, one sigmoid channel each, no background
channel) reports each region on its own and their plain mean (:class:`RegionMeanDice`). Each region's Dice averages
over the samples whose ground truth holds it (``ignore_empty=True``, MONAI's default): slices without it would
otherwise count 1 for an empty prediction.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Callable

import torch
from ignite.engine import Engine, Events
from monai.handlers import MeanDice, from_engine

__all__ = ["RegionMeanDice", "SubjectDice", "region_channel", "region_dice_metrics"]


def region_channel(index: int | None, keys: Sequence[str] = ("pred", "label")) -> Callable[[Any], tuple[list, list]]:
    """An ``output_transform`` giving ``(preds, labels)`` of one channel (``index``) or of all (``None``), per
    sample, from a decollated engine output."""
    pick = from_engine(list(keys))

    def transform(output: Any) -> tuple[list, list]:
        preds, labels = pick(output)
        if index is None:
            return preds, labels
        return [p[index:index + 1] for p in preds], [g[index:index + 1] for g in labels]

    return transform


class RegionMeanDice(MeanDice):
    """The mean over regions of each region's Dice, each over the samples whose ground truth holds it (regions no
    sample holds are left out). A scalar, for a key metric; under ``torch.distributed`` over every rank's samples."""

    def __init__(self, output_transform: Callable = lambda x: x, **kwargs: Any) -> None:
        super().__init__(include_background=True, output_transform=output_transform, **kwargs)

    def compute(self) -> float:
        scores = torch.as_tensor(self.metric_fn.get_buffer()).float()  # (N, R), NaN where the region is absent
        self._is_reduced = True
        held = ~torch.isnan(scores)
        per_region = torch.where(held, scores, torch.zeros_like(scores)).sum(0) / held.sum(0).clamp_min(1)
        present = per_region[held.any(0)]
        return float(present.mean()) if len(present) else float("nan")


def region_dice_metrics(regions: Sequence[str], prefix: str = "val_") -> dict[str, MeanDice]:
    """``{<prefix>dice_<R>: MeanDice}`` for each region channel, in order (channel ``i`` is ``regions[i]``).

    Example:
        ``additional_metrics: "$medadv_monai.handlers.region_dice_metrics(@regions, 'val_')"`` in a bundle config,
        with ``key_metric`` their mean (:class:`RegionMeanDice`).
    """
    return {f"{prefix}dice_{r}": MeanDice(include_background=True, output_transform=region_channel(i))
            for i, r in enumerate(regions)}


class SubjectDice:
    """Dice per subject and region over all the subject's evaluated slices, averaged over the subjects whose ground
    truth holds the region: ``engine.state.metrics[<prefix>subject_dice_<R>]``, set when an epoch completes (attach
    it before a handler that writes the metrics).

    :math:`2 \\sum_z |P_z \\cap G_z| / (\\sum_z |P_z| + \\sum_z |G_z|)` over the slices ``z`` of a subject: the
    volume Dice of the slices the data chain kept (slices dropped as background hold no tumour). Reads a decollated
    engine's ``batch`` (``subject``) and ``output`` (hard ``pred`` and ``label`` masks). One process: under
    ``torch.distributed`` each rank sees only its shard.

    Args:
        regions: region names in channel order.
        prefix: metric name prefix (``val_``; an evaluation's ``MetricsJSONWriter(prefix=...)`` renames it).
    """

    def __init__(self, regions: Sequence[str], prefix: str = "val_") -> None:
        self.regions, self.prefix = list(regions), prefix
        self.sums: dict[str, torch.Tensor] = {}

    def attach(self, engine: Engine) -> None:
        engine.add_event_handler(Events.EPOCH_STARTED, lambda e: self.sums.clear())
        engine.add_event_handler(Events.ITERATION_COMPLETED, self._update)
        engine.add_event_handler(Events.EPOCH_COMPLETED, self._compute)

    def _update(self, engine: Engine) -> None:
        for item, out in zip(engine.state.batch, engine.state.output):
            p, g = out["pred"].flatten(1).float(), out["label"].flatten(1).float()
            sums = torch.stack([(p * g).sum(1), p.sum(1), g.sum(1)]).detach().cpu().double()  # (3, R)
            key = str(item["subject"])
            self.sums[key] = self.sums[key] + sums if key in self.sums else sums

    def _compute(self, engine: Engine) -> None:
        for i, r in enumerate(self.regions):
            dice = [float(2 * s[0, i] / (s[1, i] + s[2, i])) for s in self.sums.values() if s[2, i] > 0]
            engine.state.metrics[f"{self.prefix}subject_dice_{r}"] = sum(dice) / len(dice) if dice else float("nan")
