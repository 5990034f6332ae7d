"""Tables and labels of the stage-3 report (:class:`~medadv_monai.engines.AttackGridRunner`) that depend on the kind
of a cell's eps, and the mask ranking of a patch sweep.

An L-inf eps is written in units of 1/255 (``eps 8/255``); the eps of an MRI-physics attack is of another kind
(:func:`~medadv_monai.attacks.budget_name`) and is written as it is with its kind (``field eps 0.3``: a bias field
within [0.7, 1.3]; ``k-space eps 0.05``: a k-space change of at most 5% of the image's k-space L2 norm), never on
the 1/255 scale. The physics rows get their own table, each attack beside its random baseline at the same eps and
mask (:func:`physics_section`).
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Mapping, Sequence
from typing import Any

from medadv_monai.attacks.registry import get_attack, random_baseline
from medadv_monai.engines.grid_cells import CLEAN, AttackCell
from medadv_monai.metrics import coverage_bins
from medadv_monai.visualize import markdown_table

__all__ = ["BUDGET_TITLES", "cell_line", "eps_text", "eps_value", "is_physics", "physics_section", "rank_masks",
           "summary_table"]

BUDGET_TITLES: Mapping[str, str] = {"linf": "L-inf", "field": "bias field", "kspace": "k-space", "none": "-"}
"""A budget kind (:func:`~medadv_monai.attacks.budget_name`, ``none`` for clean) -> how the report names it."""

_PHYSICS_METRICS = {"field": ("mean_field_lo", "mean_field_hi"), "kspace": ("mean_kspace_energy",)}


def is_physics(row: Mapping[str, Any]) -> bool:
    """Whether a summary row (or a cell's :meth:`~medadv_monai.engines.AttackCell.row`) is of an MRI-physics attack
    (its budget is neither ``linf`` nor ``none``)."""
    return row.get("budget", "linf") not in ("linf", "none")


def eps_value(budget: str, eps: float) -> str:
    """An eps as the report writes it in a table: ``8/255`` (L-inf), ``0.3`` (another kind), ``-`` (clean)."""
    if budget == "none":
        return "-"
    return f"{eps * 255:.4g}/255" if budget == "linf" else f"{eps:.4g}"


def eps_text(budget: str, eps: float) -> str:
    """An eps in a title or legend: ``eps 8/255``, ``field eps 0.3``, ``k-space eps 0.05``."""
    prefix = "" if budget == "linf" else f"{BUDGET_TITLES.get(budget, budget).split()[-1]} "
    return f"{prefix}eps {eps_value(budget, eps)}"


def summary_table(summary: Sequence[Mapping[str, Any]], columns: Sequence[str]) -> str:
    """The report's main table of ``columns`` (with ``eps_255``). With physics rows the ``eps_255`` column becomes
    two, ``budget`` and ``eps`` (:func:`eps_value`); without them it is unchanged."""
    if not any(is_physics(s) for s in summary):
        return markdown_table(summary, columns)
    shown = [{**s, "budget": BUDGET_TITLES.get(s.get("budget", "linf"), s.get("budget")),
              "eps_shown": eps_value(s.get("budget", "linf"), s["eps"])} for s in summary]
    cols = [c for col in columns for c in (("budget", "eps_shown") if col == "eps_255" else (col,))]
    return markdown_table(shown, cols, ["eps" if c == "eps_shown" else c for c in cols])


def physics_section(summary: Sequence[Mapping[str, Any]], cells: Sequence[AttackCell]) -> list[str]:
    """Markdown lines of the report's physics section: per budget, one row per untargeted physics cell (mask, eps,
    attack) with robust accuracy and ASR (95% intervals), the robust accuracy of the attack's random baseline at the
    same mask and eps and the adversarial gain (baseline minus attack: what the optimisation adds over a random
    draw of the same size), the realised field range or k-space energy, SSIM and the cost. Empty without physics
    cells."""
    registry = {c.name: c.attack for c in cells}
    rows = [s for s in summary if is_physics(s) and not s["targeted"]]
    if not rows:
        return []

    def baseline_of(s: Mapping[str, Any]) -> Mapping[str, Any] | None:
        base = random_baseline(registry[s["attack"]])
        return None if base is None else next(
            (r for r in rows if (r["budget"], r["mask"], r["eps"]) == (s["budget"], s["mask"], s["eps"])
             and get_attack(registry[r["attack"]]) is get_attack(base)), None)

    lines = ["## MRI-physics attacks against random draws of the same eps", "",
             "A bias field's eps bounds the multiplicative field to [1 - eps, 1 + eps]; a k-space eps bounds the "
             "change of the image's Fourier coefficients to eps times their L2 norm. `random robust_acc` is the "
             "attack's random baseline (same family, mask and eps, drawn at random) and `gain` its robust accuracy "
             "minus the attack's. `field_lo`, `field_hi`: mean over slices of the min and max of x'/x where the "
             "slice is not background (x > 0.01) and not clipped; `kspace_energy`: mean of ||x' - x|| / ||x||, the "
             "realised relative k-space energy.", ""]
    for budget in dict.fromkeys(s["budget"] for s in rows):
        table = []
        for s in sorted((s for s in rows if s["budget"] == budget), key=lambda s: (s["mask"], s["eps"])):
            base = baseline_of(s)
            table.append({**s, "eps_shown": eps_value(budget, s["eps"]),
                          "random": base["robust_acc"] if base else math.nan,
                          "gain": base["robust_acc"] - s["robust_acc"] if base else math.nan})
        metrics = list(_PHYSICS_METRICS.get(budget, ()))
        cols = ["mask", "eps_shown", "attack", "n", "robust_acc", "asr", "random", "gain", *metrics, "mean_ssim",
                "grad_evals"]
        headers = ["mask", "eps", "attack", "n", "robust_acc", "asr", "random robust_acc", "gain",
                   *(m.removeprefix("mean_") for m in metrics), "ssim", "grad evals"]
        lines += [f"### {BUDGET_TITLES.get(budget, budget)}", "", markdown_table(table, cols, headers), ""]
    return lines


def rank_masks(summary: Sequence[Mapping[str, Any]], rows: Sequence[Mapping[str, Any]],
               edges: Sequence[float]) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """Attacked cells ranked by ASR (best first), and ASR by coverage (bins ``edges``) pooled over every mask of
    each attack and budget."""
    attacked = [s for s in summary if s["attack"] != CLEAN]
    ranking = sorted(attacked, key=lambda s: (-_nan_last(s.get("asr", s.get("targeted_success"))), s["cell"]))
    keys = ("cell", "attack", "budget", "eps", "eps_255", "mask", "targeted", "n_asr", "asr", "asr_lo", "asr_hi",
            "n_targeted", "targeted_success", "targeted_success_lo", "targeted_success_hi", "robust_acc",
            "mean_coverage", "mean_area", "mean_ssim")
    ranking = [{"rank": i + 1, **{k: s[k] for k in keys if k in s}} for i, s in enumerate(ranking)]
    pooled = []
    key = lambda r: (r["attack"], r["eps_255"], r["targeted"])  # noqa: E731
    for (attack, eps, targeted), group in itertools.groupby(sorted((r for r in rows if r["attack"] != CLEAN),
                                                                   key=key), key=key):
        group = list(group)
        bins = coverage_bins([r["coverage"] for r in group], [r["success"] for r in group],
                             [r["clean_correct"] and r["attackable"] for r in group], edges)
        pooled += [{"attack": attack, "eps_255": eps, "targeted": targeted, **b} for b in bins]
    return ranking, pooled


def cell_line(summary: Mapping[str, Any]) -> str:
    """A cell's console line: its label and headline rates."""
    keys = ("clean_acc", "robust_acc", "targeted_success" if summary.get("targeted") else "asr")
    return f"{summary['cell']}: " + ", ".join(f"{k} {summary[k]:.3f}" for k in keys if k in summary)


def _nan_last(v: Any) -> float:
    return -math.inf if v is None or (isinstance(v, float) and math.isnan(v)) else float(v)
