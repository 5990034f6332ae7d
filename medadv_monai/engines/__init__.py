"""Ignite engines MONAI lacks: the AdvGAN trainer and its attack evaluator, with their losses, metric and handlers."""

from __future__ import annotations

from medadv_monai.engines.advgan import (
    ADVGAN_MASK_KINDS,
    ATTACK_LOSSES,
    GAN_LOSSES,
    LOSS_KEYS,
    PERT_NORMS,
    AdvGANEvaluator,
    AdvGANImageGrid,
    AdvGANSettings,
    AdvGANTrainer,
    AttackSampleWriter,
    AttackSummary,
    advgan_scalars,
    attack_loss,
    attack_mask,
    discriminator_loss,
    generator_gan_loss,
    gradient_penalty,
    load_classifier,
    load_generator_checkpoint,
    perturbation_loss,
)

__all__ = [
    "ADVGAN_MASK_KINDS",
    "ATTACK_LOSSES",
    "GAN_LOSSES",
    "LOSS_KEYS",
    "PERT_NORMS",
    "AdvGANEvaluator",
    "AdvGANImageGrid",
    "AdvGANSettings",
    "AdvGANTrainer",
    "AttackSampleWriter",
    "AttackSummary",
    "advgan_scalars",
    "attack_loss",
    "attack_mask",
    "discriminator_loss",
    "generator_gan_loss",
    "gradient_penalty",
    "load_classifier",
    "load_generator_checkpoint",
    "perturbation_loss",
]
