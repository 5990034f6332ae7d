"""Benchmarks of the project, timing the networks the bundles build (``medadv bench``).

One module per section, each with a ``section(quick)`` function: :mod:`~medadv_monai.bench.data` (slice cache
against NIfTI), :mod:`~medadv_monai.bench.attacks` (PGD against its compute limit),
:mod:`~medadv_monai.bench.peers` (APGD, Square and CW-L2 against torchattacks'),
:mod:`~medadv_monai.bench.advgan` (an AdvGAN generator pass against PGD-10) and
:mod:`~medadv_monai.bench.realsize` (the slice cache at the BraTS grid, extrapolated to BraTS 2021).
:mod:`~medadv_monai.bench.runner` runs them, each in a fresh child process, into one JSON file and a table;
:mod:`~medadv_monai.bench.models` builds the networks from the bundle configs; :mod:`~medadv_monai.bench.timing`
holds the interleaved timing.
"""

from __future__ import annotations

from medadv_monai.bench.advgan import bench_advgan
from medadv_monai.bench.attacks import bench_pgd
from medadv_monai.bench.data import bench_data
from medadv_monai.bench.models import bundle_advgan, bundle_classifier
from medadv_monai.bench.peers import bench_peers
from medadv_monai.bench.realsize import bench_realsize
from medadv_monai.bench.runner import SECTIONS, format_bench, run_benchmarks

__all__ = [
    "SECTIONS",
    "bench_advgan",
    "bench_data",
    "bench_peers",
    "bench_pgd",
    "bench_realsize",
    "bundle_advgan",
    "bundle_classifier",
    "format_bench",
    "run_benchmarks",
]
