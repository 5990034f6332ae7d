"""The ``attacks`` section: PGD-``steps`` against ``steps`` plain forward+backward passes of the bundle's classifier.

The "limit" is what any gradient attack must pay: ``steps`` forward passes and ``steps`` input-gradient backward
passes. The ratio ``pgd_s / limit_s`` is the attack's overhead (target: <= 1.10). The model is the slice
classifier bundle's ``network_def`` at the bundle's input shape (:func:`~medadv_monai.bench.models.bundle_classifier`).
"""

from __future__ import annotations

import statistics
from collections.abc import Mapping, Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from medadv_monai.attacks.pgd import pgd
from medadv_monai.attacks.registry import DEFAULT_EPS, default_alpha
from medadv_monai.bench.models import bundle_classifier
from medadv_monai.bench.timing import check_shape, devices, interleaved, maxrss_mb, timed
from medadv_monai.errors import MedAdvInputError

__all__ = ["bench_pgd", "section"]


def bench_pgd(
    model: nn.Module | None = None,
    batch: int = 32,
    shape: Sequence[int] | None = None,
    steps: int = 10,
    repeats: int = 5,
    device: str | torch.device = "cpu",
    overrides: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """Time PGD-``steps`` against ``steps`` forward+backward passes, interleaved in one run.

    Both measurements use the same model (the bundle's classifier in eval mode unless one is given, which is used
    as given) and the same batch. The baseline computes ``torch.autograd.grad`` of the summed BCE-with-logits loss
    w.r.t. the input, as the attack does, and nothing else. After one warm-up of each, every repeat runs both,
    alternating which one goes first; the reported times are the medians over repeats, and ``ratio`` is the
    median of the per-repeat ratios (pairing cancels slow drifts of the machine).

    Args:
        model: a single-logit ``(N, 1)`` model; default: ``network_def`` of the slice classifier bundle.
        batch: batch size.
        shape: one sample's shape ``(C, *spatial)`` with 2 or 3 spatial dims; default: the bundle's
            ``(len(modalities), *image_size)``. With the bundle's model it must have the bundle's channel count.
        steps: PGD iterations (and baseline passes).
        repeats: timed repeats (after warm-up).
        device: where to run.
        overrides: ids of the classifier bundle config (e.g. ``{"modalities": ["t1ce", "flair"]}``), used where
            the model or the shape comes from the bundle.

    Returns:
        ``{"model", "pgd_s", "limit_s", "ratio", "peak_mem_mb", "device", "batch", "shape", "steps", "repeats"}``.
        ``peak_mem_mb`` is ``torch.cuda.max_memory_allocated`` during a PGD run on CUDA; on CPU the growth of
        the process's peak RSS over the benchmark (often 0 after warm-up, so a rough upper bound only).

    Raises:
        MedAdvInputError: a bad shape or count, or a shape whose channels the bundle's model does not take.
    """
    if model is None or shape is None:
        bundle_model, bundle_shape = bundle_classifier(overrides)
        shape = bundle_shape if shape is None else shape
        if model is None:
            model = bundle_model
            if len(shape) != len(bundle_shape) or int(shape[0]) != bundle_shape[0]:
                raise MedAdvInputError(f"shape {tuple(shape)} does not fit the bundle's classifier, which takes "
                                       f"{bundle_shape[0]}-channel 2D slices such as {bundle_shape}; change "
                                       f"'modalities' through overrides, or pass a model")
    shape = check_shape(shape, batch, repeats, steps)
    dev = torch.device(device)
    gen = torch.Generator(device="cpu").manual_seed(0)
    model = model.to(dev)
    x = torch.rand((batch, *shape), generator=gen).to(dev)
    y = torch.randint(0, 2, (batch,), generator=gen).to(dev)
    yf = y.to(torch.float32)
    eps = DEFAULT_EPS
    alpha = default_alpha(eps)

    def run_pgd() -> None:
        pgd(model, x, y, eps=eps, alpha=alpha, steps=steps, generator=gen)

    def run_limit() -> None:
        with torch.enable_grad():
            for _ in range(steps):
                xi = x.detach().requires_grad_(True)
                loss = F.binary_cross_entropy_with_logits(model(xi)[:, 0], yf.to(xi.dtype), reduction="none").sum()
                torch.autograd.grad(loss, xi)

    rss0 = maxrss_mb()
    peak: float | None = None
    if dev.type == "cuda":
        torch.cuda.reset_peak_memory_stats(dev)
    timed(run_pgd, dev)  # warm-up (allocator, kernels, autotuning); its peak memory is PGD's
    if dev.type == "cuda":
        peak = torch.cuda.max_memory_allocated(dev) / 2**20
    timed(run_limit, dev)
    times = interleaved({"pgd": run_pgd, "limit": run_limit}, repeats, dev, warmup=False)
    if dev.type != "cuda":
        peak = max(maxrss_mb() - rss0, 0.0)
    return {
        "model": type(model).__name__,
        "pgd_s": statistics.median(times["pgd"]),
        "limit_s": statistics.median(times["limit"]),
        "ratio": statistics.median(p / q for p, q in zip(times["pgd"], times["limit"])),
        "peak_mem_mb": peak,
        "device": str(dev),
        "batch": batch,
        "shape": list(shape),
        "steps": steps,
        "repeats": repeats,
    }


def section(quick: bool = False) -> dict[str, Any]:
    """The ``attacks`` section of ``medadv bench``: :func:`bench_pgd` on each device (``quick``: batch 8, 2 repeats).

    The model and input shape are the bundle's in both modes; ``quick`` only shrinks the batch and the repeats.
    """
    kwargs = {"batch": 8, "repeats": 2} if quick else {}
    return {dev: bench_pgd(device=dev, **kwargs) for dev in devices()}
