"""Stage 3 over several classifiers: each model attacked white-box on one grid, and the adversarial images crafted
on each surrogate scored on each target (transfer).

The models are stage-1 checkpoints (:func:`load_slice_models`), each read with its own recorded settings, so they
may differ in network, modalities, region (task) and training (standard, PGD-AT, TRADES, MART). Every surrogate
runs the whole grid through an :class:`~medadv_monai.engines.AttackGridRunner` with the targets as its
``transfer_targets``: the same cells, seeds and batches as a stage-3 run of that model alone, so a model scored
against itself (the matrix diagonal) gets exactly its white-box numbers.

Outputs in ``output_dir``:

- ``models/<surrogate>/``: that model's stage-3 outputs (summary, ``per_sample.csv`` with the ``to_<target>_``
  columns, figures, report, and ``cells/``, so an interrupted comparison resumes cell by cell);
- ``models.csv``: one row per surrogate and cell, with how the model was trained (``method``, ``train_eps_255``,
  from its checkpoint's ``training`` record): the clean-versus-robust trade-off table;
- ``transfer.csv``: one row per attacked cell, surrogate and target (``whitebox`` when they are the same model):
  the target's clean accuracy, robust accuracy and ASR on the surrogate's adversarial images, with 95% intervals;
- ``figures/tradeoff.png`` (clean and robust accuracy against training eps), ``figures/transfer_<cell>.png`` (the
  robust-accuracy matrix of each attacked cell), ``report.md`` and ``report.html``.
"""

from __future__ import annotations

import math
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from monai.data import Dataset

from medadv_monai.attacks import display_name
from medadv_monai.data import LoadCachedSliced
from medadv_monai.engines.attack_grid import AttackGridRunner
from medadv_monai.engines.grid_cells import CLEAN, AttackCell
from medadv_monai.errors import MedAdvInputError
from medadv_monai.handlers import SliceModel, transfer_prefix
from medadv_monai.losses.robust import AT_METHODS
from medadv_monai.networks import classifier_config, load_frozen, recorded_training
from medadv_monai.utils import save_csv, save_json, save_text
from medadv_monai.utils.distributed import is_main
from medadv_monai.utils.provenance import portable_path, provenance, provenance_markdown
from medadv_monai.visualize import markdown_table, plot_tradeoff, plot_transfer_matrix, write_html

__all__ = ["MODEL_KEYS", "TRAINING_METHODS", "ModelComparison", "load_slice_models"]

#: the keys of a model entry in the config's ``models``
MODEL_KEYS = ("ckpt", "overrides", "config", "training")
#: how a model can have been trained (a checkpoint's ``training`` record, or a model entry's ``training``)
TRAINING_METHODS = ("standard", *AT_METHODS)
_RATES = ("clean_acc", "robust_acc", "asr")


def load_slice_models(models: Mapping[str, Mapping[str, Any]], classifier_config_file: str | os.PathLike,
                      device: torch.device | str = "cpu", split: str = "test",
                      overrides: Mapping[str, Any] | None = None, **ids: Any) -> dict[str, SliceModel]:
    """The stage-1 models of a comparison, each with the slices of ``split`` it reads.

    Args:
        models: name -> ``{ckpt: models/model.pt, overrides: {config ids}, config: train.yaml, training: {method,
            eps}}``; ``ckpt`` is required, ``overrides`` are classifier-config ids that win over the checkpoint's
            recorded settings (a ``network_def`` other than the SliceClassifier, as it was trained), ``config``
            defaults to ``classifier_config_file``, ``training`` says how a checkpoint saved without a training
            record was trained (a record it has wins, and a contradicting ``training`` is an error).
        classifier_config_file: the classifier bundle's ``train.yaml``.
        device: where the networks run.
        split: training, validation or test.
        overrides: classifier-config ids every model gets (stage 3's ``classifier_overrides``, e.g. the
            ``split_fractions`` the models were trained with, which checkpoints do not record); a model's own
            ``overrides`` win over them.
        ids: ids every model's config gets (``dataset_dir``, ``work_dir``), winning over both.

    Raises:
        MedAdvInputError: no models, an entry that is not a mapping, an unknown key, a missing ``ckpt``, a model's
            own ``dataset_dir`` or ``work_dir``, a bad ``training``, or what loading the checkpoint raises; each
            naming the entry (``models#<name>``).
    """
    if not isinstance(models, Mapping) or not models:
        raise MedAdvInputError(f"models: expected a mapping name -> {{ckpt: ..., overrides: ...}} with at least one "
                               f"model, got {models!r}")
    loaded = {}
    for name, spec in models.items():
        if not isinstance(spec, Mapping) or "ckpt" not in spec or set(spec) - set(MODEL_KEYS):
            raise MedAdvInputError(f"models#{name}: expected a mapping with ckpt (a stage-1 models/model.pt) and "
                                   f"optionally {', '.join(MODEL_KEYS[1:])}, got {spec!r}")
        own = dict(spec.get("overrides") or {})
        shared = sorted(set(own) & set(ids))
        if shared:
            raise MedAdvInputError(f"models#{name}#overrides: {shared} are the same for every model (the data "
                                   "must be the same to match slices); set them for the whole run instead")
        ckpt = str(spec["ckpt"])
        try:
            parser = classifier_config(spec.get("config") or classifier_config_file, ckpt,
                                       {**dict(overrides or {}), **own}, **ids)
            network = load_frozen(parser.get_parsed_content("network_def"), ckpt, device)
            entries = parser.get_parsed_content("slice_cache").slices(parser.get_parsed_content("datalist")[split])
            transform = LoadCachedSliced(parser.get_parsed_content("modalities"),
                                         stored=parser.get_parsed_content("all_modalities"))
            training = _training(ckpt, spec.get("training"))
        except MedAdvInputError as e:  # which entry, when several share a config
            raise MedAdvInputError(f"models#{name}: {e}") from e
        loaded[str(name)] = SliceModel(network, Dataset(entries, transform), checkpoint=ckpt, name=str(name),
                                       training=training)
    return loaded


def _training(ckpt: str, given: Any) -> dict[str, Any]:
    """How the model was trained: the checkpoint's record, else ``given`` (``{method, eps}``, for a checkpoint
    saved before stage 1 recorded it), else ``{}``."""
    recorded = recorded_training(ckpt)
    if given is None:
        return recorded
    if not isinstance(given, Mapping) or given.get("method") not in TRAINING_METHODS or (
            given["method"] != "standard" and not isinstance(given.get("eps"), (int, float))):
        raise MedAdvInputError(f"training: expected {{method: one of {list(TRAINING_METHODS)}, eps: the training "
                               f"budget in [0, 1] (not for standard)}}, got {given!r}")
    if recorded and any(recorded.get(k) != given.get(k) for k in given):
        raise MedAdvInputError(f"training: the checkpoint records {recorded}, which {dict(given)} contradicts; "
                               "leave training out for a checkpoint that records it")
    return recorded or dict(given)


class ModelComparison:
    """Attack several models on one grid; score each surrogate's adversarial images on each target.

    Args:
        cells: the grid (:func:`~medadv_monai.engines.expand_grid`); untargeted when there are targets.
        models: name -> :class:`~medadv_monai.handlers.SliceModel` (:func:`load_slice_models`).
        masks: mask name -> transform that adds ``attack_mask``, as for ``AttackGridRunner``.
        surrogates: the models attacked white-box (default: all).
        targets: the models each surrogate's adversarial images are scored on (default: none: a white-box
            comparison, the trade-off table alone).
        device, batch_size, seed, resume, split: as for ``AttackGridRunner`` (every surrogate gets the same).
        output_dir: see the module docstring.
        max_slices: attack only the first N slices of the split (``None``: all).
        log_dir: TensorBoard runs, one folder per surrogate (``None``: none).
        title: the report's title.

    Raises:
        MedAdvInputError: a surrogate or target that is not a model, or no surrogates.
    """

    def __init__(
        self,
        cells: Sequence[AttackCell],
        models: Mapping[str, SliceModel],
        masks: Mapping[str, Any],
        surrogates: Sequence[str] | None = None,
        targets: Sequence[str] = (),
        device: torch.device | str = "cpu",
        output_dir: str | os.PathLike = "compare",
        batch_size: int = 128,
        max_slices: int | None = None,
        seed: int = 0,
        resume: bool = True,
        split: str | None = None,
        log_dir: str | os.PathLike | None = None,
        title: str = "Comparison of BraTS slice classifiers under attack",
    ) -> None:
        surrogates = list(models) if surrogates is None else list(surrogates)
        for role, names in (("surrogates", surrogates), ("targets", list(targets))):
            unknown = [n for n in names if n not in models]
            if unknown:
                raise MedAdvInputError(f"{role}: {unknown} are not in models (defined: {sorted(models)})")
        if not surrogates:
            raise MedAdvInputError("surrogates: expected at least one model to attack")
        self.cells, self.models, self.masks = list(cells), dict(models), dict(masks)
        self.surrogates, self.targets = surrogates, list(targets)
        self.device, self.output_dir, self.batch_size = device, Path(output_dir), batch_size
        self.max_slices, self.seed, self.resume, self.split = max_slices, seed, resume, split
        self.log_dir, self.title = log_dir, title

    def runner(self, name: str) -> AttackGridRunner:
        """The stage-3 grid runner of surrogate ``name``, with the targets as its transfer targets."""
        model = self.models[name]
        data = list(model.dataset.data)[: self.max_slices]
        writer = None
        if self.log_dir is not None and is_main():
            from torch.utils.tensorboard import SummaryWriter

            writer = SummaryWriter(log_dir=str(Path(self.log_dir) / name))
        return AttackGridRunner(
            self.cells, model.network, Dataset(data, model.dataset.transform), self.masks, device=self.device,
            output_dir=self.output_dir / "models" / name, batch_size=self.batch_size, summary_writer=writer,
            resume=self.resume, seed=self.seed, classifier_ckpt=model.checkpoint, split=self.split,
            title=f"Adversarial robustness of model {name!r}",
            transfer_targets={t: self.models[t] for t in self.targets})

    def run(self) -> dict[str, list[dict[str, Any]]]:
        """Run the grid on every surrogate, then write the tables, figures and report; return the rows of
        ``models.csv`` and ``transfer.csv`` (``{"models": [...], "transfer": [...]}``)."""
        summaries = {}
        for i, name in enumerate(self.surrogates):
            if is_main():
                print(f"[compare] model {i + 1}/{len(self.surrogates)}: {name}", flush=True)
            runner = self.runner(name)
            summaries[name] = runner.run()
            if runner.summary_writer is not None:
                runner.summary_writer.close()
        tables = {"models": self.model_rows(summaries), "transfer": self.transfer_rows(summaries)}
        if is_main():
            self.write(tables)
        return tables

    # ------------------------------------------------------------------------------------------ tables
    def model_rows(self, summaries: Mapping[str, Sequence[Mapping[str, Any]]]) -> list[dict[str, Any]]:
        """One row per surrogate and cell: how the model was trained, then the cell's white-box summary."""
        rows = []
        for name, summary in summaries.items():
            training = self.models[name].training
            eps = training.get("eps", 0.0 if training.get("method") == "standard" else float("nan"))
            head = {"model": name, "method": training.get("method", "unknown"), "train_eps_255": round(eps * 255, 4)}
            rows += [{**head, **{k: v for k, v in s.items() if not k.startswith("to_")}} for s in summary]
        return rows

    def transfer_rows(self, summaries: Mapping[str, Sequence[Mapping[str, Any]]]) -> list[dict[str, Any]]:
        """One row per attacked cell, surrogate and target: the target's summary on the surrogate's images."""
        rows = []
        for name, summary in summaries.items():
            for s in summary:
                if s["attack"] == CLEAN:
                    continue
                for target in self.targets:
                    p = transfer_prefix(target)
                    rates = {k: s[p + k] for r in _RATES for k in (r, f"{r}_lo", f"{r}_hi")}
                    rows.append({"cell": s["cell"], "attack": s["attack"], "eps_255": s["eps_255"], "mask": s["mask"],
                                 "surrogate": name, "target": target, "whitebox": name == target, "n": s[p + "n"],
                                 "n_asr": s[p + "n_asr"], **rates, "mean_linf": s[p + "mean_linf"]})
        return rows

    # ------------------------------------------------------------------------------------------ outputs
    def write(self, tables: Mapping[str, list[dict[str, Any]]]) -> Path:
        """``models.csv``, ``transfer.csv``, the figures and the report."""
        out = self.output_dir
        save_csv(tables["models"], out / "models.csv")
        save_json(tables, out / "comparison.json")
        if tables["transfer"]:
            save_csv(tables["transfer"], out / "transfer.csv")
        rel = lambda p: os.path.relpath(p, out)  # noqa: E731
        lines = [f"# {self.title}", "",
                 f"{len(self.surrogates)} models attacked on {len(self.cells)} grid cells"
                 f"{f' (the first {self.max_slices} slices' if self.max_slices else ' (all slices'}"
                 f"{f' of the {self.split} split)' if self.split else ')'}; each model's own report: "
                 + ", ".join(f"[{n}]({rel(out / 'models' / n / 'report.md')})" for n in self.surrogates) + ".", ""]
        lines += self._models_section(tables["models"], out)
        lines += self._transfer_section(tables["transfer"], out, rel)
        checkpoints = {n: portable_path(m.checkpoint, out) for n, m in self.models.items()
                       if n in self.surrogates + self.targets and m.checkpoint}
        lines.append(provenance_markdown(provenance(out, seed=self.seed, split=self.split,
                                                    batch_size=self.batch_size, models=checkpoints)))
        text = "\n".join(lines)
        write_html(text, out / "report.html", title=self.title)
        return save_text(text, out / "report.md")

    def _models_section(self, rows: list[dict[str, Any]], out: Path) -> list[str]:
        attacked = [c for c in self.cells if c.attack != CLEAN and not c.targeted]
        clean = {r["model"]: r for r in rows if r["attack"] == CLEAN and r["mask"] == "none"}
        table = []
        for name in self.surrogates:
            mine = {r["cell"]: r for r in rows if r["model"] == name}
            first = next(iter(mine.values()))
            row = {"model": name, "method": first["method"], "train_eps_255": first["train_eps_255"],
                   **{k: clean.get(name, first)[k] for k in ("clean_acc", "clean_acc_lo", "clean_acc_hi")}}
            for c in attacked:
                row.update({f"{c.label}{end}": mine[c.label][f"robust_acc{end}"] for end in ("", "_lo", "_hi")})
            table.append(row)
        headers = ["model", "training", "training eps (/255)", "clean accuracy",
                   *(f"{display_name(c.name)} eps {c.eps * 255:.4g}" + (f" ({c.mask})" if c.mask != "none" else "")
                     for c in attacked)]
        lines = ["## Models: clean against robust accuracy", "",
                 "Robust accuracy of each model under each untargeted white-box attack (rates with their 95% Wilson "
                 "interval; training method and eps as recorded in the model's checkpoint or given in its `training` "
                 "entry, eps 0 for standard training).", "",
                 markdown_table(table, ["model", "method", "train_eps_255", "clean_acc", *(c.label for c in attacked)],
                                headers), ""]
        if attacked:
            figure = plot_tradeoff(rows, out / "figures" / "tradeoff.png")
            lines += [f"![tradeoff]({os.path.relpath(figure, out)})", ""]
        return lines

    def _transfer_section(self, rows: list[dict[str, Any]], out: Path, rel: Any) -> list[str]:
        if not rows:
            return []
        lines = ["## Transfer", "",
                 "Robust accuracy of each target (columns) on the adversarial images crafted on each surrogate (rows), "
                 "ASR in brackets (flips among the target's clean-correct attackable slices); the diagonal is the "
                 "white-box attack. A target that reads other modalities gets the surrogate's perturbation added to "
                 "its own channels; each target is judged by its own labels.", ""]
        for cell in dict.fromkeys(r["cell"] for r in rows):
            mine = [r for r in rows if r["cell"] == cell]
            first = mine[0]
            title = f"{display_name(first['attack'])}, eps {first['eps_255']:g}/255, mask {first['mask']}"
            value = {(r["surrogate"], r["target"]): r for r in mine}
            table = [{"surrogate": s, **{t: f"{_rate(value[s, t]['robust_acc'])} ({_rate(value[s, t]['asr'])})"
                                         for t in self.targets}} for s in self.surrogates]
            matrix = [[value[s, t]["robust_acc"] for t in self.targets] for s in self.surrogates]
            figure = plot_transfer_matrix(matrix, self.surrogates, self.targets,
                                          out / "figures" / f"transfer_{cell}.png", title=title)
            lines += [f"### {title}", "", markdown_table(table, ["surrogate", *self.targets]), "",
                      f"![transfer {cell}]({rel(figure)})", ""]
        return lines


def _rate(value: float) -> str:
    return "–" if math.isnan(value) else f"{value:.3f}"
