"""Ignite handlers MONAI lacks: per-slice prediction CSV, metrics JSON, resume from the newest checkpoint."""

from __future__ import annotations

from medadv_monai.handlers.checkpoint import ResumeFromLatest, latest_checkpoint
from medadv_monai.handlers.writers import MetricsJSONWriter, NullSummaryWriter, SlicePredictionWriter, prediction_rows

__all__ = [
    "MetricsJSONWriter",
    "NullSummaryWriter",
    "ResumeFromLatest",
    "SlicePredictionWriter",
    "latest_checkpoint",
    "prediction_rows",
]
