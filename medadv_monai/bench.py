"""``medadv bench``: every benchmark of the project in one JSON file and a printed table.

Sections: ``data`` (slice cache build time per subject; slices per second from the cache against from NIfTI),
``attacks`` (PGD-10 against ten forward+backward passes, the compute limit) and ``advgan`` (seconds per image
of one generator pass against PGD-10), on CPU and, where one is present, on the GPU.

Each benchmark runs in a fresh (spawned) child process, so its ``peak_rss_mb`` is that process's own high-water mark, and
figures that are compared (cache against NIfTI, PGD against its compute limit) are measured in the same run,
interleaved, so the ratio is fair on a shared, noisy machine.
"""

from __future__ import annotations

import concurrent.futures as cf
import functools
import multiprocessing as mp
import platform
import random
import resource
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from medadv_monai.utils import save_json

__all__ = ["bench_data", "run_benchmarks", "format_bench"]


def bench_data(subjects: int = 8, shape: tuple[int, int, int] = (96, 96, 64), repeats: int = 3) -> dict[str, Any]:
    """Slice cache build time per subject, and slices/s read from the cache against slices/s made from NIfTI.

    The NIfTI path runs the slice transform chain of the classifier bundle on each subject's volumes (what a
    pipeline without the cache does); the cache path reads the same slices, in random order, from the shards.
    The two are timed alternately ``repeats`` times and the medians compared.
    """
    from medadv_monai.bundle import load_bundle_config
    from medadv_monai.data import make_synthetic_brats

    with tempfile.TemporaryDirectory() as tmp:
        make_synthetic_brats(Path(tmp) / "data", subjects=subjects, shape=shape, seed=0)
        parser = load_bundle_config(dataset_dir=str(Path(tmp) / "data"), work_dir=str(Path(tmp) / "work"),
                                    split_fractions=[1.0, 0.0, 0.0])
        cache, datalist = parser.get_parsed_content("slice_cache"), parser.get_parsed_content("datalist")
        items = datalist["training"]
        build = cache.build(items)
        ds = cache.dataset(items, modalities=["t1", "t1ce", "t2", "flair"], build=False)
        order = list(range(len(ds)))
        random.Random(0).shuffle(order)
        chain = parser.get_parsed_content("slice_transforms")
        nifti_s, cache_s, n_nifti = [], [], 0
        for _ in range(repeats):
            t = time.perf_counter()
            n_nifti = sum(len(chain(dict(item))) for item in items)
            nifti_s.append(time.perf_counter() - t)
            t = time.perf_counter()
            for i in order:
                ds[i]
            cache_s.append(time.perf_counter() - t)
        nifti_rate = n_nifti / _median(nifti_s)
        cache_rate = len(ds) / _median(cache_s)
    return {
        "subjects": subjects,
        "volume_shape": list(shape),
        "slices": len(ds),
        "cache_build_workers": cache.num_workers,
        "cache_build_s_per_subject": build["seconds_per_subject"],
        "nifti_slices_per_s": nifti_rate,
        "cache_slices_per_s": cache_rate,
        "cache_speedup": cache_rate / nifti_rate,
    }


def _bench_attacks(quick: bool) -> dict[str, Any]:
    from medadv_monai.attacks.bench import bench_pgd

    kwargs = {"batch": 8, "shape": (1, 32, 32), "repeats": 2} if quick else {}
    results = {"cpu": bench_pgd(device="cpu", **kwargs)}
    if torch.cuda.is_available():
        results["cuda"] = bench_pgd(device="cuda", **kwargs)
    return results


def _bench_advgan(quick: bool) -> dict[str, Any]:
    from medadv_monai.attacks.bench import bench_advgan

    kwargs = {"batch": 8, "shape": (1, 32, 32), "repeats": 2} if quick else {}
    results = {"cpu": bench_advgan(device="cpu", **kwargs)}
    if torch.cuda.is_available():
        results["cuda"] = bench_advgan(device="cuda", **kwargs)
    return results


def _benchmarks(quick: bool) -> dict[str, Callable[[], dict[str, Any]]]:
    data_kwargs = {"subjects": 3, "shape": (48, 48, 24), "repeats": 1} if quick else {}
    return {
        "data": functools.partial(bench_data, **data_kwargs),
        "attacks": functools.partial(_bench_attacks, quick),
        "advgan": functools.partial(_bench_advgan, quick),
    }


def _run_child(fn: Callable[[], dict[str, Any]]) -> dict[str, Any]:
    torch.set_num_threads(max(1, torch.get_num_threads()))
    out = fn()
    out["peak_rss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return out


def run_benchmarks(out: str | Path, quick: bool = False, only: list[str] | None = None) -> dict[str, Any]:
    """Run the benchmarks (each in its own child process) and write them to ``out`` as JSON."""
    results: dict[str, Any] = {
        "machine": {
            "python": sys.version.split()[0],
            "torch": torch.__version__,
            "platform": platform.platform(),
            "cpu_threads": torch.get_num_threads(),
            "cuda": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
        }
    }
    ctx = mp.get_context("spawn")  # a fresh interpreter: forking after torch ran threads can deadlock the child
    for name, fn in _benchmarks(quick).items():
        if only and name not in only:
            continue
        with cf.ProcessPoolExecutor(1, mp_context=ctx) as pool:
            try:
                results[name] = pool.submit(_run_child, fn).result()
            except ImportError as e:  # a stage that is not built yet
                results[name] = {"skipped": str(e)}
        save_json(results, out)
    return results


def format_bench(results: dict[str, Any]) -> str:
    """A plain-text table of the benchmark figures."""
    lines = []
    for section, figures in results.items():
        lines.append(f"[{section}]")
        for key, value in _flatten(figures):
            lines.append(f"  {key:<40} {value:.4g}" if isinstance(value, float) else f"  {key:<40} {value}")
    return "\n".join(lines)


def _flatten(d: dict[str, Any], prefix: str = "") -> list[tuple[str, Any]]:
    rows = []
    for k, v in d.items():
        if isinstance(v, dict):
            rows += _flatten(v, f"{prefix}{k}.")
        else:
            rows.append((f"{prefix}{k}", v))
    return rows


def _median(xs: list[float]) -> float:
    xs = sorted(xs)
    return xs[len(xs) // 2] if len(xs) % 2 else (xs[len(xs) // 2 - 1] + xs[len(xs) // 2]) / 2
