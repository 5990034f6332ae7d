"""Networks: the slice classifier (and, with stage 2, the AdvGAN generator and discriminator)."""

from __future__ import annotations

from medadv_monai.networks.classifier import SliceClassifier

__all__ = ["SliceClassifier"]
