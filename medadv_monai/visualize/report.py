"""Markdown tables and an HTML rendering of a markdown report."""

from __future__ import annotations

import math
import os
import re
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from medadv_monai.attacks.registry import display_name
from medadv_monai.utils import save_text

__all__ = ["eps_table", "markdown_table", "write_html"]


def _cell(v: Any) -> str:
    if isinstance(v, bool):
        return "yes" if v else "no"
    if isinstance(v, float):
        return "–" if math.isnan(v) else f"{v:.3f}"
    return str(v)


def _show(row: Mapping[str, Any], column: str) -> str:
    value = row.get(column, "")
    if column == "attack":
        return display_name(value)
    lo, hi = row.get(f"{column}_lo"), row.get(f"{column}_hi")
    if isinstance(value, float) and isinstance(lo, float) and isinstance(hi, float) and not math.isnan(lo):
        return f"{value:.3f} [{lo:.2f}, {hi:.2f}]"
    return _cell(value)


def markdown_table(rows: Sequence[Mapping[str, Any]], columns: Sequence[str],
                   headers: Sequence[str] | None = None) -> str:
    """A markdown table of ``rows`` with the given ``columns``: floats to 3 decimals, NaN as a dash; a rate whose
    row also has ``<column>_lo`` and ``<column>_hi`` (a 95% interval, :func:`~medadv_monai.metrics.wilson_interval`)
    as ``0.812 [0.74, 0.87]``; an ``attack`` column with the attacks' display names (MI-FGSM for ``mifgsm``)."""
    headers = list(headers or columns)
    lines = ["| " + " | ".join(headers) + " |", "|" + "---|" * len(headers)]
    lines += ["| " + " | ".join(_show(r, c) for c in columns) + " |" for r in rows]
    return "\n".join(lines)


def eps_table(rows: Sequence[Mapping[str, Any]], value: str = "robust_acc") -> str:
    """A markdown table of ``value`` with one row per attack (and mask) and one column per eps: the layout of a
    benchmark protocol such as Adv_MIA's. Untargeted cells only; with an interval as :func:`markdown_table` shows
    it; the cost columns of :func:`~medadv_monai.attacks.registry.attack_cost` beside each attack (largest eps).
    """
    cells = [r for r in rows if not r.get("targeted") and r.get("attack") != "clean"]
    eps = sorted({r["eps_255"] for r in cells})
    keys = list(dict.fromkeys((r["attack"], r["mask"]) for r in cells))
    masks = {m for _, m in keys}
    table = []
    for attack, mask in keys:
        mine = {r["eps_255"]: r for r in cells if (r["attack"], r["mask"]) == (attack, mask)}
        row: dict[str, Any] = {"attack": attack, "mask": mask}
        for e in eps:
            if e in mine:
                row[f"{e:g}"] = _show(mine[e], value)
        last = mine[max(mine)]
        row["grad_evals"], row["queries"] = last.get("grad_evals", ""), last.get("queries", "")
        table.append(row)
    columns = ["attack", *(["mask"] if len(masks) > 1 else []), *(f"{e:g}" for e in eps), "grad_evals", "queries"]
    headers = ["attack", *(["mask"] if len(masks) > 1 else []), *(f"eps {e:g}/255" for e in eps), "grad evals",
               "queries"]
    return markdown_table(table, columns, headers)


def write_html(markdown_text: str, path: str | os.PathLike, title: str = "report") -> Path:
    """Render markdown (tables, images) to a standalone HTML file next to its images; links to other reports
    (relative ``*.md`` files, which are written beside their ``*.html`` version) point at the HTML version."""
    import markdown

    body = markdown.markdown(markdown_text, extensions=["tables", "fenced_code"])
    body = re.sub(r'href="(?![a-z]+://)([^"]+)\.md"', r'href="\1.html"', body)
    style = ("body{font-family:sans-serif;max-width:1100px;margin:2em auto;padding:0 1em}"
             "table{border-collapse:collapse;font-size:13px}td,th{border:1px solid #ccc;padding:3px 6px}"
             "img{max-width:100%}code,pre{background:#f5f5f5}pre{overflow-x:auto;white-space:pre}")
    html = f"<!doctype html><html><head><meta charset='utf-8'><title>{title}</title><style>{style}</style>" \
           f"</head><body>{body}</body></html>\n"
    return save_text(html, path)
