"""Image grids, plots and the Grad-CAM figure of the evaluation report (matplotlib, Agg backend)."""

from __future__ import annotations

import math
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402

from medadv_monai.attacks.registry import display_name  # noqa: E402
from medadv_monai.utils import atomic_path  # noqa: E402

__all__ = ["adversarial_grid", "save_grid", "plot_robust_accuracy", "plot_asr_by_coverage", "plot_ranking",
           "gradcam_figure", "gradcam_maps", "gradcam_plot"]

GRADCAM_CMAP = "jet"  # blue: no attribution, red: the highest


def adversarial_grid(x: torch.Tensor, x_adv: torch.Tensor, mask: torch.Tensor | None, n: int = 4,
                     eps: float | None = None) -> np.ndarray:
    """Rows of ``clean | adversarial | |difference| | mask`` for the first ``n`` samples (first channel), as one
    ``(n*H, 4*W)`` array in [0, 1]. The difference is scaled by ``eps`` (its largest possible value) if given."""
    x, x_adv = x[:n, 0].detach().cpu().float(), x_adv[:n, 0].detach().cpu().float()
    diff = (x_adv - x).abs()
    scale = eps if eps else float(diff.max()) or 1.0
    m = torch.ones_like(x) if mask is None else torch.as_tensor(mask)[:, 0].detach().cpu().float().expand_as(
        torch.empty(max(len(mask), len(x)), *x.shape[1:]))[:n]
    rows = [torch.cat([a, b, (d / scale).clamp(0, 1), mm], dim=1) for a, b, d, mm in zip(x, x_adv, diff, m)]
    return torch.cat(rows, dim=0).numpy()


def _save(fig: Any, path: str | os.PathLike) -> Path:
    with atomic_path(path, suffix=Path(path).suffix) as tmp:
        fig.savefig(tmp, dpi=110, bbox_inches="tight")
    plt.close(fig)
    return Path(path)


def save_grid(grid: np.ndarray, path: str | os.PathLike, title: str = "") -> Path:
    """Save an :func:`adversarial_grid` as a PNG with column titles."""
    fig, ax = plt.subplots(figsize=(6, 1.6 * grid.shape[0] / grid.shape[1] * 4 + 0.6))
    ax.imshow(grid, cmap="gray", vmin=0, vmax=1)
    w = grid.shape[1] / 4
    ax.set_xticks([w * (i + 0.5) for i in range(4)], ["clean", "adversarial", "|difference|", "mask"])
    ax.set_yticks([])
    ax.set_title(title, fontsize=9)
    return _save(fig, path)


def plot_robust_accuracy(rows: Sequence[Mapping[str, Any]], path: str | os.PathLike) -> Path:
    """Robust accuracy against eps (x 255), one panel per mask, one line per untargeted attack, clean dashed."""
    masks = list(dict.fromkeys(r["mask"] for r in rows))
    fig, axes = plt.subplots(1, len(masks), figsize=(4 * len(masks), 3.2), squeeze=False, sharey=True)
    for ax, mask in zip(axes[0], masks):
        cells = [r for r in rows if r["mask"] == mask and not r["targeted"]]
        for r in cells:
            if r["attack"] == "clean":
                ax.axhline(r["clean_acc"], color="k", ls="--", lw=1, label="clean")
        for attack in dict.fromkeys(r["attack"] for r in cells if r["attack"] != "clean"):
            pts = sorted((r["eps_255"], r["robust_acc"]) for r in cells if r["attack"] == attack)
            ax.plot(*zip(*pts), marker="o", label=display_name(attack))
        ax.set_title(f"mask: {mask}")
        ax.set_xlabel("eps (x 1/255)")
        ax.set_ylim(-0.02, 1.02)
        ax.grid(alpha=0.3)
    axes[0][0].set_ylabel("robust accuracy")
    axes[0][-1].legend(fontsize=8)
    return _save(fig, path)


def plot_asr_by_coverage(curves: Mapping[str, Sequence[Mapping[str, float]]], path: str | os.PathLike) -> Path:
    """ASR against tumour coverage: one line per cell, over the bins of :func:`medadv_monai.metrics.coverage_bins`."""
    fig, ax = plt.subplots(figsize=(6, 3.6))
    for name, bins in curves.items():
        pts = [((b["bin_lo"] + b["bin_hi"]) / 2, b["asr"]) for b in bins if b["n"] and not math.isnan(b["asr"])]
        if pts:
            ax.plot(*zip(*pts), marker="o", label=name)
    ax.set_xlabel("coverage of the tumour by the mask")
    ax.set_ylabel("attack success rate")
    ax.set_xlim(0, 1)
    ax.set_ylim(-0.02, 1.02)
    ax.grid(alpha=0.3)
    if curves:
        ax.legend(fontsize=7, ncol=2)
    return _save(fig, path)


def plot_ranking(names: Sequence[str], values: Sequence[float], path: str | os.PathLike,
                 xlabel: str = "attack success rate") -> Path:
    """Horizontal bars, best first (e.g. the patch specs of a sweep ranked by ASR)."""
    fig, ax = plt.subplots(figsize=(6, 0.28 * len(names) + 1))
    ax.barh(list(names)[::-1], list(values)[::-1])
    ax.set_xlabel(xlabel)
    ax.set_xlim(0, 1)
    ax.tick_params(axis="y", labelsize=7)
    return _save(fig, path)


def gradcam_maps(network: torch.nn.Module, target_layer: str, *inputs: torch.Tensor,
                 class_idx: int = 0) -> list[torch.Tensor]:
    """Grad-CAM (MONAI's ``GradCAM`` on ``target_layer``, logit ``class_idx``) of each batch in ``inputs``, scaled
    so that high attribution is high: 1 is the highest value of that sample over all ``inputs`` (a clean slice
    and its adversarial version share one scale), 0 is no attribution.

    MONAI's default post-processing maps the maximum to 0 and the minimum to 1 (it flips magnitudes); here the
    raw ReLU'd maps are kept and divided by their peak instead.

    Returns:
        One ``(N, 1, *spatial)`` float CPU tensor in [0, 1] per input.
    """
    from monai.visualize import GradCAM

    cam = GradCAM(nn_module=network, target_layers=target_layer, postprocessing=lambda m: m)
    with torch.enable_grad():
        # the input carries the gradient, so a frozen network (no parameter gradients) works too
        raw = [cam(x=v.detach().clone().requires_grad_(True), class_idx=class_idx).detach().cpu().float()
               .clamp_min(0) for v in inputs]
    peak = torch.stack([m.flatten(1).amax(1) for m in raw]).amax(0)
    scale = torch.where(peak > 0, peak, torch.ones_like(peak)).view(-1, *[1] * (raw[0].ndim - 1))
    return [(m / scale).clamp(0, 1) for m in raw]


def gradcam_plot(network: torch.nn.Module, target_layer: str, x: torch.Tensor, x_adv: torch.Tensor,
                 titles: Sequence[str] | None = None) -> Any:
    """The figure of :func:`gradcam_figure` (a matplotlib ``Figure``; the caller saves or closes it)."""
    from matplotlib.cm import ScalarMappable
    from matplotlib.colors import Normalize

    maps = gradcam_maps(network, target_layer, x, x_adv)
    n = len(x)
    fig, axes = plt.subplots(4, n, figsize=(1.8 * n + 0.9, 7.4), squeeze=False)
    images = [v.detach().cpu().float().numpy() for v in (x, maps[0], x_adv, maps[1])]
    for r, (imgs, label) in enumerate(zip(images, ["clean", "Grad-CAM clean", "adversarial", "Grad-CAM adv."])):
        for c in range(n):
            ax = axes[r][c]
            ax.imshow(images[0 if r < 2 else 2][c, 0], cmap="gray", vmin=0, vmax=1)
            if r in (1, 3):
                ax.imshow(imgs[c, 0], cmap=GRADCAM_CMAP, alpha=0.45, vmin=0, vmax=1)
            ax.set_xticks([])
            ax.set_yticks([])
            if c == 0:
                ax.set_ylabel(label, fontsize=8)
            if r == 0 and titles:
                ax.set_title(titles[c], fontsize=7)
    bar = fig.colorbar(ScalarMappable(Normalize(0, 1), cmap=GRADCAM_CMAP), ax=axes.ravel().tolist(), shrink=0.5,
                       pad=0.02)
    bar.set_label("Grad-CAM attribution (1: the slice's highest)", fontsize=7)
    bar.ax.tick_params(labelsize=7)
    return fig


def gradcam_figure(network: torch.nn.Module, target_layer: str, x: torch.Tensor, x_adv: torch.Tensor,
                   path: str | os.PathLike, titles: Sequence[str] | None = None) -> Path:
    """Grad-CAM (:func:`gradcam_maps`: MONAI's ``GradCAM`` on ``target_layer``, logit 0, high attribution hot) of
    clean and adversarial slices, one figure: a column per slice, rows clean image, clean CAM, adversarial image,
    adversarial CAM, and a colour bar (0 to 1, each column on the scale of its highest value)."""
    return _save(gradcam_plot(network, target_layer, x, x_adv, titles), path)
