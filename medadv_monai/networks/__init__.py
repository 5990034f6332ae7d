"""Networks: the slice classifier (and, with stage 2, the AdvGAN generator and discriminator)."""

from __future__ import annotations

from medadv_monai.networks.advgan import AdvGANGenerator, PatchDiscriminator
from medadv_monai.networks.classifier import SliceClassifier
from medadv_monai.networks.io import load_checkpoint, load_weights

__all__ = ["AdvGANGenerator", "PatchDiscriminator", "SliceClassifier", "load_checkpoint", "load_weights"]
