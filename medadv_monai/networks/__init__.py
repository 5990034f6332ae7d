"""Networks: the slice classifier, the AdvGAN generator and discriminator, and loading them safely."""

from __future__ import annotations

from medadv_monai.networks.advgan import AdvGANGenerator, PatchDiscriminator
from medadv_monai.networks.advgan_checkpoint import AdvGANSettings, load_generator_checkpoint
from medadv_monai.networks.classifier import SliceClassifier
from medadv_monai.networks.io import freeze, load_checkpoint, load_frozen, load_weights

__all__ = [
    "AdvGANGenerator",
    "AdvGANSettings",
    "PatchDiscriminator",
    "SliceClassifier",
    "freeze",
    "load_checkpoint",
    "load_frozen",
    "load_generator_checkpoint",
    "load_weights",
]
