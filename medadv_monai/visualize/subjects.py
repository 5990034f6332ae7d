"""Subjects side by side: one row per subject, one column per modality, the tumour outlined (matplotlib, Agg)."""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from medadv_monai.errors import MedAdvInputError  # noqa: E402
from medadv_monai.utils import atomic_path  # noqa: E402

__all__ = ["subjects_figure", "tumour_slice"]

_OUTLINE = {1: "tab:blue", 2: "gold", 4: "tab:red"}  # necrosis, oedema, enhancing (BraTS 2017-2021 labels)


def tumour_slice(seg: np.ndarray | None, depth: int) -> int:
    """The axial slice with the most tumour voxels (the middle one without a tumour or a seg)."""
    if seg is None or not np.any(seg):
        return depth // 2
    return int(np.argmax((np.asarray(seg) > 0).reshape(-1, depth).sum(axis=0)))


def _display(volume: np.ndarray) -> np.ndarray:
    """A slice scaled for display by the 1st and 99th percentiles of its non-zero voxels, as the x axis across."""
    brain = volume[volume > 0]
    lo, hi = np.percentile(brain, [1, 99]) if brain.size else (0.0, 1.0)
    return np.clip((volume - lo) / max(hi - lo, 1e-6), 0, 1).T


def subjects_figure(subjects: Mapping[str, Mapping[str, np.ndarray]], out: str | os.PathLike,
                    modalities: Sequence[str] = ("t1", "t1ce", "t2", "flair")) -> Path:
    """Write a figure of each subject's modalities at its largest tumour section, the labels outlined.

    Args:
        subjects: row title -> ``{modality: (X, Y, Z) volume, ..., "seg": labels}`` (``seg`` optional).
        out: the PNG to write (atomically).
        modalities: the columns.

    Raises:
        MedAdvInputError: no subject, or a subject without one of the modalities.
    """
    if not subjects:
        raise MedAdvInputError("subjects_figure: no subject to show")
    fig, axes = plt.subplots(len(subjects), len(modalities), figsize=(2.6 * len(modalities), 2.8 * len(subjects)),
                             squeeze=False)
    for row, (title, volumes) in zip(axes, subjects.items()):
        missing = [m for m in modalities if m not in volumes]
        if missing:
            raise MedAdvInputError(f"subjects_figure: {title!r} has no {missing}; expected {list(modalities)}")
        seg = volumes.get("seg")
        z = tumour_slice(seg, np.asarray(volumes[modalities[0]]).shape[-1])
        for ax, modality in zip(row, modalities):
            ax.imshow(_display(np.asarray(volumes[modality], dtype=np.float32)[..., z]), cmap="gray",
                      origin="lower", vmin=0, vmax=1)
            if seg is not None:
                labels = np.asarray(seg)[..., z].T
                for label, colour in _OUTLINE.items():
                    if np.any(labels == label):
                        ax.contour(labels == label, levels=[0.5], colors=colour, linewidths=0.7, origin="lower")
            ax.set_title(f"{title}: {modality.upper()} (z {z})", fontsize=8)
            ax.axis("off")
    fig.text(0.5, 0.005, "outlines: blue necrosis (1), yellow oedema (2), red enhancing (4)", ha="center",
             fontsize=8)
    fig.tight_layout(rect=(0, 0.02, 1, 1))
    try:
        with atomic_path(out, suffix=".png") as tmp:
            fig.savefig(tmp, dpi=110)
    finally:
        plt.close(fig)
    return Path(out)
