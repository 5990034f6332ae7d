"""Timing helpers shared by the benchmark sections: device sync, interleaved wall times, peak memory.

Figures that are compared (PGD against its compute limit, AdvGAN against PGD-10, the slice cache against NIfTI)
are timed in the same process, interleaved: after one untimed warm-up of each, every round runs all of them,
alternating the order, so a slow drift of a shared, noisy machine hits both sides alike.
"""

from __future__ import annotations

import resource
import sys
import time
from collections.abc import Callable, Sequence
from typing import Any

import torch

from medadv_monai.errors import MedAdvInputError

__all__ = ["check_shape", "devices", "interleaved", "maxrss_mb", "sync", "timed"]


def devices() -> list[str]:
    """The devices a section times: ``cpu``, and ``cuda`` where a GPU is present."""
    return ["cpu", "cuda"] if torch.cuda.is_available() else ["cpu"]


def sync(device: torch.device) -> None:
    """Wait for the device's queued work (a no-op on CPU), so wall times cover the work itself."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed(fn: Callable[[], Any], device: torch.device) -> float:
    """Wall seconds of one call of ``fn`` on ``device``, synchronised before and after."""
    sync(device)
    t0 = time.perf_counter()
    fn()
    sync(device)
    return time.perf_counter() - t0


def interleaved(runs: dict[str, Callable[[], Any]], repeats: int, device: torch.device,
                warmup: bool = True) -> dict[str, list[float]]:
    """Wall times of each run: one untimed warm-up each, then ``repeats`` rounds in alternating order.

    Args:
        runs: name -> a callable with no arguments.
        repeats: timed rounds; round ``r`` runs them in the given order when ``r`` is even, reversed when odd.
        device: where they run (for synchronisation).
        warmup: run each once, untimed, first (allocator, kernels, autotuning).

    Returns:
        name -> ``repeats`` wall times in seconds, in round order (so ``zip`` pairs the rounds).
    """
    if warmup:
        for fn in runs.values():
            timed(fn, device)
    times: dict[str, list[float]] = {name: [] for name in runs}
    names = list(runs)
    for r in range(repeats):
        for name in names if r % 2 == 0 else names[::-1]:
            times[name].append(timed(runs[name], device))
    return times


def maxrss_mb() -> float:
    """This process's peak resident set size so far, in MiB (2**20 bytes).

    On Linux it is ``VmHWM`` of ``/proc/self/status``: the high-water mark of this process's own memory.
    ``getrusage(RUSAGE_SELF).ru_maxrss`` is not, in a process started by exec (a spawned section or build): Linux
    carries the parent's peak across fork and exec into it, so a child of a big parent would report the parent's
    size. Elsewhere, ``ru_maxrss``.
    """
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024  # kB
    except (OSError, ValueError, IndexError):
        pass
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return rss / (1024 * 1024) if sys.platform == "darwin" else rss / 1024  # bytes on macOS, KiB on Linux


def check_shape(shape: Sequence[int], batch: int, repeats: int, steps: int = 1) -> tuple[int, ...]:
    """Validate a benchmark's sample shape ``(C, *spatial)`` (2 or 3 spatial dims) and its counts.

    Raises:
        MedAdvInputError: a shape of another rank, or a count below 1 (the message names the value).
    """
    shape = tuple(int(s) for s in shape)
    if len(shape) not in (3, 4) or min(shape) < 1:
        raise MedAdvInputError(f"shape must be (C, H, W) or (C, D, H, W) with sizes >= 1, got {shape}")
    if batch < 1 or steps < 1 or repeats < 1:
        raise MedAdvInputError(f"batch, steps and repeats must be >= 1, got {batch}, {steps}, {repeats}")
    return shape
