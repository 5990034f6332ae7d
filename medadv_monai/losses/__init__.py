"""Training and attack losses. Engines take them as callables and hold no loss mathematics.

:mod:`~medadv_monai.losses.advgan`: AdvGAN's generator and discriminator losses; :mod:`~medadv_monai.losses.robust`:
adversarial training (PGD-AT, TRADES, MART) as one callable, :class:`AdversarialTrainingLoss`;
:mod:`~medadv_monai.losses.dense`: dense (segmentation) attack losses reduced per sample, :class:`DenseLoss`;
:mod:`~medadv_monai.losses.hfc`: the hierarchical feature constraint (HFC, Yao et al. 2021) added to any gradient
attack's loss, :class:`HFCTerm`, :class:`HFCLoss`, :func:`hfc_attack`.
"""

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
from medadv_monai.losses.dense import DENSE_LOSSES, MEDIS_LOSSES, DenseLoss, lovasz_hinge, medis_losses, soft_dice
from medadv_monai.losses.hfc import HFCLoss, HFCTerm, hfc_attack
from medadv_monai.losses.robust import (
    AT_METHODS,
    AdversarialTrainingLoss,
    eval_mode,
    mart_loss,
    mart_wrong_class,
    pgd_at_loss,
    trades_kl,
    trades_loss,
    training_alpha,
)

__all__ = [
    "AT_METHODS",
    "ATTACK_LOSSES",
    "DENSE_LOSSES",
    "AdversarialTrainingLoss",
    "DenseLoss",
    "GAN_LOSSES",
    "HFCLoss",
    "HFCTerm",
    "MEDIS_LOSSES",
    "PERT_NORMS",
    "AdvGANDiscriminatorLoss",
    "AdvGANGeneratorLoss",
    "attack_loss",
    "attack_mean",
    "class_ids",
    "discriminator_loss",
    "eval_mode",
    "generator_gan_loss",
    "gradient_penalty",
    "hfc_attack",
    "lovasz_hinge",
    "mart_loss",
    "mart_wrong_class",
    "medis_losses",
    "perturbation_loss",
    "pgd_at_loss",
    "trades_kl",
    "trades_loss",
    "soft_dice",
    "training_alpha",
]
