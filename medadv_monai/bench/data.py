"""The ``data`` section: slice cache build time per subject; slices/s from the cache against slices/s from NIfTI.

Both paths are the slice classifier bundle's own: its ``slice_transforms`` chain on each subject's volumes (what a
pipeline without the cache does) and its ``slice_cache``, on synthetic BraTS written for the run.
"""

from __future__ import annotations

import random
import statistics
import tempfile
from pathlib import Path
from typing import Any

import torch

from medadv_monai.bench.timing import check_shape, interleaved

__all__ = ["bench_data", "section"]


def bench_data(subjects: int = 8, shape: tuple[int, int, int] = (96, 96, 64), repeats: int = 3) -> dict[str, Any]:
    """Slice cache build time per subject, and slices/s read from the cache against slices/s made from NIfTI.

    The NIfTI path runs the slice transform chain of the classifier bundle on each subject's volumes; the cache
    path reads the same slices, in random order, from the shards. The two are timed interleaved (alternating
    which goes first), ``repeats`` rounds, and the medians compared.

    Args:
        subjects: synthetic subjects to write.
        shape: each synthetic volume's shape ``(H, W, D)``.
        repeats: timed rounds of both paths.

    Returns:
        ``{"subjects", "volume_shape", "slices", "cache_build_workers", "cache_build_s_per_subject",
        "nifti_slices_per_s", "cache_slices_per_s", "cache_speedup"}``.

    Raises:
        MedAdvInputError: a count below 1 or a shape that is not 3D.
    """
    from medadv_monai.bundle import load_bundle_config
    from medadv_monai.data import make_synthetic_brats

    check_shape((1, *shape), subjects, repeats)
    with tempfile.TemporaryDirectory() as tmp:
        make_synthetic_brats(Path(tmp) / "data", subjects=subjects, shape=shape, seed=0)
        parser = load_bundle_config(dataset_dir=str(Path(tmp) / "data"), work_dir=str(Path(tmp) / "work"),
                                    split_fractions=[1.0, 0.0, 0.0])
        cache, datalist = parser.get_parsed_content("slice_cache"), parser.get_parsed_content("datalist")
        items = datalist["training"]
        build = cache.build(items)
        ds = cache.dataset(items, modalities=parser.get_parsed_content("all_modalities"), build=False)
        order = list(range(len(ds)))
        random.Random(0).shuffle(order)
        chain = parser.get_parsed_content("slice_transforms")
        made: list[int] = []

        def from_nifti() -> None:
            made.append(sum(len(chain(dict(item))) for item in items))

        def from_cache() -> None:
            for i in order:
                ds[i]

        times = interleaved({"nifti": from_nifti, "cache": from_cache}, repeats, torch.device("cpu"), warmup=False)
        nifti_rate = made[-1] / statistics.median(times["nifti"])
        cache_rate = len(ds) / statistics.median(times["cache"])
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


def section(quick: bool = False) -> dict[str, Any]:
    """The ``data`` section of ``medadv bench`` (``quick``: 3 subjects of 48x48x24, one round)."""
    return bench_data(subjects=3, shape=(48, 48, 24), repeats=1) if quick else bench_data()
