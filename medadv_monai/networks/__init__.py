"""Networks: the slice classifier, the AdvGAN generator and discriminator, loading them safely, the settings a
trained classifier was made with, sliding-window inference as a model (3D segmentation under attack), and a
segmenter that carries its region thresholds."""

from __future__ import annotations

from medadv_monai.networks.advgan import AdvGANGenerator, PatchDiscriminator
from medadv_monai.networks.advgan_checkpoint import AdvGANSettings, load_generator_checkpoint
from medadv_monai.networks.classifier import SliceClassifier
from medadv_monai.networks.io import freeze, load_checkpoint, load_frozen, load_weights
from medadv_monai.networks.model_settings import ModelSettings, classifier_config, recorded_settings, recorded_training
from medadv_monai.networks.sliding_window import SlidingWindowModel
from medadv_monai.networks.thresholded import ThresholdedNetwork

__all__ = [
    "AdvGANGenerator",
    "AdvGANSettings",
    "ModelSettings",
    "PatchDiscriminator",
    "SliceClassifier",
    "SlidingWindowModel",
    "ThresholdedNetwork",
    "classifier_config",
    "freeze",
    "load_checkpoint",
    "load_frozen",
    "load_generator_checkpoint",
    "load_weights",
    "recorded_settings",
    "recorded_training",
]
