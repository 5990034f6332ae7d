"""Stage 3 for segmentation: one :class:`~medadv_monai.engines.seg_attack_evaluator.SegAttackEvaluator` run per
cell (attack row x eps x attack mask x target), MedIS cells, then the tables, figures and report.

Outputs in ``output_dir``:

- ``summary.csv`` / ``summary.json``: one row per cell; per region the mean clean and adversarial Dice and IoU over
  the slices holding the region, the success rate (MedIS rule) and, untargeted, the ROG success rate;
- ``medis.csv`` / ``medis.json``: per MedIS cell, per surrogate loss and fused, the success rate and the mean steps to
  success;
- ``per_sample.csv``: one row per cell and slice;
- ``figures/dice_vs_eps.png`` and ``figures/overlay_<cell>.png`` (clean | adversarial | predictions);
- ``report.md`` / ``report.html``; ``cells/<cell>.json``: each finished cell, stamped with what made it (the cell,
  the model's weights, the slices, the transforms, the seed and the batch size): a rerun reuses it only when
  everything matches.

Random draws depend only on the seed and the data: a mask transform is seeded per slice from (seed, mask, slice),
so every cell with that mask attacks through the same mask; torch's generator (PGD's random start) per batch.
"""

from __future__ import annotations

import itertools
import logging
import os
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from ignite.engine import Events
from monai.data import DataLoader, Dataset
from monai.transforms import Compose

from medadv_monai.engines.grid_shards import SliceSeeded, batch_indices, derived_seed
from medadv_monai.engines.seg_attack_evaluator import DENSE_ATTACKS, DenseAttack, MedISAttack, SegAttackEvaluator
from medadv_monai.errors import MedAdvInputError
from medadv_monai.handlers import PerSampleRecorder, model_description
from medadv_monai.metrics.segmentation import summarize_regions
from medadv_monai.settings import check_settings
from medadv_monai.utils import save_csv, save_json, save_text
from medadv_monai.utils.checks import check_bool
from medadv_monai.utils.fingerprint import describe, fingerprint, reusable, settings_only, write_stamp
from medadv_monai.utils.logs import DETAIL_LOGGER
from medadv_monai.visualize import markdown_table, write_html
from medadv_monai.visualize.seg_figures import plot_dice_vs_eps, segmentation_overlays

__all__ = ["SegCell", "SegAttackGrid", "seg_cells"]

SEG_CELL_FORMAT = 2  # raise when a cell file's layout or meaning changes (2: coverage and area columns)
NO_TARGET = "none"


@dataclass(frozen=True)
class SegCell:
    """One cell: a row name and its attack settings (``attack``: a dense attack or ``medis`` or ``clean``; ``loss``
    for a dense attack; further attack arguments), an eps, an attack mask name and a target kind (``none``:
    untargeted)."""

    name: str
    settings: Mapping[str, Any] = field(default_factory=dict)
    eps: float = 0.0
    mask: str = "none"
    target: str = NO_TARGET

    @property
    def attack(self) -> str:
        return str(self.settings.get("attack", "clean"))

    @property
    def targeted(self) -> bool:
        return self.target != NO_TARGET

    @property
    def label(self) -> str:
        if self.attack == "clean":
            return "clean"
        return f"{self.name}-{self.target}-{self.mask}-eps{self.eps * 255:g}"

    def row(self) -> dict[str, Any]:
        return {"cell": self.label, "name": self.name, "attack": self.attack,
                "loss": self.settings.get("loss", "fused" if self.attack == "medis" else ""),
                "eps": self.eps, "eps_255": round(self.eps * 255, 3), "mask": self.mask, "target": self.target}

    def make_attack(self) -> Callable | None:
        kwargs = {k: v for k, v in self.settings.items() if k not in ("attack", "loss")}
        if self.attack == "clean":
            return None
        if self.attack == "medis":
            return MedISAttack(eps=self.eps, targeted=self.targeted, **kwargs)
        return DenseAttack(self.attack, self.settings.get("loss", "bce"), targeted=self.targeted, eps=self.eps,
                           **kwargs)


def seg_cells(attacks: Mapping[str, Mapping[str, Any]], eps: Sequence[float], masks: Sequence[str],
              targets: Sequence[str] = (NO_TARGET,), medis: Mapping[str, Any] | None = None) -> list[SegCell]:
    """The clean cell, every ``attacks`` row at every eps, mask and target, then the MedIS cells.

    Args:
        attacks: row name -> ``{attack, loss, ...}`` (e.g. ``{pgd_ce: {attack: pgd, loss: bce}}``).
        eps, masks, targets: the grid's axes (targets: ``none`` for untargeted, ``erase``, ``implant``).
        medis: ``{eps: [...], masks: [...], targets: [...], ...MedIS arguments}``; ``None``: no MedIS cells.
    """
    if not isinstance(attacks, Mapping):
        raise MedAdvInputError(f"attacks: expected a mapping of row name -> {{attack, loss, ...}}, got {attacks!r}")
    for name, s in attacks.items():
        if name in ("clean", "medis") or not isinstance(s, Mapping) or s.get("attack") not in DENSE_ATTACKS:
            raise MedAdvInputError(f"attacks#{name}: expected a row not named clean or medis, {{attack: "
                                   f"{'|'.join(DENSE_ATTACKS)}, loss: ...}}, got {s!r}")
        fixed = sorted(set(s) & {"eps", "mask", "targeted", "loss_fn"})
        if fixed:
            raise MedAdvInputError(f"attacks#{name}: {fixed} are set by the grid (eps, attack_masks, attack_targets)")
    cells = [SegCell("clean")]
    cells += [SegCell(n, dict(s), e, m, t) for (n, s), e, m, t in
              itertools.product(attacks.items(), _eps_list(eps, "eps"), _names(masks, "attack_masks"),
                                _names(targets, "attack_targets"))]
    if medis:
        m = dict(medis)
        axes = {k: m.pop(k, default) for k, default in (("eps", eps), ("masks", masks), ("targets", targets))}
        cells += [SegCell("medis", {"attack": "medis", **m}, e, mk, t) for e, mk, t in
                  itertools.product(_eps_list(axes["eps"], "medis#eps"), _names(axes["masks"], "medis#masks"),
                                    _names(axes["targets"], "medis#targets"))]
    labels = [c.label for c in cells]
    twice = sorted({label for label in labels if labels.count(label) > 1})
    if twice:
        raise MedAdvInputError(f"grid cells {twice} appear twice (the same row, eps, mask and target)")
    return cells


def _eps_list(values: Any, what: str) -> list[float]:
    if isinstance(values, (str, bytes)) or not isinstance(values, Sequence) or not values:
        raise MedAdvInputError(f"{what}: expected a non-empty list of budgets in [0, 1], e.g. \"$[4/255, 8/255]\", "
                               f"got {values!r}")
    return [float(check_settings({"eps": v})["eps"]) for v in values]


def _names(values: Any, what: str) -> list[str]:
    if isinstance(values, (str, bytes)) or not isinstance(values, Sequence) or not values \
            or not all(isinstance(v, str) for v in values):
        raise MedAdvInputError(f"{what}: expected a non-empty list of names, e.g. ['none'], got {values!r}")
    return list(values)


class SegAttackGrid:
    """Run segmentation attack cells on one model and slice set; write the tables, figures and report.

    Args:
        cells: from :func:`seg_cells`.
        network: the segmentation model (frozen, eval mode).
        dataset: a MONAI ``Dataset`` of cached slices whose transform gives ``image`` and ``label`` (region masks).
        regions: region names in channel order.
        masks: mask name -> transform adding ``attack_mask`` (an ``AttackMaskd``).
        targets: target kind -> transform adding ``target`` (a ``SegTargetd``) for the targeted cells.
        device, output_dir, batch_size, seed: as named.
        checkpoint: the model's file, for the stamps.
        resume: reuse finished cells whose stamp matches.
        overlay_samples: slices in each overlay figure.
    """

    def __init__(self, cells: Sequence[SegCell], network: torch.nn.Module, dataset: Dataset,
                 regions: Sequence[str], masks: Mapping[str, Callable], targets: Mapping[str, Callable] | None = None,
                 device: torch.device | str = "cpu", output_dir: str | os.PathLike = "eval/attacks",
                 batch_size: int = 64, seed: int = 0, checkpoint: str | os.PathLike | None = None,
                 resume: bool = True, overlay_samples: int = 4) -> None:
        targets = dict(targets or {})
        missing = sorted({c.mask for c in cells} - set(masks)) + sorted(
            {c.target for c in cells if c.targeted} - set(targets))
        if missing:
            raise MedAdvInputError(f"grid cells use masks or targets {missing} that the config does not define "
                                   f"(masks: {sorted(masks)}, targets: {sorted(targets)})")
        if len(dataset) == 0:
            raise MedAdvInputError("the dataset has 0 slices: there is nothing to attack (tumour_only keeps the "
                                   "slices holding tumour; choose a split that has some)")
        for cell in cells:  # an unknown attack, loss or argument is refused before any cell runs
            try:
                cell.make_attack()
            except MedAdvInputError as e:
                raise MedAdvInputError(f"grid cell {cell.label}: {e}") from None
        self.cells, self.network, self.dataset = list(cells), network, dataset
        self.regions, self.masks, self.targets = list(regions), dict(masks), targets
        self.device, self.output_dir = torch.device(device), Path(output_dir)
        self.batch_size, self.seed, self.checkpoint = int(batch_size), int(seed), checkpoint
        self.resume, self.overlay_samples = check_bool(resume, "resume"), int(overlay_samples)
        self.figures: list[Path] = []

    # ------------------------------------------------------------------------------------------ running
    def loader(self, cell: SegCell) -> DataLoader:
        parts = [self.dataset.transform, self.masks[cell.mask]]
        if cell.targeted:
            parts.append(self.targets[cell.target])
        data = SliceSeeded(self.dataset.data, Compose(parts),
                           seeds=lambda i: derived_seed(self.seed, "mask", cell.mask, i))
        return DataLoader(data, batch_sampler=batch_indices(len(data), self.batch_size), num_workers=0)

    def description(self, cell: SegCell) -> dict[str, Any]:
        data = list(self.dataset.data)
        return {"format": SEG_CELL_FORMAT, "cell": {**cell.row(), "settings": dict(cell.settings)},
                "model": model_description(self.network, self.checkpoint), "seed": self.seed,
                "batch_size": self.batch_size, "slices": {"count": len(data), "digest": fingerprint(data)[:16]},
                "transforms": settings_only(describe([self.dataset.transform, self.masks[cell.mask],
                                                      self.targets.get(cell.target) if cell.targeted else None]))}

    def run_cell(self, cell: SegCell, description: Mapping[str, Any] | None = None) -> dict[str, Any]:
        """Run one cell; save it under ``cells/``, stamped with ``description`` (default :meth:`description`), and
        return ``{"summary", "rows"}``."""
        description = self.description(cell) if description is None else description
        recorder = PerSampleRecorder(columns={"cell": cell.label})
        loader = self.loader(cell)
        seeds = [derived_seed(self.seed, "batch", b) for b in range(len(loader))]
        evaluator = SegAttackEvaluator(self.device, loader, self.network, self.regions, attack=cell.make_attack(),
                                       targeted=cell.targeted, batch_seeds=seeds, val_handlers=[recorder])
        first: dict[str, Any] = {}
        evaluator.add_event_handler(Events.ITERATION_COMPLETED(once=1), lambda e: first.update(e.state.output))
        evaluator.run()
        rows = recorder.rows
        summary = {**cell.row(), **summarize_regions(_columns(rows), self.regions, cell.targeted)}
        if cell.attack == "medis":
            summary["mean_steps"] = _mean_steps([r["fused_steps"] for r in rows])
        write_stamp(self._cell_file(cell), description, summary=summary, rows=rows)
        logging.getLogger(DETAIL_LOGGER).info("%s: %s", cell.label, summary)
        if cell.attack != "clean" and first:
            path = self.output_dir / "figures" / f"overlay_{cell.label}.png"
            segmentation_overlays(first, path, n=self.overlay_samples, title=cell.label)
        return {"summary": summary, "rows": rows}

    def _cell_file(self, cell: SegCell) -> Path:
        return self.output_dir / "cells" / f"{cell.label}.json"

    def run(self) -> list[dict[str, Any]]:
        """Run every cell (reusing finished ones whose stamp matches), write every output; return the summary."""
        self.network.eval()
        descriptions = [self.description(cell) for cell in self.cells]  # before any cell draws random numbers
        results, reused = [], 0
        for i, (cell, description) in enumerate(zip(self.cells, descriptions)):
            found, why = reusable(self._cell_file(cell), description, {"summary": dict, "rows": list}) \
                if self.resume else (None, "")
            if found is None:
                print(f"[segmentation attacks] {i + 1}/{len(self.cells)} {cell.label}"
                      + (f" (recomputing: {why})" if why else ""), flush=True)
                found = self.run_cell(cell, description)
            else:
                reused += 1
            results.append(found)
        if reused:
            print(f"segmentation attacks: reused {reused} finished cells of {self.output_dir / 'cells'}", flush=True)
        summary = [r["summary"] for r in results]
        self.write(summary, [row for r in results for row in r["rows"]], results)
        return summary

    # ------------------------------------------------------------------------------------------ outputs
    def medis_table(self, results: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
        """Per MedIS cell, one row per surrogate loss and one ``fused``: success rate, mean steps to success and
        ``clean_success``, the fraction judged a success before any step (0 steps)."""
        out = []
        for r in results:
            s = r["summary"]
            if s["attack"] != "medis":
                continue
            losses = [k[len("steps_"):] for k in r["rows"][0] if k.startswith("steps_")] if r["rows"] else []
            for loss in [*losses, "fused"]:
                steps = [row["fused_steps" if loss == "fused" else f"steps_{loss}"] for row in r["rows"]]
                ok = [v for v in steps if v >= 0]
                out.append({"cell": s["cell"], "target": s["target"], "mask": s["mask"], "eps_255": s["eps_255"],
                            "loss": loss, "success_rate": len(ok) / len(steps) if steps else float("nan"),
                            "mean_steps": _mean_steps(steps), "samples": len(steps),
                            "clean_success": sum(v == 0 for v in steps) / len(steps) if steps else float("nan")})
        return out

    def write(self, summary: list[dict[str, Any]], rows: list[dict[str, Any]],
              results: Sequence[Mapping[str, Any]]) -> None:
        out = self.output_dir
        save_json(summary, out / "summary.json")
        save_csv(summary, out / "summary.csv")
        save_csv(rows, out / "per_sample.csv")
        medis_rows = self.medis_table(results)
        if medis_rows:
            save_csv(medis_rows, out / "medis.csv")
            save_json(medis_rows, out / "medis.json")
        attacked = [s for s in summary if s["attack"] not in ("clean", "medis")]
        if attacked:
            self.figures.append(plot_dice_vs_eps(attacked, self.regions[0], out / "figures" / "dice_vs_eps.png"))
        save_text(self.report(summary, medis_rows), out / "report.md")
        write_html(self.report(summary, medis_rows), out / "report.html", title="Segmentation under attack")

    def report(self, summary: Sequence[Mapping[str, Any]], medis_rows: Sequence[Mapping[str, Any]]) -> str:
        regions = self.regions
        cols = ["name", "loss", "target", "mask", "eps_255", *[f"adv_dice_{r}" for r in regions], "success_rate",
                "rog_success_rate"]
        lines = ["## Segmentation under attack", "",
                 f"{int(summary[0]['samples'])} slices; Dice per region over the slices holding it (clean: "
                 + ", ".join(f"{r} {summary[0][f'clean_dice_{r}']:.3f}" for r in regions) + "). Success: "
                 "IoU(prediction, ground truth) <= 0.5 (untargeted) or IoU(prediction, target) >= 0.45 (targeted) "
                 f"on {regions[0]}; ROG: {regions[0]} Dice under half its clean mean.", "",
                 markdown_table([s for s in summary if s["attack"] != "clean"], cols), ""]
        if medis_rows:
            lines += ["### MedIS: success rate and mean steps per surrogate loss", "",
                      markdown_table(medis_rows, ["target", "mask", "eps_255", "loss", "success_rate", "mean_steps",
                                                 "clean_success"]),
                      ""]
        lines += [f"![{p.stem}](figures/{p.name})" for p in self.figures]
        return "\n".join(lines) + "\n"


def _columns(rows: Sequence[Mapping[str, Any]]) -> dict[str, list[Any]]:
    keys = rows[0].keys() if rows else []
    return {k: [r[k] for r in rows] for k in keys}


def _mean_steps(steps: Sequence[float]) -> float:
    ok = [v for v in steps if v >= 0]
    return float(np.mean(ok)) if ok else float("nan")
