"""Per-split statistics of a sliced dataset: subjects, slices, positive and negative slices."""

from __future__ import annotations

from collections.abc import Mapping

from medadv_monai.data.cache import SliceDataset

__all__ = ["split_statistics", "format_statistics"]


def split_statistics(datasets: Mapping[str, SliceDataset]) -> dict[str, dict[str, int]]:
    """Count subjects, slices, positive and negative slices in each split, plus a ``total`` row."""
    rows: dict[str, dict[str, int]] = {}
    for name, ds in datasets.items():
        labels = ds.labels
        rows[name] = {
            "subjects": len(ds.subjects),
            "slices": int(labels.size),
            "positive": int(labels.sum()),
            "negative": int(labels.size - labels.sum()),
        }
    rows["total"] = {k: sum(r[k] for r in list(rows.values())) for k in ("subjects", "slices", "positive", "negative")}
    return rows


def format_statistics(rows: Mapping[str, Mapping[str, int]]) -> str:
    """A plain-text table of :func:`split_statistics`."""
    cols = ("subjects", "slices", "positive", "negative")
    lines = [f"{'split':<12}" + "".join(f"{c:>10}" for c in cols)]
    lines += [f"{name:<12}" + "".join(f"{row[c]:>10}" for c in cols) for name, row in rows.items()]
    return "\n".join(lines)
