r"""Figures of the MRI-physics attacks (:mod:`~medadv_monai.attacks.bias_field`, :mod:`~medadv_monai.attacks.kspace`):
what the attack did to a few slices, and robust accuracy against their eps beside the random draws of the same eps.

:func:`physics_examples` draws, per sample (first channel), ``clean | adversarial | change | |difference|`` where
the change is the realised field :math:`x' / x` where :math:`x >` ``FIELD_MIN_INTENSITY`` (blank elsewhere; on the
scale :math:`[1 - \epsilon, 1 + \epsilon]`) for a ``field`` budget, and :math:`\log_{10} |\mathcal{F}(x') -
\mathcal{F}(x)|` (orthonormal FFT, centred with ``fftshift``) for a ``kspace`` budget.
"""

from __future__ import annotations

import math
import os
from collections.abc import Collection, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from medadv_monai.attacks.registry import display_name
from medadv_monai.errors import MedAdvInputError
from medadv_monai.metrics.core import FIELD_MIN_INTENSITY
from medadv_monai.visualize.figures import DIFFERENCE_CMAP, _save, plt

__all__ = ["FIELD_CMAP", "physics_change", "physics_examples", "plot_physics_accuracy"]

FIELD_CMAP = "coolwarm"  # blue: darkened (field < 1), white: unchanged, red: brightened
KSPACE_CMAP = "viridis"
_BUDGET_AXIS = {"field": "bias field eps (field within [1 - eps, 1 + eps])",
                "kspace": "k-space eps (||d|| / ||F(x)||)"}


def physics_change(x: np.ndarray, x_adv: np.ndarray, budget: str) -> np.ndarray:
    r"""The change a physics attack made to a sample ``x`` -> ``x_adv`` (any shape): for ``budget == "field"`` the
    realised field :math:`x' / x`, NaN where :math:`x \le` ``FIELD_MIN_INTENSITY``; for ``"kspace"``
    :math:`\log_{10} |\mathcal{F}(x') - \mathcal{F}(x)|` (orthonormal FFT over all axes, zero frequency centred; an
    unchanged coefficient is :math:`-\infty`)."""
    x, x_adv = np.asarray(x, dtype=np.float64), np.asarray(x_adv, dtype=np.float64)
    if budget == "field":
        with np.errstate(divide="ignore", invalid="ignore"):
            return np.where(x > FIELD_MIN_INTENSITY, x_adv / x, np.nan)
    if budget == "kspace":
        diff = np.abs(np.fft.fftshift(np.fft.fftn(x_adv, norm="ortho") - np.fft.fftn(x, norm="ortho")))
        with np.errstate(divide="ignore"):
            return np.log10(diff)
    raise MedAdvInputError(f"budget must be 'field' or 'kspace' (an MRI-physics attack's), got {budget!r}")


def physics_examples(samples: Mapping[str, Any], path: str | os.PathLike, budget: str, eps: float,
                     title: str = "") -> Path:
    r"""Save a figure of physics-attacked samples: one row per sample, columns clean | adversarial | change
    (:func:`physics_change`) | :math:`|x' - x|` (scaled to its largest value), each with a colour bar.

    Args:
        samples: what :class:`~medadv_monai.handlers.AttackImageGrid` keeps (``image``, ``adv`` ``(n, H, W)``, and
            ``rows`` with ``subject``, ``slice_index``, ``label``, ``clean_pred``, ``adv_pred``, ...), as for
            :func:`~medadv_monai.visualize.attack_examples`.
        path: the PNG to write.
        budget: ``"field"`` (the field's scale is :math:`[1 - \epsilon, 1 + \epsilon]`) or ``"kspace"``.
        eps: the cell's eps.
        title: the figure's title.
    """
    x, x_adv = np.asarray(samples["image"], dtype=float), np.asarray(samples["adv"], dtype=float)
    change = np.stack([physics_change(a, b, budget) for a, b in zip(x, x_adv)])
    diff = np.abs(x_adv - x)
    scale = float(diff.max()) or 1.0
    if budget == "field":
        lim, cmap, label = (1 - eps, 1 + eps), FIELD_CMAP, "x' / x (blank: background)"
    else:
        finite = change[np.isfinite(change)]
        top = float(finite.max()) if finite.size else 0.0
        lim, cmap, label = (top - 4, top), KSPACE_CMAP, "log10 |F(x') - F(x)|"
    n, rows = len(x), list(samples.get("rows") or [{}] * len(x))
    fig, axes = plt.subplots(n, 4, figsize=(8.4, 2.2 * n + 0.7), squeeze=False)
    for i in range(n):
        row = rows[i] if i < len(rows) else {}
        panels = [(x[i], "gray", (0, 1), "clean" + _verdict(row, "clean")),
                  (x_adv[i], "gray", (0, 1), "adversarial" + _verdict(row, "adv")),
                  (np.where(np.isfinite(change[i]), change[i], np.nan), cmap, lim, label),
                  (diff[i], DIFFERENCE_CMAP, (0, scale), f"|x' - x| (max {scale:.3g})")]
        for c, (image, cm, (lo, hi), text) in enumerate(panels):
            ax = axes[i][c]
            colours = plt.get_cmap(cm).with_extremes(bad="lightgrey")
            im = ax.imshow(image, cmap=colours, vmin=lo, vmax=hi)
            ax.set_title(text, fontsize=7)
            ax.set_xticks([])
            ax.set_yticks([])
            if c >= 2:
                bar = fig.colorbar(im, ax=ax, fraction=0.046, pad=0.02)
                bar.ax.tick_params(labelsize=6)
        if "subject" in row:
            axes[i][0].set_ylabel(f"{row['subject']}\nz={int(row['slice_index'])}, {_class(row['label'])}",
                                  fontsize=7)
    fig.suptitle(title, fontsize=8)
    return _save(fig, path)


def _class(v: Any) -> str:
    return "tumour" if int(v) else "no tumour"


def _verdict(row: Mapping[str, Any], which: str) -> str:
    """``": tumour, p 0.93"``: the model's class and tumour probability on the clean or adversarial slice."""
    if f"{which}_pred" not in row:
        return ""
    return f": {_class(row[f'{which}_pred'])}\np(tumour) {float(row[f'{which}_prob']):.2f}"


def plot_physics_accuracy(rows: Sequence[Mapping[str, Any]], path: str | os.PathLike,
                          random_rows: Collection[str] = ()) -> Path:
    """Robust accuracy against eps of the MRI-physics rows: one panel per budget (``field``, ``kspace``) and mask,
    one line per untargeted attack row (those named in ``random_rows``, the random baselines, dashed), the clean
    accuracy of the mask as a dotted line.

    ``rows``: summary rows with ``attack``, ``budget``, ``eps``, ``mask``, ``targeted``, ``robust_acc`` (and
    ``clean`` rows with ``clean_acc``); rows of other budgets are left out.
    """
    physics = [r for r in rows if r.get("budget") in _BUDGET_AXIS and not r["targeted"]]
    panels = list(dict.fromkeys((r["budget"], r["mask"]) for r in physics))
    if not panels:
        raise MedAdvInputError("plot_physics_accuracy needs rows of a 'field' or 'kspace' budget, got none")
    fig, axes = plt.subplots(1, len(panels), figsize=(4 * len(panels), 3.2), squeeze=False, sharey=True)
    for ax, (budget, mask) in zip(axes[0], panels):
        for r in rows:
            if r["attack"] == "clean" and r["mask"] == mask and not math.isnan(r.get("clean_acc", math.nan)):
                ax.axhline(r["clean_acc"], color="k", ls=":", lw=1, label="clean")
        mine = [r for r in physics if (r["budget"], r["mask"]) == (budget, mask)]
        for attack in dict.fromkeys(r["attack"] for r in mine):
            pts = sorted((r["eps"], r["robust_acc"]) for r in mine if r["attack"] == attack)
            ax.plot(*zip(*pts), marker="s" if attack in random_rows else "o",
                    ls="--" if attack in random_rows else "-", label=display_name(attack))
        ax.set_title(f"mask: {mask}", fontsize=9)
        ax.set_xlabel(_BUDGET_AXIS[budget], fontsize=8)
        ax.set_ylim(-0.02, 1.02)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    axes[0][0].set_ylabel("robust accuracy")
    return _save(fig, path)
