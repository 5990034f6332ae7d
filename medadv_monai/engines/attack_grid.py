"""Walk an attack grid: one :class:`~medadv_monai.engines.AttackEvaluator` run per cell, then the
tables, figures and report of stage 3.

Outputs in ``output_dir``:

- ``per_sample.csv``: one row per cell and slice (outcomes and perturbation metrics);
- ``summary.json`` / ``summary.csv``: one row per cell (clean and robust accuracy, ASR, mean metrics);
- ``coverage.csv``: ASR by coverage bin for every attacked cell with a mask;
- ``figures/``: robust accuracy against eps, ASR against coverage, image grids, Grad-CAM; for MRI-physics cells
  (:func:`~medadv_monai.attacks.budget_name` not ``linf``) robust accuracy against their own eps beside their random
  baselines (``physics_robust_accuracy.png``) and the realised fields (``fields_<cell>.png``);
- ``report.md`` and ``report.html``; ``cells/<cell>.json``: each finished cell, so an interrupted run resumes.

A cell file is stamped (:mod:`medadv_monai.utils.fingerprint`) with what made it: the cell, the classifier (digests
of its checkpoint file and weights), the slices, the slice and mask transforms, the seed, the batch size and any
transfer targets. A rerun reuses a cell only when its stamp matches; any other cell is recomputed (the log line says
why), so one summary never mixes cells of different runs.

Random draws depend only on the seed and the data: a mask transform (random patch anchors) is seeded per slice from
(seed, mask, slice index), torch's generator per batch from (seed, batch index) (batches: ``batch_size``
consecutive slices).

Under ``torch.distributed`` (``torchrun``, ``configs/multi_gpu_evaluate.yaml``) the batches of every cell are dealt
whole to the ranks (batch ``b`` to rank ``b % world_size``); each rank attacks its batches, the per-sample rows are
gathered and put back in slice order, and the summary is computed from them (:func:`summarize_rows`, as in a
single-process run), so the outputs are those of a single process. Rank 0 alone decides which cells are reused
(and tells the others), writes ``cells/`` and every other output, prints and logs.
"""

from __future__ import annotations

import logging
import math
import os
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from monai.data import DataLoader, Dataset
from monai.transforms import Compose

from medadv_monai.attacks import display_name, is_random_baseline
from medadv_monai.engines.attack_evaluator import AttackEvaluator
from medadv_monai.engines.grid_cells import CLEAN, AttackCell
from medadv_monai.engines.grid_report import cell_line, eps_text, is_physics, physics_section, rank_masks, summary_table
from medadv_monai.engines.grid_shards import SliceSeeded, batch_indices, derived_seed, gather_rows, shard
from medadv_monai.errors import MedAdvInputError
from medadv_monai.handlers import AttackImageGrid, PerSampleRecorder, TransferScorer, model_description
from medadv_monai.handlers.transfer import SliceModel, transfer_summaries
from medadv_monai.metrics import SUMMARY_COLUMNS, coverage_bins, summarize_columns
from medadv_monai.utils import save_csv, save_json, save_text
from medadv_monai.utils.checks import check_bool
from medadv_monai.utils.distributed import broadcast, is_main
from medadv_monai.utils.fingerprint import (
    describe,
    file_digest,
    fingerprint,
    reusable,
    settings_only,
    write_stamp,
)
from medadv_monai.utils.logs import DETAIL_LOGGER
from medadv_monai.utils.provenance import portable_path, provenance, provenance_markdown
from medadv_monai.visualize import (
    attack_examples,
    eps_table,
    gradcam_figure,
    physics_examples,
    plot_asr_by_coverage,
    plot_physics_accuracy,
    plot_ranking,
    plot_robust_accuracy,
    write_html,
)

__all__ = ["DEFAULT_COVERAGE_EDGES", "AttackGridRunner", "summarize_rows"]

DEFAULT_COVERAGE_EDGES = (0.0, 0.05, 0.1, 0.2, 0.3, 0.4, 0.5, 0.75, 1.0)
CELL_FORMAT = 4  # raise when a cell file's layout or meaning changes: older cells are then recomputed (4: budget,
# kspace_energy, field_lo, field_hi)


class AttackGridRunner:
    """Run every cell of a grid on the slices of one split and write the stage-3 outputs.

    Args:
        cells: the grid (:func:`~medadv_monai.engines.expand_grid`).
        network: the classifier under attack (used in eval mode, never trained).
        dataset: the slices to attack: a MONAI ``Dataset`` whose ``data`` are cached-slice entries
            (``SliceCache.slices``) and whose ``transform`` loads them (``LoadCachedSliced``).
        masks: mask name -> transform that adds ``attack_mask`` (``AttackMaskd``); each cell's mask name picks one.
        device: where to run.
        output_dir: where to write (see the module docstring).
        batch_size: slices per batch.
        summary_writer: TensorBoard writer for scalars (robust accuracy and ASR against eps) and image grids.
        image_samples: samples per image grid.
        grid_cells: which cells get a PNG grid in the report: ``"max_eps"`` (the largest budget of each attack and
            mask) or ``"all"``.
        gradcam_layer: layer of the network for the Grad-CAM figure (``None``: no figure).
        coverage_edges: bin edges of ASR by coverage.
        resume: reuse finished cells from ``output_dir/cells`` whose stamp matches this run (booleans, 0/1 and the
            strings true/false/yes/no are accepted, as ``--resume false`` arrives).
        rank_masks: also rank the masks by ASR and pool ASR by coverage over all masks (the patch sweep):
            ``ranking.csv``, ``coverage_pooled.csv``, ``figures/mask_ranking.png``.
        title: the report's title.
        seed: seeds the mask transforms (random patch anchors, per slice) and the attacks' random starts (per
            batch); see the module docstring.
        classifier_ckpt: the file the classifier's weights came from; its digest goes into every cell's stamp,
            beside the digest of the network's weights.
        split: name of the split the slices come from, for messages.
        transfer_targets: name -> :class:`~medadv_monai.handlers.SliceModel` that each attacked cell's images are
            also scored on (:class:`~medadv_monai.handlers.TransferScorer`): columns ``to_<name>_...``, in stamps.

    Raises:
        MedAdvInputError: masks the grid uses but ``masks`` lacks, no slices to attack, ``resume`` not a boolean,
            transfer targets with a targeted cell.
    """

    def __init__(
        self,
        cells: Sequence[AttackCell],
        network: torch.nn.Module,
        dataset: Dataset,
        masks: Mapping[str, Callable],
        device: torch.device | str = "cpu",
        output_dir: str | os.PathLike = "eval",
        batch_size: int = 128,
        summary_writer: Any = None,
        image_samples: int = 4,
        grid_cells: str = "max_eps",
        gradcam_layer: str | None = None,
        coverage_edges: Sequence[float] = DEFAULT_COVERAGE_EDGES,
        resume: bool = True,
        rank_masks: bool = False,
        title: str = "Adversarial robustness report",
        seed: int = 0,
        classifier_ckpt: str | os.PathLike | None = None,
        split: str | None = None,
        transfer_targets: Mapping[str, SliceModel] | None = None,
    ) -> None:
        unknown = sorted({c.mask for c in cells} - set(masks))
        if unknown:
            raise MedAdvInputError(f"grid cells use masks {unknown} that the config's `masks` does not define "
                             f"(defined: {sorted(masks)})")
        if len(dataset) == 0:
            where = f"split {split!r}" if split else "the dataset"
            raise MedAdvInputError(f"{where} has 0 slices: there is nothing to attack; choose a split that has slices "
                                   "(split: training, validation or test) or give the dataset more subjects")
        self.cells, self.network, self.dataset, self.masks = list(cells), network, dataset, dict(masks)
        self.device = torch.device(device)
        self.output_dir = Path(output_dir)
        self.batch_size, self.summary_writer = batch_size, summary_writer
        self.image_samples, self.grid_cells, self.gradcam_layer = image_samples, grid_cells, gradcam_layer
        self.coverage_edges, self.title, self.seed = tuple(coverage_edges), title, seed
        self.resume = check_bool(resume, "resume")
        self.rank_masks, self.classifier_ckpt, self.split = rank_masks, classifier_ckpt, split
        self.transfer_targets = dict(transfer_targets or {})
        if self.transfer_targets and any(c.targeted for c in self.cells):
            raise MedAdvInputError("transfer targets score untargeted attacks only (a target of another task has "
                                   "other classes to aim at); set targeted: [false]")
        self.figures: dict[str, list[Path]] = {"grids": [], "fields": []}

    # ------------------------------------------------------------------------------------------ running
    def batches(self) -> list[list[int]]:
        """The batches of every cell: ``batch_size`` consecutive slice indices each, in slice order."""
        return batch_indices(len(self.dataset.data), self.batch_size)

    def loader(self, mask: str, batches: Sequence[int] | None = None) -> DataLoader:
        """The data loader of one mask: the dataset's slices through its transform, then the mask's (seeded per
        slice from (seed, mask, slice index)), in the :meth:`batches` given by index (default: all)."""
        transform = Compose([self.dataset.transform, self.masks[mask]])
        dataset = SliceSeeded(self.dataset.data, transform, seeds=lambda i: derived_seed(self.seed, "mask", mask, i))
        every = self.batches()
        chosen = [every[b] for b in (range(len(every)) if batches is None else batches)]
        return DataLoader(dataset, batch_sampler=chosen, num_workers=0)

    def batch_seed(self, batch: int) -> int:
        """The seed of torch's generator (PGD's random start) for batch ``batch``, the same in every cell."""
        return derived_seed(self.seed, "batch", batch)

    def descriptions(self) -> dict[str, dict[str, Any]]:
        """Each cell's stamp description (cell label -> description), computed before any cell runs (running a
        cell changes the mask transforms' random state)."""
        data = list(self.dataset.data)
        # the network may also be given as an id, without the checkpoint file
        common = {"format": CELL_FORMAT, "classifier": model_description(self.network, self.classifier_ckpt),
                  "seed": self.seed, "batch_size": self.batch_size,
                  "slices": {"count": len(data), "digest": fingerprint(data)[:16]},
                  "preprocessing": settings_only(describe(self.dataset.transform))}
        targets = {name: settings_only(t.description()) for name, t in self.transfer_targets.items()}
        masks = {name: settings_only(describe(self.masks[name])) for name in {c.mask for c in self.cells}}
        return {c.label: {**common, "cell": c.description(), "mask_transform": masks[c.mask],
                          **({"transfer_targets": targets} if self._transfers(c) else {})} for c in self.cells}

    def _transfers(self, cell: AttackCell) -> bool:  # attacked cells are scored on the transfer targets
        return bool(self.transfer_targets) and cell.attack != CLEAN

    def run_cell(self, cell: AttackCell, description: Mapping[str, Any] | None = None) -> dict[str, Any]:
        """Run one cell; return ``{"summary", "rows"}`` and save it under ``cells/``, stamped with ``description``
        (default: :meth:`descriptions`).

        Under ``torch.distributed`` every rank must call it: each attacks its :meth:`shard`, the rows are gathered
        (every rank returns them all, in slice order) and rank 0 alone saves the cell, logs it and keeps its image
        grid (of batch 0, which is rank 0's)."""
        main, mine = is_main(), shard(len(self.batches()))
        recorder = PerSampleRecorder(columns=cell.row())
        grid = AttackImageGrid(max_samples=self.image_samples, eps=cell.eps if cell.budget == "linf" else None)
        handlers = [TransferScorer(self.transfer_targets)] if self._transfers(cell) else []  # before the recorder
        handlers += [recorder, grid] if main else [recorder]
        if mine:  # a rank can have none (more ranks than batches)
            AttackEvaluator(device=self.device, val_data_loader=self.loader(cell.mask, mine), network=self.network,
                            inferer=cell.inferer(), batch_seeds=[self.batch_seed(b) for b in mine],
                            val_handlers=handlers).run()
        rows = gather_rows(mine, recorder.rows, [len(b) for b in self.batches()])
        summary = {**cell.row(), **summarize_rows(rows, targeted=cell.targeted),
                   **transfer_summaries(rows, list(self.transfer_targets) if self._transfers(cell) else [])}
        result = {"summary": summary, "rows": rows}
        if main:
            description = self.descriptions()[cell.label] if description is None else description
            write_stamp(self._cell_file(cell), description, **result)
            logging.getLogger(DETAIL_LOGGER).info("%s: %s", cell.label, result["summary"])
            self._log(cell, result["summary"], grid)
        return result

    def _cell_file(self, cell: AttackCell) -> Path:
        return self.output_dir / "cells" / f"{cell.label}.json"

    def _grid_file(self, cell: AttackCell, kind: str = "grid") -> Path:
        return self.output_dir / "figures" / f"{kind}_{cell.label}.png"

    def _wants_grid(self, cell: AttackCell) -> bool:
        if cell.attack == CLEAN:
            return False
        if self.grid_cells == "all":
            return True
        top = max(c.eps for c in self.cells if c.name == cell.name and c.mask == cell.mask)
        return cell.eps == top

    def _log_scalars(self, cell: AttackCell, summary: Mapping[str, Any]) -> None:
        if self.summary_writer is None or cell.attack == CLEAN:
            return
        tag = f"{cell.mask}/{cell.name}" + ("_targeted" if cell.targeted else "")
        step = int(round(cell.eps * (255 if cell.budget == "linf" else 1000)))  # a physics eps in thousandths
        for key in ("robust_acc", "asr", "targeted_success", "mean_ssim"):
            if isinstance(summary.get(key), (int, float)) and not math.isnan(summary[key]):
                self.summary_writer.add_scalar(f"{key}/{tag}", summary[key], step)

    def _log(self, cell: AttackCell, summary: Mapping[str, Any], grid: AttackImageGrid) -> None:
        if grid.grid is None or cell.attack == CLEAN:
            return
        self._log_scalars(cell, summary)
        if self.summary_writer is not None:
            self.summary_writer.add_image(f"grid/{cell.label}", grid.grid, 0, dataformats="HW")
        if self._wants_grid(cell):
            title = f"{display_name(cell.name)}{' targeted' if cell.targeted else ''}, " \
                    f"{eps_text(cell.budget, cell.eps)}, mask {cell.mask}"
            physics = cell.budget != "linf"
            self.figures["grids"].append(attack_examples(grid.samples, self._grid_file(cell),
                                                         eps=None if physics else cell.eps, title=title))
            if physics:
                self.figures["fields"].append(physics_examples(grid.samples, self._grid_file(cell, "fields"),
                                                               cell.budget, cell.eps, title=title))

    def _reuse(self, cell: AttackCell, description: Mapping[str, Any]) -> tuple[dict[str, Any] | None, str]:
        """The finished cell if its file's stamp matches ``description``, else ``None`` and why not."""
        if not self.resume:
            return None, ""
        return reusable(self._cell_file(cell), description, {"summary": dict, "rows": list})

    def run(self) -> list[dict[str, Any]]:
        """Run every cell, reusing a finished one whose stamp matches, then write the tables, figures and report;
        return the summary rows (on every rank under ``torch.distributed``; rank 0 alone reads and writes files)."""
        self.network.eval()
        main = is_main()
        descriptions = self.descriptions() if main else {}
        found = [self._reuse(cell, descriptions[cell.label]) for cell in self.cells] if main else []
        # rank 0 decides which cells are reused: the other ranks get their summaries, and run the same cells
        reused_summaries = broadcast([None if r is None else r["summary"] for r, _ in found])
        results: list[dict[str, Any]] = []
        for i, cell in enumerate(self.cells):
            if reused_summaries[i] is not None:
                results.append(found[i][0] if main else {"summary": reused_summaries[i], "rows": []})
                if main:
                    self._log_scalars(cell, reused_summaries[i])  # this run's TensorBoard shows every cell
                    for kind, prefix in (("grids", "grid"), ("fields", "fields")):  # the report shows those kept
                        fig = self._grid_file(cell, prefix)
                        if self._wants_grid(cell) and fig.is_file():
                            self.figures[kind].append(fig)
                continue
            if main and found[i][1]:
                print(f"[attack grid] {i + 1}/{len(self.cells)} {cell.label} (recomputing: {found[i][1]})", flush=True)
            start = time.perf_counter()
            result = self.run_cell(cell, descriptions.get(cell.label))
            results.append(result if main else {"summary": result["summary"], "rows": []})  # rows: rank 0's
            if main:
                print(f"[attack grid] {i + 1}/{len(self.cells)} {cell_line(result['summary'])} "
                      f"({time.perf_counter() - start:.1f} s)", flush=True)
        reused = sum(s is not None for s in reused_summaries)
        if main and reused:
            print(f"attack grid: reused {reused} finished cells of {self.output_dir / 'cells'}", flush=True)
        summary = [r["summary"] for r in results]
        if main:
            self.write(summary, [row for r in results for row in r["rows"]])
        return summary

    # ------------------------------------------------------------------------------------------ outputs
    def coverage_table(self, rows: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
        """ASR by coverage bin for each attacked cell whose mask is not ``none``."""
        table = []
        for cell in self.cells:
            if cell.attack == CLEAN or cell.mask == "none":
                continue
            mine = [r for r in rows if r["cell"] == cell.label]
            bins = coverage_bins([r["coverage"] for r in mine], [r["success"] for r in mine],
                                 [r["clean_correct"] and r["attackable"] for r in mine], self.coverage_edges)
            table += [{**cell.row(), **b} for b in bins]
        return table

    def write(self, summary: list[dict[str, Any]], rows: list[dict[str, Any]]) -> None:
        """Write the tables, figures and report from finished cells."""
        out = self.output_dir
        save_csv(rows, out / "per_sample.csv")
        save_json(summary, out / "summary.json")
        save_csv(summary, out / "summary.csv", columns=[c for c in SUMMARY_COLUMNS if any(c in row for row in summary)])
        coverage = self.coverage_table(rows)
        save_csv(coverage, out / "coverage.csv")
        figures: dict[str, Path | None] = {}
        linf = [s for s in summary if not is_physics(s)]  # a physics eps is not on the 1/255 axis: its own plot
        if len({c.eps for c in self.cells if c.budget == "linf"}) > 1:
            figures["robust_accuracy"] = plot_robust_accuracy(linf, out / "figures" / "robust_accuracy.png")
        if any(is_physics(s) and not s["targeted"] for s in summary):
            baselines = {c.name for c in self.cells if c.attack != CLEAN and is_random_baseline(c.attack)}
            figures["physics_robust_accuracy"] = plot_physics_accuracy(
                summary, out / "figures" / "physics_robust_accuracy.png", random_rows=baselines)
        curves: dict[str, dict[str, list[dict[str, Any]]]] = {}
        for cell in self.cells:
            if cell.attack != CLEAN and cell.mask != "none" and self._wants_grid(cell):
                series = f"{display_name(cell.name)} {eps_text(cell.budget, cell.eps)}" + (
                    " targeted" if cell.targeted else "")
                curves.setdefault(f"mask: {cell.mask}", {})[series] = [c for c in coverage if c["cell"] == cell.label]
        ranking = None
        if self.rank_masks:
            ranking, pooled = self.ranking(summary, rows)
            save_csv(ranking, out / "ranking.csv")
            save_csv(pooled, out / "coverage_pooled.csv")
            text = lambda r: eps_text(r.get("budget", "linf"), r["eps"])  # noqa: E731
            curves = {"all masks pooled": {f"{display_name(r['attack'])} {text(r)}": [
                p for p in pooled if p["attack"] == r["attack"] and p["eps_255"] == r["eps_255"]] for r in ranking}}
            labels = [f"{r['mask']} ({display_name(r['attack'])} {text(r)})" for r in ranking]
            figures["mask_ranking"] = plot_ranking(labels, [r["asr"] for r in ranking],
                                                   out / "figures" / "mask_ranking.png")
        figures["asr_by_coverage"] = plot_asr_by_coverage(curves, out / "figures" / "asr_by_coverage.png")
        if self.gradcam_layer:
            figures["gradcam"] = self.gradcam(out / "figures" / "gradcam.png")
        self.report(summary, figures, ranking)

    def ranking(self, summary: Sequence[Mapping[str, Any]], rows: Sequence[Mapping[str, Any]]
                ) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
        """:func:`~medadv_monai.engines.grid_report.rank_masks` with this grid's coverage edges."""
        return rank_masks(summary, rows, self.coverage_edges)

    def gradcam(self, path: Path) -> Path | None:
        """Grad-CAM of clean and adversarial versions of a few tumour slices, under the strongest untargeted
        attack without mask, L-inf before an MRI-physics one (or the first attacked cell)."""
        attacked = [c for c in self.cells if c.attack != CLEAN and not c.targeted]
        if not attacked:
            return None
        cell = max(attacked, key=lambda c: (c.mask == "none", c.budget == "linf", c.eps, c.name == "pgd"))
        batch = next(iter(self.loader(cell.mask, [0])))
        pos = torch.nonzero(batch["label"].reshape(-1) > 0).reshape(-1)[: self.image_samples]
        order = pos if len(pos) else torch.arange(min(self.image_samples, len(batch["label"])))
        sub = {k: (v[order] if isinstance(v, torch.Tensor) else [v[i] for i in order]) for k, v in batch.items()}
        evaluator = AttackEvaluator(device=self.device, val_data_loader=[sub], network=self.network,
                                    inferer=cell.inferer(), batch_seeds=[self.batch_seed(0)])
        evaluator.run()
        out = evaluator.state.output
        titles = [f"{s} z={int(z)}" for s, z in zip(sub["subject"], sub["slice_index"])]
        return gradcam_figure(self.network, self.gradcam_layer, out["image"], out["adv"], path, titles)

    def report(self, summary: list[dict[str, Any]], figures: Mapping[str, Path | None],
               ranking: list[dict[str, Any]] | None = None) -> Path:
        """``report.md`` (and ``report.html``): the table, the plots, the grids and Grad-CAM."""
        rel = lambda p: os.path.relpath(p, self.output_dir)  # noqa: E731
        targeted = any(s["targeted"] for s in summary)
        cols = ["attack", "eps_255", "mask", *(["targeted"] if targeted else []), "n", "clean_acc", "robust_acc",
                "n_asr", "asr", "asr_all", *(["n_targeted", "targeted_success"] if targeted else []), "mean_linf",
                "mean_l2", "mean_ssim", "mean_coverage"]
        lines = [f"# {self.title}", "",
                 f"{len(self.dataset)} slices{f' of the {self.split} split' if self.split else ''}, {len(summary)} "
                 "grid cells. Rates are given with their 95% Wilson interval in brackets; `n` counts the slices "
                 "(clean and robust accuracy), `n_asr` the clean-correct attackable slices (non-empty mask) that ASR "
                 "divides by; `asr_all` divides by every clean-correct slice. L-inf eps in units of 1/255; the eps of "
                 "an MRI-physics attack (bias field, k-space) as it is, with its budget.", "",
                 summary_table(summary, cols), ""]
        linf = [s for s in summary if not is_physics(s)]
        if len({s["eps_255"] for s in linf if s["attack"] != CLEAN}) > 1:
            lines += ["## Robust accuracy by attack and eps", "",
                      "Untargeted cells; `grad evals` and `queries` are each attack's budget of model evaluations per "
                      "slice at the largest eps (forward and backward passes; forward passes alone), an upper bound "
                      "(`medadv_monai.attacks.attack_cost`). "
                      "AutoAttack-style is this project's ensemble (APGD-CE, APGD-T for 4 or more classes, then "
                      "Square, each on the slices still robust), not the standard AutoAttack.", "",
                      eps_table(linf), ""]
        lines += physics_section(summary, self.cells)
        if ranking:
            lines += ["## Masks ranked by attack success", "",
                      summary_table(ranking, ["rank", "mask", "attack", "eps_255", "n_asr", "asr", "mean_coverage",
                                              "mean_area", "mean_ssim"]), ""]
        for name, title in (("mask_ranking", "Ranking"), ("robust_accuracy", "Robust accuracy against eps"),
                            ("physics_robust_accuracy", "MRI-physics attacks: robust accuracy against their eps "
                             "(random baselines dashed)"),
                            ("asr_by_coverage", "ASR against tumour coverage"), ("gradcam", "Grad-CAM")):
            if figures.get(name):
                lines += [f"## {title}", "", f"![{name}]({rel(figures[name])})", ""]
        if self.figures["grids"]:
            lines += ["## Examples (clean | adversarial | |difference|/eps | mask)", ""]
            lines += [f"![grid]({rel(p)})" for p in self.figures["grids"]] + [""]
        if self.figures["fields"]:
            lines += ["## MRI-physics changes (clean | adversarial | field x'/x or log10 |k-space change| | "
                      "|difference|)", ""]
            lines += [f"![fields]({rel(p)})" for p in self.figures["fields"]] + [""]
        ckpt, checkpoint = self.classifier_ckpt, "given as a network"
        if ckpt and Path(ckpt).is_file():
            checkpoint = f"{portable_path(ckpt, self.output_dir)} (sha256 {file_digest(ckpt).split(':')[-1][:16]})"
        lines.append(provenance_markdown(provenance(self.output_dir, seed=self.seed, split=self.split,
                                                    batch_size=self.batch_size, classifier_checkpoint=checkpoint)))
        text = "\n".join(lines)
        path = save_text(text, self.output_dir / "report.md")
        write_html(text, self.output_dir / "report.html", title=self.title)
        return path


def summarize_rows(rows: Sequence[Mapping[str, Any]], targeted: bool = False) -> dict[str, float]:
    """:func:`~medadv_monai.metrics.summarize_columns` of per-sample rows (a :class:`~medadv_monai.handlers.
    PerSampleRecorder`'s): a cell's summary, computed from its rows alone, so the rows gathered from several ranks
    summarise as one process's do."""
    columns = {k: [row[k] for row in rows] for k in (rows[0] if rows else ())}
    return summarize_columns(columns, targeted=targeted)
