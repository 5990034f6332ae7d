"""Ignite handlers that write evaluation outputs: per-slice rows as CSV, engine metrics as JSON.

MONAI's ``ClassificationSaver`` keeps one row per file name, and every slice of a volume shares its file, so
per-slice rows need this writer. Both files are written atomically when the engine completes.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from ignite.engine import Engine, Events
from monai.data import decollate_batch

from medadv_monai.utils import save_csv, save_json

__all__ = ["SlicePredictionWriter", "MetricsJSONWriter", "NullSummaryWriter", "prediction_rows"]


def _scalar(v: Any) -> Any:
    return torch.as_tensor(v).reshape(-1)[0].item() if isinstance(v, (torch.Tensor, float, int)) else v


def prediction_rows(batch: Any, output: Any, pred_key: str = "pred",
                    label_key: str = "pred_label") -> list[dict[str, Any]]:
    """Rows ``subject, slice_index, label, probability, prediction`` of one iteration (``pred`` holds
    probabilities, ``pred_label`` the thresholded prediction; ``label`` is empty for slices without one).

    Accepts the engine's batch and output either collated (dicts of batched values) or decollated (lists of
    per-sample dicts, as MONAI engines leave them after postprocessing).
    """
    if isinstance(batch, dict):
        batch = decollate_batch(batch, detach=True)
    if isinstance(output, dict):
        output = decollate_batch(output, detach=True)
    rows = []
    for b, o in zip(batch, output):
        label = b.get("label", "")
        rows.append({
            "subject": b.get("subject", ""),
            "slice_index": int(_scalar(b.get("slice_index", -1))),
            "label": "" if label == "" else int(_scalar(label)),
            "probability": float(_scalar(o[pred_key])),
            "prediction": int(_scalar(o[label_key])) if label_key in o else "",
        })
    return rows


class SlicePredictionWriter:
    """Collect ``subject, slice_index, label, probability, prediction`` for every slice and write them as one CSV.

    Args:
        output_file: CSV path, written atomically at ``Events.COMPLETED``.
        pred_key: output key holding the probability (after the evaluator's postprocessing).
    """

    def __init__(self, output_file: str | os.PathLike, pred_key: str = "pred") -> None:
        self.output_file = Path(output_file)
        self.pred_key = pred_key
        self.rows: list[dict[str, Any]] = []

    def attach(self, engine: Engine) -> None:
        engine.add_event_handler(Events.EPOCH_STARTED, lambda _: self.rows.clear())
        engine.add_event_handler(Events.ITERATION_COMPLETED, self._collect)
        engine.add_event_handler(Events.COMPLETED, self._write)

    def _collect(self, engine: Engine) -> None:
        self.rows += prediction_rows(engine.state.batch, engine.state.output, self.pred_key)

    def _write(self, engine: Engine) -> None:
        save_csv(self.rows, self.output_file, columns=["subject", "slice_index", "label", "probability", "prediction"])


class MetricsJSONWriter:
    """Write ``engine.state.metrics`` (plus ``extra`` values) to a JSON file when the engine completes.

    Args:
        output_file: JSON path, written atomically.
        extra: callable ``engine -> dict`` of further values to store (e.g. sample counts).
        prefix: the split the metrics were measured on; it replaces each metric name's own prefix (the text before
            its first ``_``), so an evaluation of the test split writes ``test_auc``, not the validation config's
            ``val_auc`` (default: names as they are).
    """

    def __init__(self, output_file: str | os.PathLike, extra: Callable[[Engine], dict] | None = None,
                 prefix: str | None = None) -> None:
        self.output_file = Path(output_file)
        self.extra = extra
        self.prefix = prefix

    def _name(self, key: str) -> str:
        return key if self.prefix is None else f"{self.prefix}_{key.split('_', 1)[-1]}"

    def attach(self, engine: Engine) -> None:
        engine.add_event_handler(Events.COMPLETED, self)

    def __call__(self, engine: Engine) -> None:
        metrics = {self._name(k): float(v) if isinstance(v, (int, float)) or hasattr(v, "item") else v
                   for k, v in engine.state.metrics.items()}
        if self.extra is not None:
            metrics.update(self.extra(engine))
        save_json(metrics, self.output_file)


class NullSummaryWriter:
    """A TensorBoard ``SummaryWriter`` stand-in that writes nothing (for DDP ranks other than 0)."""

    def __getattr__(self, name: str) -> Callable[..., None]:
        return lambda *args, **kwargs: None
