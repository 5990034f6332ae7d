"""Ignite handler: every attacked sample as a row, optionally written as CSV with the adversarial inputs."""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch
from ignite.engine import Engine, Events

from medadv_monai.utils import atomic_path, save_csv

__all__ = ["PerSampleRecorder"]


class PerSampleRecorder:
    """Gather the ``per_sample`` columns of an :class:`~medadv_monai.engines.AttackEvaluator` as one row per sample.

    With ``output_dir``, the rows go to ``samples.csv`` when the engine completes and, with ``save_images``, the
    adversarial inputs ``(N, C, *spatial)`` float32 to ``adversarial.npy`` in row order (column ``row``); both are
    written atomically.

    Args:
        output_dir: where to write (``None``: keep the rows in :attr:`rows` only).
        save_images: also write ``adversarial.npy``.
        columns: constant columns put first in every row (e.g. the grid cell's attack, eps and mask).

    Attributes:
        rows: one dict per sample in data order.
    """

    def __init__(self, output_dir: str | os.PathLike | None = None, save_images: bool = False,
                 columns: Mapping[str, Any] | None = None) -> None:
        self.output_dir = None if output_dir is None else Path(output_dir)
        self.save_images = bool(save_images)
        self.columns = dict(columns or {})
        self.rows: list[dict[str, Any]] = []
        self.images: list[np.ndarray] = []

    def attach(self, engine: Engine) -> None:
        engine.add_event_handler(Events.EPOCH_STARTED, self._reset)
        engine.add_event_handler(Events.ITERATION_COMPLETED, self._collect)
        if self.output_dir is not None:
            engine.add_event_handler(Events.COMPLETED, self._write)

    def _reset(self, engine: Engine) -> None:
        self.rows, self.images = [], []

    def _collect(self, engine: Engine) -> None:
        cols = engine.state.output["per_sample"]
        first = len(self.rows)
        for i in range(len(cols["label"])):
            row = {"row": first + i} if self.save_images else {}
            row.update(self.columns)
            for key, values in cols.items():
                v = values[i]
                row[key] = v.item() if isinstance(v, torch.Tensor) else v
            self.rows.append(row)
        if self.save_images:
            self.images.append(engine.state.output["adv"].detach().float().cpu().numpy())

    def _write(self, engine: Engine) -> None:
        save_csv(self.rows, self.output_dir / "samples.csv")
        if self.save_images and self.images:
            with atomic_path(self.output_dir / "adversarial.npy", suffix=".npy") as tmp:
                np.save(tmp, np.concatenate(self.images))
