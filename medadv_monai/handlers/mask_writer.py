"""Ignite handler: a segmentation engine's slice predictions, put back together per subject and written as NIfTI."""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import nibabel as nib
import numpy as np
from ignite.engine import Engine, Events

from medadv_monai.utils import atomic_path, save_csv

__all__ = ["SubjectMaskWriter"]


class SubjectMaskWriter:
    """Stack each subject's predicted region masks by slice index and write them when the engine completes.

    Per subject ``<output_dir>/<subject>_regions.nii.gz``: ``uint8`` of shape ``(H, W, Z, R)``, one volume per
    region in channel order, at the model's slice size (``H, W``), slice ``z`` at index ``z`` up to the last slice
    the data chain kept (slices it dropped as background are 0; the volume ends at the last kept slice), identity
    affine; and ``predictions.csv`` with one row per
    slice: ``subject``, ``slice_index`` and each region's predicted area in pixels. Files are written atomically.
    Reads a decollated engine's ``batch`` (``subject``, ``slice_index``) and ``output`` (hard ``pred`` masks).

    Args:
        output_dir: where to write.
        regions: region names in channel order (the CSV's ``area_<R>`` columns).
    """

    def __init__(self, output_dir: str | os.PathLike, regions: Sequence[str]) -> None:
        self.output_dir, self.regions = Path(output_dir), list(regions)
        self.slices: dict[str, dict[int, np.ndarray]] = {}

    def attach(self, engine: Engine) -> None:
        engine.add_event_handler(Events.EPOCH_STARTED, lambda e: self.slices.clear())
        engine.add_event_handler(Events.ITERATION_COMPLETED, self._collect)
        engine.add_event_handler(Events.COMPLETED, self._write)

    def _collect(self, engine: Engine) -> None:
        for item, out in zip(engine.state.batch, engine.state.output):
            pred = np.asarray(out["pred"].detach().cpu()) > 0.5  # (R, H, W)
            self.slices.setdefault(str(item["subject"]), {})[int(item["slice_index"])] = pred

    def _write(self, engine: Engine) -> None:
        rows: list[dict[str, Any]] = []
        self.output_dir.mkdir(parents=True, exist_ok=True)
        for subject, slices in self.slices.items():
            r, h, w = next(iter(slices.values())).shape
            volume = np.zeros((h, w, max(slices) + 1, r), np.uint8)
            for z, pred in sorted(slices.items()):
                volume[:, :, z, :] = np.moveaxis(pred, 0, -1)
                rows.append({"subject": subject, "slice_index": z,
                             **{f"area_{name}": int(pred[i].sum()) for i, name in enumerate(self.regions)}})
            with atomic_path(self.output_dir / f"{subject}_regions.nii.gz", suffix=".nii.gz") as tmp:
                nib.save(nib.Nifti1Image(volume, np.eye(4)), str(tmp))
        save_csv(rows, self.output_dir / "predictions.csv")
