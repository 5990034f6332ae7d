"""The ``advgan`` section: seconds per image of one AdvGAN generator pass against PGD-10.

Both attack the slice classifier bundle's network and the generator is the AdvGAN bundle's ``network_def``
(:func:`~medadv_monai.bench.models.bundle_advgan`), at the bundles' input shape.
"""

from __future__ import annotations

import statistics
from collections.abc import Mapping, Sequence
from typing import Any

import torch
from torch import nn

from medadv_monai.attacks.advgan import advgan
from medadv_monai.attacks.pgd import pgd
from medadv_monai.attacks.registry import DEFAULT_EPS, default_alpha
from medadv_monai.bench.models import bundle_advgan, bundle_classifier
from medadv_monai.bench.timing import check_shape, devices, interleaved

__all__ = ["bench_advgan", "section"]


def bench_advgan(
    classifier: nn.Module | None = None,
    generator: nn.Module | None = None,
    batch: int = 32,
    shape: Sequence[int] | None = None,
    repeats: int = 5,
    device: str | torch.device = "cpu",
    overrides: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """Seconds per image of one AdvGAN generator pass against PGD-10, on the same classifier and batch.

    AdvGAN is :func:`~medadv_monai.attacks.advgan` (validation, one generator forward, ``tanh``, budget and clip);
    PGD-10 is :func:`~medadv_monai.attacks.pgd` with 10 steps and the registry's default ``alpha``. Both use
    ``eps = 8/255`` (the AdvGAN bundle's) and no mask. After one warm-up of each, every repeat runs both,
    alternating which goes first; the times are medians over repeats divided by ``batch``, and ``speedup`` is
    the median of the per-repeat ratios PGD-10 / AdvGAN.

    Args:
        classifier: a single-logit ``(N, 1)`` model; default: the AdvGAN bundle's ``classifier_def`` (the slice
            classifier bundle's ``network_def``), eval mode. A given one is used as given.
        generator: maps a batch to a raw perturbation of its shape; default: the AdvGAN bundle's ``network_def``
            (:class:`~medadv_monai.networks.AdvGANGenerator`, untrained: the timing does not depend on its
            weights), eval mode.
        batch: batch size.
        shape: one sample's shape ``(C, *spatial)``; default: the bundle's ``(len(modalities), *image_size)``.
            The generator's down-sampling needs spatial sizes divisible by 16.
        repeats: timed repeats (after warm-up).
        device: where to run.
        overrides: ids of the classifier bundle config (the AdvGAN bundle's ``classifier_overrides``), used
            where a network or the shape comes from the bundles.

    Returns:
        ``{"classifier", "generator", "advgan_s_per_image", "pgd10_s_per_image", "speedup", "device", "batch",
        "shape", "repeats"}``.

    Raises:
        MedAdvInputError: a bad shape or count.
    """
    if classifier is None or generator is None:
        bundle_cls, bundle_gen, bundle_shape = bundle_advgan(overrides)
        classifier = bundle_cls if classifier is None else classifier
        generator = bundle_gen if generator is None else generator
    elif shape is None:
        bundle_shape = bundle_classifier(overrides)[1]
    shape = check_shape(bundle_shape if shape is None else shape, batch, repeats)
    dev = torch.device(device)
    gen = torch.Generator(device="cpu").manual_seed(0)
    classifier, generator = classifier.to(dev), generator.to(dev)
    x = torch.rand((batch, *shape), generator=gen).to(dev)
    y = torch.randint(0, 2, (batch,), generator=gen).to(dev)
    eps = DEFAULT_EPS
    runs = {
        "advgan": lambda: advgan(classifier, x, y, eps=eps, generator=generator),
        "pgd10": lambda: pgd(classifier, x, y, eps=eps, alpha=default_alpha(eps), steps=10, generator=gen),
    }
    times = interleaved(runs, repeats, dev)
    return {
        "classifier": type(classifier).__name__,
        "generator": type(generator).__name__,
        "advgan_s_per_image": statistics.median(times["advgan"]) / batch,
        "pgd10_s_per_image": statistics.median(times["pgd10"]) / batch,
        "speedup": statistics.median(p / a for p, a in zip(times["pgd10"], times["advgan"])),
        "device": str(dev),
        "batch": batch,
        "shape": list(shape),
        "repeats": repeats,
    }


def section(quick: bool = False) -> dict[str, Any]:
    """The ``advgan`` section of ``medadv bench``: :func:`bench_advgan` on each device (``quick``: batch 8, 2 repeats).

    The networks and input shape are the bundles' in both modes; ``quick`` only shrinks the batch and the repeats.
    """
    kwargs = {"batch": 8, "repeats": 2} if quick else {}
    return {dev: bench_advgan(device=dev, **kwargs) for dev in devices()}
