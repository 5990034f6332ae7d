"""Figures of segmentation under attack: Dice against eps, and clean | adversarial | prediction overlays."""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from medadv_monai.visualize.figures import DIFFERENCE_CMAP, _save, plt

__all__ = ["plot_dice_vs_eps", "segmentation_overlays"]

REGION_COLOURS = ("#ffd700", "#ff4500", "#00bfff")  # WT yellow, TC orange-red, ET blue (as the BraTS figures)


def plot_dice_vs_eps(rows: Sequence[Mapping[str, Any]], region: str, path: str | os.PathLike) -> Path:
    """Adversarial Dice of ``region`` against eps (x 255): one panel per target kind and mask, one line per attack
    row (name and loss), the clean Dice dashed."""
    panels = list(dict.fromkeys((r["target"], r["mask"]) for r in rows))
    fig, axes = plt.subplots(1, len(panels), figsize=(4 * len(panels), 3.2), squeeze=False, sharey=True)
    for ax, (target, mask) in zip(axes[0], panels):
        cells = [r for r in rows if r["target"] == target and r["mask"] == mask]
        ax.axhline(cells[0][f"clean_dice_{region}"], color="k", ls="--", lw=1, label="clean")
        for name in dict.fromkeys(r["name"] for r in cells):
            pts = sorted((r["eps_255"], r[f"adv_dice_{region}"]) for r in cells if r["name"] == name)
            ax.plot(*zip(*pts), marker="o", label=name)
        ax.set_title(f"{'untargeted' if target == 'none' else target}, mask: {mask}")
        ax.set_xlabel("eps (x 1/255)")
        ax.set_ylim(-0.02, 1.02)
        ax.grid(alpha=0.3)
    axes[0][0].set_ylabel(f"Dice {region} under attack")
    axes[0][-1].legend(fontsize=8)
    return _save(fig, path)


def _contours(ax: Any, masks: np.ndarray) -> None:
    for r, colour in zip(range(masks.shape[0]), REGION_COLOURS):
        if masks[r].any():
            ax.contour(masks[r], levels=[0.5], colors=[colour], linewidths=0.8)


def segmentation_overlays(output: Mapping[str, Any], path: str | os.PathLike, n: int = 4, title: str = "") -> Path:
    """One row per sample (the first ``n`` of an evaluator output: ``image``, ``adv``, ``label``, ``clean_pred``,
    ``pred``).

    Columns: the clean image (first channel) with the ground-truth region contours; the clean prediction; the
    adversarial image; :math:`|x' - x|` (largest difference white); the adversarial prediction. Contours: WT
    yellow, TC orange-red, ET blue.
    """
    as_np = lambda k: torch.as_tensor(output[k])[:n].detach().cpu().float().numpy()  # noqa: E731
    x, adv, gt = as_np("image"), as_np("adv"), as_np("label")
    clean_pred, adv_pred = (as_np("clean_pred") > 0), (as_np("pred") > 0)
    k = len(x)
    fig, axes = plt.subplots(k, 5, figsize=(10, 2.1 * k), squeeze=False)
    diff = np.abs(adv - x)[:, 0]
    scale = float(diff.max()) or 1.0
    heads = ["clean, ground truth", "clean prediction", "adversarial", "|difference|", "adversarial prediction"]
    for i in range(k):
        panels = [(x[i, 0], gt[i]), (x[i, 0], clean_pred[i]), (adv[i, 0], None), (diff[i] / scale, None),
                  (adv[i, 0], adv_pred[i])]
        for j, (img, masks) in enumerate(panels):
            ax = axes[i][j]
            ax.imshow(img, cmap=DIFFERENCE_CMAP if j == 3 else "gray", vmin=0, vmax=1)
            if masks is not None:
                _contours(ax, masks.astype(float))
            ax.set_xticks([])
            ax.set_yticks([])
            if i == 0:
                ax.set_title(heads[j], fontsize=8)
    if title:
        fig.suptitle(title, fontsize=9)
    return _save(fig, path)
