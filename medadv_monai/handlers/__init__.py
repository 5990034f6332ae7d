"""Ignite handlers MONAI lacks: per-slice prediction CSV, metrics JSON, resume from the newest checkpoint,
epoch-level seeding."""

from __future__ import annotations

from medadv_monai.handlers.checkpoint import AtomicCheckpointSaver, ResumeFromLatest, latest_checkpoint
from medadv_monai.handlers.determinism import SeedEpochs
from medadv_monai.handlers.writers import MetricsJSONWriter, NullSummaryWriter, SlicePredictionWriter, prediction_rows

__all__ = [
    "AtomicCheckpointSaver",
    "MetricsJSONWriter",
    "NullSummaryWriter",
    "ResumeFromLatest",
    "SeedEpochs",
    "SlicePredictionWriter",
    "latest_checkpoint",
    "prediction_rows",
]
