"""Ignite engines MONAI lacks: the one attack evaluator, the AdvGAN trainer, and the attack-grid runner."""

from __future__ import annotations

from medadv_monai.engines.advgan_trainer import LOSS_KEYS, AdvGANTrainer, advgan_scalars
from medadv_monai.engines.attack_evaluator import AttackEvaluator
from medadv_monai.engines.attack_grid import DEFAULT_COVERAGE_EDGES, AttackGridRunner
from medadv_monai.engines.grid_cells import CLEAN, AttackCell, advgan_cells, expand_grid, patch_sweep_masks

__all__ = [
    "CLEAN",
    "DEFAULT_COVERAGE_EDGES",
    "LOSS_KEYS",
    "AdvGANTrainer",
    "AttackCell",
    "AttackEvaluator",
    "AttackGridRunner",
    "advgan_cells",
    "advgan_scalars",
    "expand_grid",
    "patch_sweep_masks",
]
