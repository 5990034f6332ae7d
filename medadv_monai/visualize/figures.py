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

__all__ = ["DIFFERENCE_CMAP", "adversarial_grid", "attack_examples", "plot_robust_accuracy", "plot_asr_by_coverage",
           "plot_ranking", "plot_tradeoff", "plot_transfer_matrix", "gradcam_figure", "gradcam_maps", "gradcam_plot"]

GRADCAM_CMAP = "jet"  # blue: no attribution, red: the highest
DIFFERENCE_CMAP = "magma"  # black: unchanged, white: changed by the full budget


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


def attack_examples(samples: Mapping[str, Any], path: str | os.PathLike, eps: float | None = None,
                    title: str = "") -> Path:
    """Save a figure of attacked samples: one row per sample, columns clean | adversarial | |difference| | mask.

    Each row names the slice and its true class; the clean and adversarial columns give the model's prediction
    and its tumour probability (red when the attack flipped a correct prediction); the difference column is
    :math:`|x' - x|` in units of ``eps`` (its largest allowed value; without ``eps`` the largest difference) on
    a colour scale with its bar. The first channel is shown.

    Args:
        samples: what :class:`~medadv_monai.handlers.AttackImageGrid` keeps: ``image``, ``adv`` ``(n, H, W)``,
            ``mask`` ``(n, H, W)`` or ``None``, and ``rows``: per sample ``subject``, ``slice_index``, ``label``,
            ``clean_prob``, ``clean_pred``, ``adv_prob``, ``adv_pred``.
        path: the PNG to write.
        eps: the attack's budget.
        title: the figure's title.
    """
    from matplotlib.cm import ScalarMappable
    from matplotlib.colors import Normalize

    x, x_adv = np.asarray(samples["image"], dtype=float), np.asarray(samples["adv"], dtype=float)
    mask = samples.get("mask")
    diff = np.abs(x_adv - x)
    scale = eps if eps else float(diff.max()) or 1.0
    n = len(x)
    cls = lambda v: "tumour" if int(v) else "no tumour"  # noqa: E731
    fig = plt.figure(figsize=(8.0, 1.9 * n + 0.7))
    grid = fig.add_gridspec(n, 5, width_ratios=[1, 1, 1, 0.06, 1], wspace=0.25)
    axes = np.array([[fig.add_subplot(grid[i, c]) for c in (0, 1, 2, 4)] for i in range(n)]).reshape(n, 4)
    for i, row in enumerate(samples["rows"]):
        flipped = int(row["clean_pred"]) == int(row["label"]) and int(row["adv_pred"]) != int(row["label"])
        panels = [(x[i], "gray", f"clean: {cls(row['clean_pred'])}\np(tumour) {float(row['clean_prob']):.2f}",
                   "black"),
                  (x_adv[i], "gray", f"adversarial: {cls(row['adv_pred'])}\np(tumour) {float(row['adv_prob']):.2f}",
                   "red" if flipped else "black"),
                  (diff[i] / scale, DIFFERENCE_CMAP, "|difference|", "black"),
                  (np.ones_like(x[i]) if mask is None else np.asarray(mask[i], dtype=float), "gray", "attack mask",
                   "black")]
        for ax, (image, cmap, label, colour) in zip(axes[i], panels):
            ax.imshow(image, cmap=cmap, vmin=0, vmax=1)
            ax.set_title(label, fontsize=7, color=colour)
            ax.set_xticks([])
            ax.set_yticks([])
        axes[i][0].set_ylabel(f"{row['subject']}\nz={int(row['slice_index'])}, {cls(row['label'])}", fontsize=7)
    bar = fig.colorbar(ScalarMappable(Normalize(0, 1), cmap=DIFFERENCE_CMAP), cax=fig.add_subplot(grid[:, 3]))
    bar.set_label("|x' - x| / eps" if eps else f"|x' - x| / {scale:.3g}", fontsize=7)
    bar.ax.tick_params(labelsize=7)
    fig.suptitle(title, fontsize=8)
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


def plot_asr_by_coverage(panels: Mapping[str, Mapping[str, Sequence[Mapping[str, float]]]],
                         path: str | os.PathLike) -> Path:
    """ASR against tumour coverage: one panel per entry of ``panels`` (e.g. per mask), one line per series (e.g. per
    attack) over the bins of :func:`medadv_monai.metrics.coverage_bins`, with its 95% interval as error bars where
    the bins have one (``asr_lo``, ``asr_hi``). Only bins with samples are drawn, series that share a bin side by
    side; each panel's coverage axis spans its bins."""
    fig, axes = plt.subplots(1, max(1, len(panels)), figsize=(4.2 * max(1, len(panels)), 3.4), squeeze=False,
                             sharey=True)
    for ax, (name, series) in zip(axes[0], panels.items()):
        drawn = []
        for k, (label, bins) in enumerate(series.items()):
            kept = [b for b in bins if b["n"] and not math.isnan(b["asr"])]
            if not kept:
                continue
            drawn += [(b["bin_lo"], b["bin_hi"]) for b in kept]
            width = kept[0]["bin_hi"] - kept[0]["bin_lo"]
            shift = (k - (len(series) - 1) / 2) * 0.06 * width  # side by side where series share a bin
            mid = [(b["bin_lo"] + b["bin_hi"]) / 2 + shift for b in kept]
            asr = [b["asr"] for b in kept]
            err = None
            if all("asr_lo" in b for b in kept):
                err = [[max(0.0, a - b["asr_lo"]) for a, b in zip(asr, kept)],
                       [max(0.0, b["asr_hi"] - a) for a, b in zip(asr, kept)]]
            ax.errorbar(mid, asr, yerr=err, marker="o", capsize=3, label=label)
        ax.set_title(name, fontsize=9)
        ax.set_xlabel("coverage of the tumour by the mask")
        if drawn:  # the bins this panel has slices in
            ax.set_xlim(min(lo for lo, _ in drawn), max(hi for _, hi in drawn))
        ax.set_ylim(-0.02, 1.02)
        ax.grid(alpha=0.3)
        if series:
            ax.legend(fontsize=7)
    axes[0][0].set_ylabel("attack success rate (95% interval)")
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


def plot_tradeoff(rows: Sequence[Mapping[str, Any]], path: str | os.PathLike) -> Path:
    """Clean and robust accuracy against the training eps: one panel per training method, the standard models
    (training eps 0) in every panel; one line for clean accuracy (dashed) and one per untargeted attacked cell.

    ``rows``: one per model and grid cell, with ``method``, ``train_eps_255``, ``cell``, ``attack``, ``eps_255``,
    ``mask``, ``targeted``, ``clean_acc`` and ``robust_acc`` (``ModelComparison``'s ``models.csv``).
    """
    methods = [m for m in dict.fromkeys(r["method"] for r in rows) if m != "standard"] or ["standard"]
    fig, axes = plt.subplots(1, len(methods), figsize=(4.2 * len(methods), 3.4), squeeze=False, sharey=True)
    for ax, method in zip(axes[0], methods):
        mine = [r for r in rows if r["method"] in (method, "standard") and not r["targeted"]]
        clean = sorted({(r["train_eps_255"], r["clean_acc"]) for r in mine if r["attack"] == "clean"})
        if clean:
            ax.plot(*zip(*clean), "k--", marker="s", lw=1, label="clean")
        for cell in dict.fromkeys(r["cell"] for r in mine if r["attack"] != "clean"):
            pts = sorted((r["train_eps_255"], r["robust_acc"]) for r in mine if r["cell"] == cell)
            first = next(r for r in mine if r["cell"] == cell)
            label = f"{display_name(first['attack'])} eps {first['eps_255']:g}" + (
                f" ({first['mask']})" if first["mask"] != "none" else "")
            ax.plot(*zip(*pts), marker="o", label=label)
        ax.set_title(f"training: {method}", fontsize=9)
        ax.set_xlabel("training eps (x 1/255; 0: standard)")
        ax.set_ylim(-0.02, 1.02)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    axes[0][0].set_ylabel("accuracy")
    return _save(fig, path)


def plot_transfer_matrix(values: Sequence[Sequence[float]], surrogates: Sequence[str], targets: Sequence[str],
                         path: str | os.PathLike, title: str = "", label: str = "robust accuracy") -> Path:
    """A heatmap of ``values[i][j]`` (e.g. the robust accuracy of target ``j`` on adversarial images crafted on
    surrogate ``i``) in [0, 1], each cell written out; a cell whose surrogate is its target (white-box) is framed."""
    arr = np.asarray(values, dtype=float)
    fig, ax = plt.subplots(figsize=(1.1 * len(targets) + 2.4, 0.8 * len(surrogates) + 1.6))
    im = ax.imshow(arr, vmin=0, vmax=1, cmap="viridis")
    for i, s in enumerate(surrogates):
        for j, t in enumerate(targets):
            v = arr[i, j]
            ax.text(j, i, "-" if math.isnan(v) else f"{v:.2f}", ha="center", va="center", fontsize=8,
                    color="k" if not math.isnan(v) and v > 0.6 else "w")
            if s == t:
                ax.add_patch(plt.Rectangle((j - 0.5, i - 0.5), 1, 1, fill=False, ec="r", lw=1.5))
    ax.set_xticks(range(len(targets)), list(targets), rotation=30, ha="right", fontsize=8)
    ax.set_yticks(range(len(surrogates)), list(surrogates), fontsize=8)
    ax.set_xlabel("target (scored on)")
    ax.set_ylabel("surrogate (crafted on)")
    ax.set_title(title, fontsize=8)
    fig.colorbar(im, ax=ax, label=label, fraction=0.046)
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
