"""Ignite engines MONAI lacks: the one attack evaluator, the AdvGAN trainer, the attack-grid runner, the comparison
of several models (trade-off and transfer), the adversarial-training step of the stage-1 trainer, and
segmentation under attack (dense attacks and MedIS); the feature-space detection benchmark (KD, BU, LID,
Mahalanobis against PGD and PGD + HFC)."""

from __future__ import annotations

from medadv_monai.engines.adversarial_training import (
    AdversarialTrainingStep,
    EpsWarmup,
    adversarial_settings,
    check_adversarial_settings,
    warmup_eps,
)
from medadv_monai.engines.advgan_trainer import LOSS_KEYS, AdvGANTrainer, advgan_scalars
from medadv_monai.engines.attack_evaluator import AttackEvaluator
from medadv_monai.engines.attack_grid import DEFAULT_COVERAGE_EDGES, AttackGridRunner
from medadv_monai.engines.detection_benchmark import ATTACK_ROWS, DetectionBenchmark, check_detection_settings
from medadv_monai.engines.detection_suite import DETECTORS, DetectorSuite, ScoreColumns
from medadv_monai.engines.grid_cells import CLEAN, AttackCell, advgan_cells, expand_grid, patch_sweep_masks
from medadv_monai.engines.model_comparison import ModelComparison, load_slice_models
from medadv_monai.engines.seg_attack_evaluator import DenseAttack, MedISAttack, SegAttackEvaluator
from medadv_monai.engines.seg_attack_grid import SegAttackGrid, SegCell, seg_cells

__all__ = [
    "ATTACK_ROWS",
    "CLEAN",
    "DETECTORS",
    "DEFAULT_COVERAGE_EDGES",
    "LOSS_KEYS",
    "AdvGANTrainer",
    "AdversarialTrainingStep",
    "AttackCell",
    "AttackEvaluator",
    "AttackGridRunner",
    "DenseAttack",
    "DetectionBenchmark",
    "DetectorSuite",
    "EpsWarmup",
    "MedISAttack",
    "ModelComparison",
    "ScoreColumns",
    "SegAttackEvaluator",
    "SegAttackGrid",
    "SegCell",
    "adversarial_settings",
    "advgan_cells",
    "advgan_scalars",
    "check_adversarial_settings",
    "check_detection_settings",
    "expand_grid",
    "load_slice_models",
    "patch_sweep_masks",
    "seg_cells",
    "warmup_eps",
]
