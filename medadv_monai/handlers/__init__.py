"""Ignite handlers MONAI lacks: attack summaries, per-sample rows, image grids, per-slice prediction CSV, metrics
JSON, atomic checkpoints and resume from the newest one, epoch-level seeding, transfer scoring, per-region
Dice, per-subject predicted masks."""

from __future__ import annotations

from medadv_monai.handlers.attack_summary import AttackSummary
from medadv_monai.handlers.checkpoint import (
    AtomicCheckpointSaver,
    ResumeFromLatest,
    RunLock,
    latest_checkpoint,
    network_description,
)
from medadv_monai.handlers.determinism import SeedEpochs
from medadv_monai.handlers.image_grid import AttackImageGrid
from medadv_monai.handlers.mask_writer import SubjectMaskWriter
from medadv_monai.handlers.region_metrics import RegionMeanDice, SubjectDice, region_channel, region_dice_metrics
from medadv_monai.handlers.region_threshold import REGION_THRESHOLD_GRID, CalibrateRegionThresholds
from medadv_monai.handlers.sample_recorder import PerSampleRecorder
from medadv_monai.handlers.slice_images import TumourSliceImages
from medadv_monai.handlers.threshold import CalibrateThreshold
from medadv_monai.handlers.transfer import (
    SliceModel,
    TransferScorer,
    model_description,
    transfer_prefix,
    transfer_summaries,
)
from medadv_monai.handlers.writers import MetricsJSONWriter, NullSummaryWriter, SlicePredictionWriter, prediction_rows

__all__ = [
    "REGION_THRESHOLD_GRID",
    "AtomicCheckpointSaver",
    "AttackImageGrid",
    "AttackSummary",
    "CalibrateRegionThresholds",
    "CalibrateThreshold",
    "MetricsJSONWriter",
    "NullSummaryWriter",
    "PerSampleRecorder",
    "RegionMeanDice",
    "ResumeFromLatest",
    "RunLock",
    "SeedEpochs",
    "SliceModel",
    "SubjectDice",
    "SubjectMaskWriter",
    "SlicePredictionWriter",
    "TransferScorer",
    "TumourSliceImages",
    "latest_checkpoint",
    "model_description",
    "network_description",
    "prediction_rows",
    "region_channel",
    "region_dice_metrics",
    "transfer_prefix",
    "transfer_summaries",
]
