"""Training and attack losses. Engines take them as callables and hold no loss mathematics."""

from __future__ import annotations

from medadv_monai.losses.advgan import (
    ATTACK_LOSSES,
    GAN_LOSSES,
    PERT_NORMS,
    AdvGANDiscriminatorLoss,
    AdvGANGeneratorLoss,
    attack_loss,
    attack_mean,
    class_ids,
    discriminator_loss,
    generator_gan_loss,
    gradient_penalty,
    perturbation_loss,
)

__all__ = [
    "ATTACK_LOSSES",
    "GAN_LOSSES",
    "PERT_NORMS",
    "AdvGANDiscriminatorLoss",
    "AdvGANGeneratorLoss",
    "attack_loss",
    "attack_mean",
    "class_ids",
    "discriminator_loss",
    "generator_gan_loss",
    "gradient_penalty",
    "perturbation_loss",
]
