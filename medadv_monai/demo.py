"""``medadv demo``: the pipeline end to end on synthetic BraTS (or a real BraTS folder), ending in a report.

Every step records what it produced; a second run reuses finished steps unless ``redo`` is set. The data steps
go through the classifier bundle's config (its datalist, slice transform chain and slice cache), so the demo
makes slices exactly as the bundles do.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from medadv_monai.utils import save_json, save_text

__all__ = ["run_demo"]


class _Steps:
    """Run named steps once: a step whose marker file exists is skipped unless ``redo``."""

    def __init__(self, out: Path, redo: bool) -> None:
        self.out, self.redo = out, redo
        self.log: list[dict[str, Any]] = []

    def __call__(self, name: str, fn: Callable[[], Any]) -> Any:
        marker = self.out / "steps" / f"{name}.json"
        if marker.is_file() and not self.redo:
            print(f"[demo] {name}: done before, reusing ({marker})", flush=True)
            record = json.loads(marker.read_text())
        else:
            print(f"[demo] {name} ...", flush=True)
            start = time.perf_counter()
            result = fn()
            record = {"step": name, "seconds": round(time.perf_counter() - start, 2), "result": result}
            save_json(record, marker)
            print(f"[demo] {name}: {record['seconds']} s", flush=True)
        self.log.append(record)
        return record["result"]


def run_demo(
    out: str | Path = "demo_out",
    dataset_dir: str | Path | None = None,
    redo: bool = False,
    subjects: int | None = None,
    shape: tuple[int, int, int] | None = None,
) -> Path:
    """Run the demo into ``out`` and return the path of ``out/report.md``.

    Args:
        out: output folder (data, work files, report).
        dataset_dir: a BraTS 2021 folder to use instead of synthetic data.
        redo: run every step again even if it finished before.
        subjects: number of synthetic subjects (default: the generator's, 40).
        shape: synthetic volume shape (x, y, z) (default: the generator's, 64x64x48).
    """
    from medadv_monai.cli import load_bundle_config
    from medadv_monai.data import format_statistics, make_synthetic_brats, split_statistics

    out = Path(out).resolve()
    steps = _Steps(out, redo)
    if dataset_dir is None:
        dataset_dir = out / "data" / "synthetic_brats"
        synth_args = {k: v for k, v in {"subjects": subjects, "shape": shape}.items() if v is not None}
        steps("synthetic_data", lambda: len(make_synthetic_brats(dataset_dir, **synth_args)))
    overrides = {"dataset_dir": str(dataset_dir), "work_dir": str(out / "work")}
    parser = load_bundle_config(**overrides)

    def slice_cache() -> dict[str, Any]:
        cache, datalist = parser.get_parsed_content("slice_cache"), parser.get_parsed_content("datalist")
        figures = cache.build([i for items in datalist.values() for i in items], progress=True)
        stats = split_statistics(cache.datasets(datalist, modalities=parser["modalities"]))
        save_json(stats, out / "stats.json")
        return {"cache": str(cache.path), "build": figures, "stats": stats}

    cache_info = steps("slice_cache", slice_cache)
    report = out / "report.md"
    save_text(_report(cache_info, steps.log, dataset_dir, format_statistics), report)
    print(f"[demo] report: {report}", flush=True)
    return report


def _report(cache_info: dict[str, Any], log: list[dict[str, Any]], dataset_dir: Path | str,
            format_statistics: Callable) -> str:
    lines = [
        "# medadv-monai demo report",
        "",
        f"Dataset: `{dataset_dir}`  ",
        f"Slice cache: `{cache_info['cache']}`",
        "",
        "## Data",
        "",
        "```",
        format_statistics(cache_info["stats"]),
        "```",
        "",
        "## Steps",
        "",
        "| step | seconds |",
        "|---|---|",
        *[f"| {r['step']} | {r['seconds']} |" for r in log],
        "",
    ]
    return "\n".join(lines)
