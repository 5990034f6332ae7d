"""The networks the benchmarks time, built from the bundle configs exactly as the bundles build them.

:func:`bundle_classifier` is ``network_def`` of ``brats_slice_classifier/configs/train.yaml`` (the model under
attack) with the bundle's input shape ``(len(modalities), *image_size)``; :func:`bundle_advgan` reads
``brats_advgan/configs/train.yaml`` for its ``classifier_def`` (by default the classifier bundle's
``network_def``), its ``modalities`` and its ``network_def`` (the generator); the slice size is the classifier
config's ``image_size`` (the slices the AdvGAN bundle reads by default). Weights are untrained and seeded: the
timings do not depend on them.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
from torch import nn

__all__ = ["bundle_advgan", "bundle_classifier"]


def _input_shape(parser: Any) -> tuple[int, ...]:
    modalities = parser.get_parsed_content("modalities")
    image_size = parser.get_parsed_content("image_size")
    return (len(modalities), *(int(s) for s in image_size))


def bundle_classifier(overrides: Mapping[str, Any] | None = None) -> tuple[nn.Module, tuple[int, ...]]:
    """The slice classifier bundle's ``network_def`` (eval mode, seed 0) and one input's shape ``(C, H, W)``.

    Args:
        overrides: ids of the classifier config, as ``--id value`` on the command line, e.g.
            ``{"modalities": ["t1ce", "flair"], "image_size": [128, 128]}``.

    Returns:
        ``(network, shape)``.
    """
    from medadv_monai.bundle import load_bundle_config

    parser = load_bundle_config(**dict(overrides or {}))
    torch.manual_seed(0)
    return parser.get_parsed_content("network_def").eval(), _input_shape(parser)


def bundle_advgan(overrides: Mapping[str, Any] | None = None) -> tuple[nn.Module, nn.Module, tuple[int, ...]]:
    """The AdvGAN bundle's classifier and generator (eval mode, seed 0), and one input's shape ``(C, H, W)``.

    Args:
        overrides: ids of the classifier config, passed as the AdvGAN bundle's ``classifier_overrides`` (which
            is how that bundle changes modalities or image size).

    Returns:
        ``(classifier, generator, shape)``.
    """
    from medadv_monai.bundle import bundle_path, load_bundle_config

    parser = load_bundle_config(bundle_path("brats_advgan", "configs", "train.yaml"),
                                classifier_overrides=dict(overrides or {}))
    torch.manual_seed(0)
    classifier = parser.get_parsed_content("classifier_def").eval()
    generator = parser.get_parsed_content("network_def").eval()
    channels = len(parser.get_parsed_content("modalities"))  # the AdvGAN bundle's input: its generator's channels
    image_size = load_bundle_config(**dict(overrides or {})).get_parsed_content("image_size")  # the slices it reads
    return classifier, generator, (channels, *(int(s) for s in image_size))
