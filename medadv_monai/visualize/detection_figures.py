"""Figures and tables of the detection benchmark: ROC curves per attack and eps, and the AUC / TPR table."""

from __future__ import annotations

import math
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from medadv_monai.visualize.figures import _save, plt
from medadv_monai.visualize.report import markdown_table

__all__ = ["ATTACK_LABELS", "detection_table", "plot_roc_curves"]

ATTACK_LABELS: Mapping[str, str] = {"pgd": "PGD", "pgd_targeted": "PGD targeted",
                                    "pgd_hfc": "PGD + HFC (targeted)"}
"""Attack row -> the name tables and figures show."""


def plot_roc_curves(curves: Mapping[str, Mapping[str, Sequence[float]]], path: str | os.PathLike,
                    title: str = "") -> Path:
    """One ROC curve per detector: ``curves`` maps a detector to ``{"fpr": [...], "tpr": [...], "auc": float}``
    (sklearn's ``roc_curve`` points); the chance diagonal dashed and the 90% TNR line (FPR 0.1) dotted."""
    fig, ax = plt.subplots(figsize=(4.4, 4.0))
    for name, c in curves.items():
        ax.plot(c["fpr"], c["tpr"], lw=1.5, label=f"{name} (AUC {c['auc']:.3f})")
    ax.plot([0, 1], [0, 1], color="0.6", ls="--", lw=1)
    ax.axvline(0.1, color="0.6", ls=":", lw=1)
    ax.set_xlim(-0.01, 1.01)
    ax.set_ylim(-0.01, 1.01)
    ax.set_xlabel("false positive rate (1 - TNR)")
    ax.set_ylabel("true positive rate")
    ax.set_title(title, fontsize=9)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, loc="lower right")
    return _save(fig, path)


def _pair(row: Mapping[str, Any]) -> str:
    auc, tpr = row["auc"], row["tpr_at_90tnr"]
    if isinstance(auc, float) and math.isnan(auc):
        return "n/a"
    return f"{auc:.3f} / {tpr:.3f}"


def detection_table(rows: Sequence[Mapping[str, Any]], detectors: Sequence[str]) -> str:
    """A markdown table with one row per eps and attack: the attack's ASR and counts, then ``AUC / TPR@90%TNR`` of
    each detector (``n/a`` where it has no value; the rows' ``note`` says why)."""
    table = []
    keys = list(dict.fromkeys((r["eps_255"], r["attack"]) for r in rows))
    for eps_255, attack in keys:
        mine = {r["detector"]: r for r in rows if (r["eps_255"], r["attack"]) == (eps_255, attack)}
        first = next(iter(mine.values()))
        table.append({"eps": f"{eps_255:g}/255", "attack": ATTACK_LABELS.get(attack, attack), "asr": first["asr"],
                      "n": f"{first['n_pos']} / {first['n_neg']}",
                      **{d: _pair(mine[d]) if d in mine else "n/a" for d in detectors}})
    return markdown_table(table, ["eps", "attack", "asr", "n", *detectors],
                          ["eps", "attack", "ASR", "n pos / neg", *detectors])
