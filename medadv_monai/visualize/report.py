"""Markdown tables and an HTML rendering of a markdown report."""

from __future__ import annotations

import math
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from medadv_monai.attacks.registry import display_name
from medadv_monai.utils import save_text

__all__ = ["markdown_table", "write_html"]


def _cell(v: Any) -> str:
    if isinstance(v, bool):
        return "yes" if v else "no"
    if isinstance(v, float):
        return "–" if math.isnan(v) else f"{v:.3f}"
    return str(v)


def markdown_table(rows: Sequence[Mapping[str, Any]], columns: Sequence[str],
                   headers: Sequence[str] | None = None) -> str:
    """A markdown table of ``rows`` with the given ``columns`` (floats to 3 decimals, NaN as a dash; an ``attack``
    column shows the attacks' display names, e.g. MI-FGSM for ``mifgsm``)."""
    headers = list(headers or columns)
    show = lambda c, v: display_name(v) if c == "attack" else _cell(v)  # noqa: E731
    lines = ["| " + " | ".join(headers) + " |", "|" + "---|" * len(headers)]
    lines += ["| " + " | ".join(show(c, r.get(c, "")) for c in columns) + " |" for r in rows]
    return "\n".join(lines)


def write_html(markdown_text: str, path: str | os.PathLike, title: str = "report") -> Path:
    """Render markdown (tables, images) to a standalone HTML file next to its images."""
    import markdown

    body = markdown.markdown(markdown_text, extensions=["tables", "fenced_code"])
    style = ("body{font-family:sans-serif;max-width:1100px;margin:2em auto;padding:0 1em}"
             "table{border-collapse:collapse;font-size:13px}td,th{border:1px solid #ccc;padding:3px 6px}"
             "img{max-width:100%}code,pre{background:#f5f5f5}")
    html = f"<!doctype html><html><head><meta charset='utf-8'><title>{title}</title><style>{style}</style>" \
           f"</head><body>{body}</body></html>\n"
    return save_text(html, path)
