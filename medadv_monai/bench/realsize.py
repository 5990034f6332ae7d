"""The ``realsize`` section: the slice cache at the real BraTS grid, and what it implies for BraTS 2021.

The slice classifier bundle's own ``slice_cache`` (its ``slice_transforms`` chain, default ``image_size``) builds
the shards of a few subjects of 240x240x155 voxels at 1 mm: synthetic BraTS written for the run by default, or the
first subjects of a real dataset folder. It is built twice, from scratch each time, in one fresh (spawned)
process, so the memory figures are the builds' own:

- first with all workers (``num_workers`` = every core, the cache's default; the cache forks one worker per
  subject, up to that many, from a process that holds only the imports and the parsed config), then
- with one build worker (``SliceCache.num_workers = 1``: the chain runs in the building process itself, with one
  torch thread, as each pool worker does).

A real dataset folder is given as ``data_dir`` (``bench_realsize``, ``section``, ``run_benchmarks(data_dir=...)``,
``medadv bench --only realsize --data_dir DIR``) or through the environment variable ``MEDADV_BENCH_DATA``::

    medadv bench --only realsize --data_dir /data/BraTS2021 --out bench.json

The folder is only read: the datalist and the shards go to a temporary folder that is removed afterwards.

Figures (MB = 2**20 bytes, GB = 2**30 bytes, ``s`` = wall seconds):

- ``build_s_per_subject_1_worker``, ``build_s_per_subject_all_workers``: the build's wall time over its subjects,
  divided by their number (the cache's own ``seconds_per_subject``: the content digests of the input files, taken
  before building, are left out), with one worker and with ``build_workers`` workers;
- ``nifti_load_s_per_subject``, ``nifti_load_share_1_worker``: the chain's loading transform alone, and its share
  of the one-worker build time;
- ``rss_mb_before_build`` (after imports and config parsing), ``peak_rss_mb_1_worker_process``,
  ``peak_rss_mb_all_workers_parent``: :func:`~medadv_monai.bench.timing.maxrss_mb`, the building process's own
  high-water mark; ``peak_rss_mb_per_worker``: ``getrusage(RUSAGE_CHILDREN)``, the largest of the forked workers,
  the pages they share with the parent included (``None`` when no worker was forked);
- ``shard_mb_per_subject``, ``nifti_mb_per_subject``: on disk;
- for BraTS 2021's 1,251 subjects: ``brats2021_build_hours_all_workers = 1251 * build_s_per_subject_all_workers /
  3600``, ``brats2021_build_hours_1_worker`` likewise, ``brats2021_shards_gb = 1251 * shard_mb_per_subject / 1024``;
- ``load_avg_1min``: the machine's load average when the section started (other work slows the figures down).
"""

from __future__ import annotations

import concurrent.futures as cf
import multiprocessing as mp
import os
import resource
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

from medadv_monai.bench.timing import maxrss_mb
from medadv_monai.errors import MedAdvInputError

__all__ = ["BRATS2021_SUBJECTS", "BRATS_SHAPE", "DATA_ENV", "bench_realsize", "section"]

BRATS2021_SUBJECTS = 1251
"""Subjects of the BraTS 2021 training set, the figure the per-subject numbers are extrapolated to."""
BRATS_SHAPE = (240, 240, 155)
"""The BraTS grid (voxels of 1 mm), the default shape of the synthetic subjects."""
DATA_ENV = "MEDADV_BENCH_DATA"
"""Environment variable naming a real dataset folder for :func:`section` (``medadv bench``)."""
_MB = 2**20


def _children_mb() -> float:
    """The largest peak RSS among this process's ended, waited-for children (forked build workers), in MB."""
    rss = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    return rss / _MB if sys.platform == "darwin" else rss / 1024  # bytes on macOS, KiB on Linux


def _tree_mb(path: Path) -> float:
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file()) / _MB


def _loader(chain: Any) -> Any:
    """The chain's loading transform (a ``Load...`` class first in a ``Compose``), or ``None``."""
    first = next(iter(getattr(chain, "transforms", ())), None)
    return first if first is not None and type(first).__name__.startswith("Load") else None


def _cache(dataset_dir: str, work_dir: str, subjects: int) -> tuple[Any, Any, list[dict[str, Any]]]:
    """The bundle config, its slice cache (under ``work_dir``) and the first ``subjects`` subjects by name."""
    from medadv_monai.bundle import load_bundle_config

    parser = load_bundle_config(dataset_dir=dataset_dir, work_dir=work_dir, split_fractions=[1.0, 0.0, 0.0])
    cache, datalist = parser.get_parsed_content("slice_cache"), parser.get_parsed_content("datalist")
    items = sorted(datalist["training"], key=lambda item: str(item["subject"]))[:subjects]
    if len(items) < subjects:
        raise MedAdvInputError(f"dataset_dir {dataset_dir!r} has {len(items)} subjects; the benchmark needs "
                               f"{subjects}")
    return parser, cache, items


def _measure(dataset_dir: str, tmp: str, subjects: int, workers: int) -> dict[str, Any]:
    """In a fresh process: build with ``workers`` workers, then again from scratch with one; the raw figures.

    The pool build comes first, so its workers are forked from a process that holds only the imports and the
    config, and ``RUSAGE_CHILDREN`` holds them alone; the one-worker build then runs in this process.
    """
    import nibabel as nib

    _, cache, items = _cache(dataset_dir, str(Path(tmp) / "work_all"), subjects)
    cache.num_workers = workers
    rss_before = maxrss_mb()
    every = cache.build(items)
    parent_peak, worker_peak = maxrss_mb(), _children_mb()

    parser, cache, items = _cache(dataset_dir, str(Path(tmp) / "work_one"), subjects)
    cache.num_workers = 1  # the chain runs in this process
    torch.set_num_threads(1)  # as in each pool worker
    one = cache.build(items)
    out: dict[str, Any] = {
        "all": every,
        "one": one,
        "workers": min(workers, len(items)),
        "rss_before_mb": rss_before,
        "parent_peak_mb": parent_peak,
        "worker_peak_mb": worker_peak,
        "one_peak_mb": maxrss_mb(),
        "shard_mb": [_tree_mb(cache.shard_dir(item)) for item in items],
        "nifti_mb": [sum(Path(item[k]).stat().st_size for k in cache.file_keys) / _MB for item in items],
        "image_size": [int(s) for s in parser.get_parsed_content("image_size")],
    }
    header = nib.load(str(items[0][cache.image_keys[0]])).header
    out["volume_shape"] = [int(s) for s in header.get_data_shape()[:3]]
    out["voxel_mm"] = [round(float(z), 4) for z in header.get_zooms()[:3]]
    loader = _loader(parser.get_parsed_content("slice_transforms"))
    if loader is not None:
        load_s = []
        for item in items:
            t0 = time.perf_counter()
            loader(dict(item))
            load_s.append(time.perf_counter() - t0)
        out["load_s"] = statistics.fmean(load_s)
    return out


def bench_realsize(data_dir: str | os.PathLike | None = None, subjects: int | None = None,
                   shape: tuple[int, int, int] = BRATS_SHAPE, workers: int | None = None) -> dict[str, Any]:
    """Slice cache build time, memory and disk per subject at the BraTS grid, and the BraTS 2021 figures they imply.

    The cache is the slice classifier bundle's own (``slice_cache`` of its ``train.yaml`` with its defaults, read
    through :func:`~medadv_monai.bundle.load_bundle_config`). It is built twice, from scratch each time, in one
    fresh process: with ``workers`` build workers, then with one; then the chain's loading transform alone is
    timed on each subject (the files then being in the page cache). See the module docstring for the figures.

    Args:
        data_dir: a dataset folder (one folder per subject, e.g. BraTS 2021), only read; its first ``subjects``
            subjects by name are used. Default: synthetic BraTS of ``shape`` written to a temporary folder.
        subjects: how many subjects; default: the build workers, at least 2 and at most 4.
        shape: the synthetic volumes' shape ``(H, W, D)`` (ignored with ``data_dir``).
        workers: build workers of the "all workers" build; default: every core (the bundle cache's default
            ``num_workers``).

    Returns:
        The figures (see the module docstring), with ``data`` (``"synthetic"`` or the folder), ``subjects``,
        ``volume_shape`` and ``voxel_mm`` (of the first subject's first modality), ``image_size``,
        ``slices_per_subject``, ``cpu_count``, ``build_workers``.

    Raises:
        MedAdvInputError: a count below 1, a shape that is not 3D, or a ``data_dir`` that is missing or has fewer
            subjects than asked for.
    """
    from medadv_monai.data import make_synthetic_brats

    workers_all = int(workers) if workers is not None else (os.cpu_count() or 1)
    subjects = min(max(2, workers_all), 4) if subjects is None else int(subjects)
    if subjects < 1 or workers_all < 1:
        raise MedAdvInputError(f"subjects and workers must be >= 1, got {subjects}, {workers_all}")
    if data_dir is None and (len(shape) != 3 or min(shape) < 1):
        raise MedAdvInputError(f"shape must be (H, W, D) with sizes >= 1, got {tuple(shape)}")
    if data_dir is not None and not Path(data_dir).is_dir():
        raise MedAdvInputError(f"data_dir {str(data_dir)!r} is not a folder; expected a dataset folder of subject "
                               "folders, e.g. a BraTS 2021 download")
    load = os.getloadavg()[0]
    with tempfile.TemporaryDirectory(prefix="medadv-realsize-") as tmp:
        if data_dir is None:
            make_synthetic_brats(Path(tmp) / "data", subjects=subjects, shape=tuple(shape), seed=0)
        dataset = str(Path(tmp) / "data" if data_dir is None else Path(data_dir).resolve())
        ctx = mp.get_context("spawn")  # a fresh interpreter: its peak RSS and its children are the builds' alone
        with cf.ProcessPoolExecutor(1, mp_context=ctx) as pool:
            m = pool.submit(_measure, dataset, tmp, subjects, workers_all).result()
    s_all = m["all"]["seconds_per_subject"]
    s_one = m["one"]["seconds_per_subject"]
    shard_mb = statistics.fmean(m["shard_mb"])
    load_s = m.get("load_s")
    return {
        "data": "synthetic" if data_dir is None else dataset,
        "subjects": subjects,
        "volume_shape": m["volume_shape"],
        "voxel_mm": m["voxel_mm"],
        "image_size": m["image_size"],
        "slices_per_subject": m["one"]["slices_built"] / subjects,
        "cpu_count": os.cpu_count(),
        "load_avg_1min": round(load, 2),
        "build_workers": m["workers"],
        "build_s_per_subject_1_worker": s_one,
        "build_s_per_subject_all_workers": s_all,
        "nifti_load_s_per_subject": load_s,
        "nifti_load_share_1_worker": load_s / s_one if load_s is not None and s_one > 0 else None,
        "rss_mb_before_build": m["rss_before_mb"],
        "peak_rss_mb_1_worker_process": m["one_peak_mb"],
        "peak_rss_mb_all_workers_parent": m["parent_peak_mb"],
        "peak_rss_mb_per_worker": m["worker_peak_mb"] if m["workers"] > 1 else None,
        "shard_mb_per_subject": shard_mb,
        "nifti_mb_per_subject": statistics.fmean(m["nifti_mb"]),
        "brats2021_subjects": BRATS2021_SUBJECTS,
        "brats2021_build_hours_all_workers": BRATS2021_SUBJECTS * s_all / 3600,
        "brats2021_build_hours_1_worker": BRATS2021_SUBJECTS * s_one / 3600,
        "brats2021_shards_gb": BRATS2021_SUBJECTS * shard_mb / 1024,
    }


def section(quick: bool = False, data_dir: str | os.PathLike | None = None) -> dict[str, Any]:
    """The ``realsize`` section of ``medadv bench``: :func:`bench_realsize`.

    ``data_dir`` (default: the environment variable ``MEDADV_BENCH_DATA``, if set) is a real dataset folder;
    without one, synthetic subjects of 240x240x155 are written. ``quick``: 2 synthetic subjects of 48x48x32 (not
    the BraTS grid: a smoke run of the same code; ``volume_shape`` says so), or 2 subjects of ``data_dir``.
    """
    data_dir = data_dir or os.environ.get(DATA_ENV) or None
    if quick:
        return bench_realsize(data_dir, subjects=2, shape=(48, 48, 32))
    return bench_realsize(data_dir)
