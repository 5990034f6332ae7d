"""``medadv bench``: run the benchmark sections, each in a fresh child process, into one JSON file and a table.

Sections (:data:`SECTIONS`, one module each, each with a ``section(quick)`` function): ``data`` (slice cache build
time per subject; slices per second from the cache against from NIfTI), ``attacks`` (PGD-10 against ten
forward+backward passes of the bundle's classifier, the compute limit), ``peers`` (our APGD, Square and CW-L2
against torchattacks' on the same model and batch) and ``advgan`` (seconds per image of one
pass of the bundle's generator against PGD-10), on CPU and, where one is present, on the GPU, and ``realsize`` (the
slice cache at the BraTS grid 240x240x155: seconds, peak memory and disk per subject, and the hours and gigabytes
they imply for BraTS 2021's 1,251 subjects; :mod:`~medadv_monai.bench.realsize`).

Each section runs in a fresh (spawned) child process, so its ``peak_rss_mb`` is that process's own high-water
mark, and figures that are compared are measured in the same run, interleaved
(:func:`~medadv_monai.bench.timing.interleaved`), so the ratio is fair on a shared, noisy machine.
"""

from __future__ import annotations

import concurrent.futures as cf
import importlib
import inspect
import multiprocessing as mp
import platform
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from medadv_monai.bench.timing import maxrss_mb
from medadv_monai.errors import MedAdvInputError
from medadv_monai.utils import save_json

__all__ = ["SECTIONS", "format_bench", "run_benchmarks"]

SECTIONS: dict[str, str] = {
    "data": "medadv_monai.bench.data",
    "attacks": "medadv_monai.bench.attacks",
    "peers": "medadv_monai.bench.peers",
    "advgan": "medadv_monai.bench.advgan",
    "realsize": "medadv_monai.bench.realsize",
}
"""Section name -> the module whose ``section(quick: bool) -> dict`` produces its figures, in run order."""


def _machine() -> dict[str, Any]:
    return {
        "python": sys.version.split()[0],
        "torch": torch.__version__,
        "platform": platform.platform(),
        "cpu_threads": torch.get_num_threads(),
        "cuda": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
    }


def _run_child(module: str, quick: bool, threads: int, data_dir: str | None = None) -> dict[str, Any]:
    """In the child: the parent's thread count, the section's figures, and this process's peak RSS."""
    torch.set_num_threads(threads)
    section = importlib.import_module(module).section
    takes_data = data_dir is not None and "data_dir" in inspect.signature(section).parameters
    out = section(quick, data_dir=data_dir) if takes_data else section(quick)
    out["peak_rss_mb"] = maxrss_mb()
    return out


def run_benchmarks(out: str | Path, quick: bool = False, only: Sequence[str] | None = None,
                   data_dir: str | Path | None = None) -> dict[str, Any]:
    """Run the benchmark sections, each in its own child process, and write them to ``out`` as JSON.

    The file is rewritten (atomically) after every section, so a long run leaves the finished sections behind.

    Args:
        out: the JSON file to write.
        quick: smaller batches, data and repeats (the same networks and input shapes), for a smoke run.
        only: section names to run, or one name (default: all of :data:`SECTIONS`).
        data_dir: a real dataset folder, passed to the sections whose ``section`` takes a ``data_dir``
            (``realsize``; without it, that section reads the environment variable ``MEDADV_BENCH_DATA``, else
            writes synthetic subjects).

    Returns:
        ``{"machine": {...}, <section>: {..., "peak_rss_mb"}, ...}``; a section whose imports fail (a stage not
        built yet) is ``{"skipped": <the error>}``.

    Raises:
        MedAdvInputError: a name in ``only`` that is not a section.
    """
    only = [only] if isinstance(only, str) else only  # `--only realsize` on a command line
    unknown = sorted(set(only or ()) - set(SECTIONS))
    if unknown:
        raise MedAdvInputError(f"unknown benchmark section(s) {unknown}; expected some of {list(SECTIONS)}")
    results: dict[str, Any] = {"machine": _machine()}
    ctx = mp.get_context("spawn")  # a fresh interpreter: forking after torch ran threads can deadlock the child
    for name, module in SECTIONS.items():
        if only and name not in only:
            continue
        with cf.ProcessPoolExecutor(1, mp_context=ctx) as pool:
            try:
                results[name] = pool.submit(_run_child, module, quick, torch.get_num_threads(),
                                            None if data_dir is None else str(data_dir)).result()
            except ImportError as e:  # a stage that is not built yet
                results[name] = {"skipped": str(e)}
        save_json(results, out)
    return results


def format_bench(results: dict[str, Any]) -> str:
    """A plain-text table of the benchmark figures: one ``[section]`` block each, nested keys dotted.

    Args:
        results: what :func:`run_benchmarks` returns (or its JSON file, loaded).

    Returns:
        The table, lines joined by newlines; floats to 4 significant digits.
    """
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
