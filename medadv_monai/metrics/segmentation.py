"""Segmentation metrics under attack: per-region Dice and IoU, the MedIS and ROG success rules, their summaries.

Per sample and region, on hard masks (a region is present where its logit is positive, i.e. its sigmoid is over 0.5):

* Dice :math:`2|P \\cap G| / (|P| + |G|)` and IoU :math:`|P \\cap G| / |P \\cup G|`, both 1 when ``P`` and ``G`` are
  empty (MONAI's ``compute_dice`` / ``compute_iou`` with ``ignore_empty=False``).
* A summary's region Dice is the mean over the samples whose ground truth holds the region (MONAI's default
  ``ignore_empty=True``): slices without the region would count 1 for an empty prediction and inflate the mean.
  Background is never a region.
* Success of an attack on a sample (MedIS), judged on the first region channel (WT in the bundles' order):
  untargeted :math:`\\mathrm{IoU}(P, G) \\le 0.5`; targeted :math:`\\mathrm{IoU}(P, T) \\ge 0.45`.
* ROG rule (untargeted): the adversarial Dice falls under half the clean mean Dice of the evaluated set.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import torch
from monai.metrics import compute_dice, compute_iou

__all__ = ["IOU_TARGETED", "IOU_UNTARGETED", "hard_masks", "region_iou", "region_scores", "seg_success",
           "summarize_regions"]

IOU_UNTARGETED = 0.5
"""Untargeted success: IoU(prediction, ground truth) at most this (MedIS)."""
IOU_TARGETED = 0.45
"""Targeted success: IoU(prediction, target) at least this (MedIS)."""


def hard_masks(logits: torch.Tensor) -> torch.Tensor:
    """Hard region masks ``(N, R, *spatial)`` from multi-label logits: ``logit > 0`` (sigmoid over 0.5; the bundle's
    postprocessing thresholds the sigmoid at 0.5 inclusive, which differs only at a logit of exactly 0)."""
    return (logits > 0).to(logits.dtype)


def region_scores(pred: torch.Tensor, target: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Dice and IoU per sample and region, each ``(N, R)``, 1 where prediction and target are both empty.

    Args:
        pred: hard masks ``(N, R, *spatial)`` (:func:`hard_masks`).
        target: hard masks of the same shape.
    """
    pred, target = pred.float(), target.float()
    return compute_dice(pred, target, include_background=True, ignore_empty=False), region_iou(pred, target)


def region_iou(pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """IoU per sample and region ``(N, R)`` of hard masks, 1 where both are empty (what the success rules read)."""
    return compute_iou(pred.float(), target.float(), include_background=True, ignore_empty=False)


def seg_success(iou: torch.Tensor, targeted: bool) -> torch.Tensor:
    """``(N,)`` bool: MedIS success from the IoU of the first region (``(N, R)`` or ``(N,)``) with the ground truth
    (untargeted, :data:`IOU_UNTARGETED`) or the target (targeted, :data:`IOU_TARGETED`)."""
    first = iou[:, 0] if iou.ndim == 2 else iou
    return first >= IOU_TARGETED if targeted else first <= IOU_UNTARGETED


def _mean(values: np.ndarray) -> float:
    return float(values.mean()) if values.size else float("nan")


def summarize_regions(columns: Mapping[str, Any], regions: Sequence[str], targeted: bool = False) -> dict[str, float]:
    """Summary of per-sample columns: per region the mean clean and adversarial Dice and IoU over the samples
    whose ground truth holds it, and the success rates.

    Args:
        columns: ``clean_dice_<R>``, ``adv_dice_<R>``, ``clean_iou_<R>``, ``adv_iou_<R>``, ``present_<R>`` per
            region and ``success`` (the MedIS rule), each a sequence over samples.
        regions: region names in channel order (the first is the one success is judged on).
        targeted: the attack was targeted (no ROG rule then).

    Returns:
        ``samples``, ``<kind>_<metric>_<R>`` means, ``success_rate`` (MedIS rule, all samples) and, untargeted,
        ``rog_success_rate``: the fraction of samples holding the first region whose adversarial Dice is under
        half the clean mean.
    """
    out: dict[str, float] = {"samples": float(len(np.asarray(columns["success"])))}
    for r in regions:
        present = np.asarray(columns[f"present_{r}"], dtype=bool)
        out[f"tumour_samples_{r}"] = float(present.sum())
        for kind in ("clean", "adv"):
            for metric in ("dice", "iou"):
                out[f"{kind}_{metric}_{r}"] = _mean(np.asarray(columns[f"{kind}_{metric}_{r}"], float)[present])
    out["success_rate"] = _mean(np.asarray(columns["success"], float))
    if not targeted:
        r = regions[0]
        present = np.asarray(columns[f"present_{r}"], dtype=bool)
        adv = np.asarray(columns[f"adv_dice_{r}"], float)[present]
        out["rog_success_rate"] = _mean((adv < 0.5 * out[f"clean_dice_{r}"]).astype(float))
    return out
