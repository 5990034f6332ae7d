"""Benchmarks: PGD-``steps`` against ``steps`` plain forward+backward passes of the same model and batch, and an
AdvGAN generator pass against PGD-10 (:func:`bench_advgan`).

The "limit" is what any gradient attack must pay: ``steps`` forward passes and ``steps`` input-gradient backward
passes. The ratio ``pgd_s / limit_s`` is the attack's overhead (target: <= 1.10).
"""

from __future__ import annotations

import resource
import statistics
import sys
import time
from typing import Any, Callable, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from medadv_monai.attacks.registry import DEFAULT_EPS, default_alpha
from medadv_monai.attacks.pgd import pgd
from medadv_monai.errors import MedAdvInputError

__all__ = ["bench_advgan", "bench_pgd"]


class _SliceNet(nn.Module):
    """Compact 2D/3D slice classifier: 3 conv blocks (32/64/128 channels) with pooling, global avg pool, 1 logit."""

    def __init__(self, in_channels: int = 1, spatial_dims: int = 2) -> None:
        super().__init__()
        conv = nn.Conv2d if spatial_dims == 2 else nn.Conv3d
        norm = nn.BatchNorm2d if spatial_dims == 2 else nn.BatchNorm3d
        pool = nn.MaxPool2d if spatial_dims == 2 else nn.MaxPool3d
        gap = nn.AdaptiveAvgPool2d if spatial_dims == 2 else nn.AdaptiveAvgPool3d
        layers: list[nn.Module] = []
        c = in_channels
        for i, width in enumerate((32, 64, 128)):
            layers += [conv(c, width, 3, padding=1), norm(width), nn.ReLU()]
            if i < 2:
                layers.append(pool(2))
            c = width
        self.features = nn.Sequential(*layers, gap(1), nn.Flatten())
        self.head = nn.Linear(c, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x))


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _maxrss_mb() -> float:
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return rss / (1024 * 1024) if sys.platform == "darwin" else rss / 1024  # bytes on macOS, KiB on Linux


def bench_pgd(
    model: nn.Module | None = None,
    batch: int = 32,
    shape: Sequence[int] = (1, 64, 64),
    steps: int = 10,
    repeats: int = 5,
    device: str | torch.device = "cpu",
) -> dict[str, Any]:
    """Time PGD-``steps`` against ``steps`` forward+backward passes, interleaved in one run.

    Both measurements use the same model (in eval mode unless one is given, which is used as given) and the same
    batch. The baseline computes ``torch.autograd.grad`` of the summed BCE-with-logits loss w.r.t. the input, as
    the attack does, and nothing else. After one warm-up of each, every repeat runs both, alternating which one
    goes first; the reported times are the medians over repeats, and ``ratio`` is the median of the per-repeat
    ratios (pairing cancels slow drifts of the machine).

    Args:
        model: a single-logit ``(N, 1)`` model; default: a compact 32/64/128-channel slice classifier.
        batch: batch size.
        shape: one sample's shape ``(C, *spatial)`` with 2 or 3 spatial dims.
        steps: PGD iterations (and baseline passes).
        repeats: timed repeats (after warm-up).
        device: where to run.

    Returns:
        ``{"pgd_s", "limit_s", "ratio", "peak_mem_mb", "device", "batch", "shape", "steps", "repeats"}``.
        ``peak_mem_mb`` is ``torch.cuda.max_memory_allocated`` during a PGD run on CUDA; on CPU the growth of
        the process's peak RSS over the benchmark (often 0 after warm-up, so a rough upper bound only).
    """
    shape = tuple(int(s) for s in shape)
    if len(shape) not in (3, 4):
        raise MedAdvInputError(f"shape must be (C, H, W) or (C, D, H, W), got {shape}")
    if batch < 1 or steps < 1 or repeats < 1:
        raise MedAdvInputError(f"batch, steps and repeats must be >= 1, got {batch}, {steps}, {repeats}")
    dev = torch.device(device)
    gen = torch.Generator(device="cpu").manual_seed(0)
    if model is None:
        torch.manual_seed(0)
        model = _SliceNet(shape[0], len(shape) - 1).eval()
    model = model.to(dev)
    x = torch.rand((batch, *shape), generator=gen).to(dev)
    y = torch.randint(0, 2, (batch,), generator=gen).to(dev)
    eps = DEFAULT_EPS
    alpha = default_alpha(eps)

    def run_pgd() -> None:
        pgd(model, x, y, eps=eps, alpha=alpha, steps=steps, generator=gen)

    yf = y.to(torch.float32)

    def run_limit() -> None:
        with torch.enable_grad():
            for _ in range(steps):
                xi = x.detach().requires_grad_(True)
                loss = F.binary_cross_entropy_with_logits(model(xi)[:, 0], yf.to(xi.dtype), reduction="none").sum()
                torch.autograd.grad(loss, xi)

    def timed(fn: Callable[[], None]) -> float:
        _sync(dev)
        t0 = time.perf_counter()
        fn()
        _sync(dev)
        return time.perf_counter() - t0

    rss0 = _maxrss_mb()
    peak: float | None = None
    if dev.type == "cuda":
        torch.cuda.reset_peak_memory_stats(dev)
    timed(run_pgd)  # warm-up (allocator, kernels, autotuning); its peak memory is PGD's
    if dev.type == "cuda":
        peak = torch.cuda.max_memory_allocated(dev) / 2**20
    timed(run_limit)
    pgd_t: list[float] = []
    limit_t: list[float] = []
    for r in range(repeats):
        if r % 2 == 0:
            pgd_t.append(timed(run_pgd))
            limit_t.append(timed(run_limit))
        else:
            limit_t.append(timed(run_limit))
            pgd_t.append(timed(run_pgd))
    if dev.type != "cuda":
        peak = max(_maxrss_mb() - rss0, 0.0)
    return {
        "pgd_s": statistics.median(pgd_t),
        "limit_s": statistics.median(limit_t),
        "ratio": statistics.median(p / q for p, q in zip(pgd_t, limit_t)),
        "peak_mem_mb": peak,
        "device": str(dev),
        "batch": batch,
        "shape": shape,
        "steps": steps,
        "repeats": repeats,
    }


def bench_advgan(
    classifier: nn.Module | None = None,
    generator: nn.Module | None = None,
    batch: int = 32,
    shape: Sequence[int] = (1, 64, 64),
    repeats: int = 5,
    device: str | torch.device = "cpu",
) -> dict[str, Any]:
    """Seconds per image of one AdvGAN generator pass against PGD-10, on the same classifier and batch.

    AdvGAN is :func:`~medadv_monai.attacks.advgan` (validation, one generator forward, ``tanh``, budget and clip);
    PGD-10 is :func:`~medadv_monai.attacks.pgd` with 10 steps and the registry's default ``alpha``. Both use
    ``eps = 8/255`` and no mask. After one warm-up of each, every repeat runs both, alternating which goes first;
    the times are medians over repeats divided by ``batch``, and ``speedup`` is the median of the per-repeat
    ratios PGD-10 / AdvGAN.

    Args:
        classifier: a single-logit ``(N, 1)`` model; default: the compact 32/64/128-channel slice classifier, in
            eval mode (a given one is used as given).
        generator: maps a batch to a raw perturbation of its shape; default: an untrained
            :class:`~medadv_monai.networks.AdvGANGenerator` (the timing does not depend on its weights), eval mode.
        batch: batch size.
        shape: one sample's shape ``(C, *spatial)`` with 2 or 3 spatial dims.
        repeats: timed repeats (after warm-up).
        device: where to run.

    Returns:
        ``{"advgan_s_per_image", "pgd10_s_per_image", "speedup", "device", "batch", "shape", "repeats"}``.
    """
    from medadv_monai.attacks.advgan import advgan
    from medadv_monai.networks import AdvGANGenerator

    shape = tuple(int(s) for s in shape)
    if len(shape) not in (3, 4):
        raise MedAdvInputError(f"shape must be (C, H, W) or (C, D, H, W), got {shape}")
    if batch < 1 or repeats < 1:
        raise MedAdvInputError(f"batch and repeats must be >= 1, got {batch}, {repeats}")
    dev = torch.device(device)
    gen = torch.Generator(device="cpu").manual_seed(0)
    torch.manual_seed(0)
    if classifier is None:
        classifier = _SliceNet(shape[0], len(shape) - 1).eval()
    if generator is None:
        generator = AdvGANGenerator(shape[0], spatial_dims=len(shape) - 1).eval()
    classifier, generator = classifier.to(dev), generator.to(dev)
    x = torch.rand((batch, *shape), generator=gen).to(dev)
    y = torch.randint(0, 2, (batch,), generator=gen).to(dev)
    eps = DEFAULT_EPS
    runs: dict[str, Callable[[], Any]] = {
        "advgan": lambda: advgan(classifier, x, y, eps=eps, generator=generator),
        "pgd10": lambda: pgd(classifier, x, y, eps=eps, alpha=default_alpha(eps), steps=10, generator=gen),
    }
    times = _interleaved(runs, repeats, dev)
    return {
        "advgan_s_per_image": statistics.median(times["advgan"]) / batch,
        "pgd10_s_per_image": statistics.median(times["pgd10"]) / batch,
        "speedup": statistics.median(p / a for p, a in zip(times["pgd10"], times["advgan"])),
        "device": str(dev),
        "batch": batch,
        "shape": shape,
        "repeats": repeats,
    }


def _interleaved(runs: dict[str, Callable[[], Any]], repeats: int, dev: torch.device) -> dict[str, list[float]]:
    """Wall times of each run: one untimed warm-up each, then ``repeats`` rounds in alternating order."""

    def timed(fn: Callable[[], Any]) -> float:
        _sync(dev)
        t0 = time.perf_counter()
        fn()
        _sync(dev)
        return time.perf_counter() - t0

    for fn in runs.values():
        timed(fn)
    times: dict[str, list[float]] = {name: [] for name in runs}
    names = list(runs)
    for r in range(repeats):
        for name in names if r % 2 == 0 else names[::-1]:
            times[name].append(timed(runs[name]))
    return times
