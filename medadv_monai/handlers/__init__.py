"""Ignite handlers MONAI lacks: attack summaries, per-sample rows, image grids, per-slice prediction CSV, metrics
JSON, atomic checkpoints and resume from the newest one, epoch-level seeding."""

from __future__ import annotations

from medadv_monai.handlers.attack_summary import AttackSummary
from medadv_monai.handlers.checkpoint import AtomicCheckpointSaver, ResumeFromLatest, latest_checkpoint
from medadv_monai.handlers.determinism import SeedEpochs
from medadv_monai.handlers.image_grid import AttackImageGrid
from medadv_monai.handlers.sample_recorder import PerSampleRecorder
from medadv_monai.handlers.threshold import CalibrateThreshold
from medadv_monai.handlers.writers import MetricsJSONWriter, NullSummaryWriter, SlicePredictionWriter, prediction_rows

__all__ = [
    "AtomicCheckpointSaver",
    "AttackImageGrid",
    "AttackSummary",
    "CalibrateThreshold",
    "MetricsJSONWriter",
    "NullSummaryWriter",
    "PerSampleRecorder",
    "ResumeFromLatest",
    "SeedEpochs",
    "SlicePredictionWriter",
    "latest_checkpoint",
    "prediction_rows",
]
