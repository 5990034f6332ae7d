"""``medadv demo``: every stage on synthetic BraTS (or a real BraTS folder), ending in one report.

The stages run through MONAI's bundle machinery (``monai.bundle.run``, what ``python -m monai.bundle run`` calls)
on the repository's bundles, with their outputs redirected under ``out``:

==============  ==========================================================================================
step            what
==============  ==========================================================================================
synthetic_data  ``medadv synth --kind anatomical`` into ``out/data/synthetic_brats`` (skipped with ``dataset_dir``)
slice_cache     datalist, slice cache and statistics through the classifier bundle's config
classifier      stage 1 training, then evaluation on the test split (``out/classifier``)
advgan          stage 2 AdvGAN training against the classifier (``out/advgan``)
attack_grid     stage 3: FGSM/BIM/PGD/MI-FGSM x eps x masks, plus the AdvGAN row (``out/attack_eval``)
patch_sweep     stage 3's patch sweep, small (``out/attack_eval/patch_sweep``)
segmentation    the segmentation bundle: training, evaluation and its attack grid (``out/segmentation``)
report          ``out/report.md`` and ``out/report.html``
==============  ==========================================================================================

Each finished step leaves a marker in ``out/steps``; a second run reuses it unless ``redo`` is set.
"""

from __future__ import annotations

import json
import math
import os
import shlex
import shutil
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

from medadv_monai.utils import save_json, save_text
from medadv_monai.utils.provenance import portable_path, provenance, provenance_markdown

__all__ = ["DemoSettings", "run_demo"]


class DemoSettings:
    """What the demo runs; the defaults fit in five minutes on 2 CPU cores (README, "Headline results").

    Every stage runs as it does on its own; what is smaller is the size: 24 subjects instead of the generator's 40,
    12 classifier epochs instead of 20, 5 AdvGAN epochs instead of 10, 128 attacked test slices.

    Attributes:
        subjects, shape: anatomical synthetic dataset size (``None`` shape: the generator's, 96x96x64).
        image_size: slice size for every stage (``None``: the classifier bundle's, 64x64).
        classifier: overrides of the classifier bundle (default ``{"train#trainer#max_epochs": 12}``).
        advgan: overrides of the AdvGAN bundle (default ``{"train#trainer#max_epochs": 5}``).
        attack_grid: overrides of the attack-evaluation bundle's grid.
        patch_sweep: overrides of its patch sweep.
        segmentation: overrides of the segmentation bundle (default ``{"train#trainer#max_epochs": 15}``).
        seg_attacks: overrides of its attack grid (default: PGD on BCE and on soft Dice at 4/255 and 8/255,
            untargeted and erase, no mask, and MedIS at 8/255).
    """

    def __init__(
        self,
        subjects: int | None = 24,
        shape: Sequence[int] | None = None,
        image_size: Sequence[int] | None = None,
        classifier: Mapping[str, Any] | None = None,
        advgan: Mapping[str, Any] | None = None,
        attack_grid: Mapping[str, Any] | None = None,
        patch_sweep: Mapping[str, Any] | None = None,
        segmentation: Mapping[str, Any] | None = None,
        seg_attacks: Mapping[str, Any] | None = None,
    ) -> None:
        self.subjects, self.shape, self.image_size = subjects, shape, image_size
        self.classifier = {"train#trainer#max_epochs": 12, **(classifier or {})}
        self.advgan = {"train#trainer#max_epochs": 5, **(advgan or {})}
        self.attack_grid = {"max_slices": 128, **(attack_grid or {})}
        self.patch_sweep = {"sweep_sizes": [0.1, 0.2, 0.3], "max_slices": 128, **(patch_sweep or {})}
        self.segmentation = {"train#trainer#max_epochs": 15, **(segmentation or {})}
        self.seg_attacks = {"attack_masks": ["none"], **(seg_attacks or {})}


class _Steps:
    """Run named steps once: a step whose marker exists is reused unless ``redo``; its outputs are cleared
    before it runs again. A step's marker keeps the bundle runs it made (:meth:`bundle_run`), for the report."""

    def __init__(self, out: Path, redo: bool, verbose: bool) -> None:
        self.out, self.redo, self.verbose = out, redo, verbose
        self.log: list[dict[str, Any]] = []
        self._runs: list[dict[str, Any]] = []

    def bundle_run(self, bundle: str, configs: Sequence[str], **overrides: Any) -> None:
        """``python -m monai.bundle run`` of one of the repository's bundles, in this process; the run is
        recorded with its paths relative to the output folder."""
        from monai.bundle import run

        from medadv_monai.bundle import bundle_path

        root = bundle_path(bundle)
        self._runs.append({"bundle": bundle, "configs": list(configs),
                           "overrides": {k: _portable(v, self.out) for k, v in overrides.items()}})
        run(
            config_file=[str(root / "configs" / c) for c in configs],
            meta_file=str(root / "configs" / "metadata.json"),
            logging_file=str(root / "configs" / "logging.conf") if self.verbose else False,
            bundle_root=str(root),
            **overrides,
        )

    def __call__(self, name: str, fn: Callable[[], Any], clears: Sequence[Path] = ()) -> Any:
        marker = self.out / "steps" / f"{name}.json"
        if marker.is_file() and not self.redo:
            print(f"[demo] {name}: done before, reusing it ({marker})", flush=True)
            record = json.loads(marker.read_text())
        else:
            for path in clears:
                shutil.rmtree(path, ignore_errors=True)
            print(f"[demo] {name} ...", flush=True)
            start = time.perf_counter()
            self._runs = []
            result = fn()
            record = {"step": name, "seconds": round(time.perf_counter() - start, 1), "result": result,
                      "runs": self._runs}
            save_json(record, marker)
            print(f"[demo] {name}: done in {record['seconds']} s", flush=True)
        self.log.append(record)
        return record["result"]


def run_demo(
    out: str | Path = "demo_out",
    dataset_dir: str | Path | None = None,
    redo: bool = False,
    settings: DemoSettings | None = None,
    verbose: bool = False,
) -> Path:
    """Run the demo into ``out`` and return the path of ``out/report.md``.

    Args:
        out: output folder (data, work files, stage outputs, report).
        dataset_dir: a BraTS 2021 folder to use instead of synthetic data.
        redo: run every step again even if it finished before.
        settings: what to run (default: :class:`DemoSettings`).
        verbose: configure logging with the bundles' logging.conf (INFO lines of the engines and handlers on the
            console); the per-iteration lines stay in each run's log file either way.
    """
    from medadv_monai.bundle import load_bundle_config
    from medadv_monai.data import make_anatomical_brats, split_statistics

    settings = settings or DemoSettings()
    out = Path(out).resolve()
    start = time.perf_counter()
    steps = _Steps(out, redo, verbose)
    if dataset_dir is None:
        dataset_dir = out / "data" / "synthetic_brats"
        synth = {k: v for k, v in {"subjects": settings.subjects, "shape": settings.shape}.items() if v is not None}
        steps("synthetic_data", lambda: len(make_anatomical_brats(dataset_dir, **synth)))
    data = {"dataset_dir": str(dataset_dir), "work_dir": str(out / "work")}
    shaping = {} if settings.image_size is None else {"image_size": list(settings.image_size)}
    classifier_ckpt = out / "classifier" / "models" / "model.pt"

    def slice_cache() -> dict[str, Any]:
        parser = load_bundle_config(**data, **shaping)
        cache, datalist = parser.get_parsed_content("slice_cache"), parser.get_parsed_content("datalist")
        figures = cache.build([i for items in datalist.values() for i in items], progress=True)
        stats = split_statistics(cache.datasets(datalist, modalities=parser["modalities"]))
        return {"cache": str(cache.path), "build": figures, "stats": stats}

    def classifier() -> dict[str, Any]:
        runs = {**data, **shaping, "output_dir": str(out / "classifier" / "models"), **settings.classifier}
        steps.bundle_run("brats_slice_classifier", ["train.yaml"], **runs)
        steps.bundle_run("brats_slice_classifier", ["train.yaml", "evaluate.yaml"],
                         eval_dir=str(out / "classifier" / "eval"), **runs)
        return json.loads((out / "classifier" / "eval" / "metrics.json").read_text())

    generator_ckpt = out / "advgan" / "models" / "generator.pt"

    def advgan() -> dict[str, Any]:
        steps.bundle_run("brats_advgan", ["train.yaml"], **data, classifier_ckpt=str(classifier_ckpt),
                    classifier_overrides=shaping, output_dir=str(generator_ckpt.parent), **settings.advgan)
        return json.loads((generator_ckpt.parent / "val_metrics.json").read_text())

    def attack_grid(configs: Sequence[str], overrides: Mapping[str, Any], output_dir: Path) -> Callable[[], Any]:
        def run() -> list[dict[str, Any]]:
            steps.bundle_run("brats_attack_eval", configs, **data, classifier_ckpt=str(classifier_ckpt),
                        classifier_overrides=shaping, output_dir=str(output_dir), **overrides)
            return json.loads((output_dir / "summary.json").read_text())
        return run

    cache_info = steps("slice_cache", slice_cache, clears=[out / "work"])
    cls_metrics = steps("classifier", classifier, clears=[out / "classifier"])
    gan_metrics = steps("advgan", advgan, clears=[out / "advgan"])
    grid_dir, sweep_dir = out / "attack_eval", out / "attack_eval" / "patch_sweep"
    grid_settings = {"generator_ckpt": str(generator_ckpt), **settings.attack_grid}
    summary = steps("attack_grid", attack_grid(["evaluate.yaml"], grid_settings, grid_dir), clears=[grid_dir])
    sweep = steps("patch_sweep", attack_grid(["evaluate.yaml", "sweep.yaml"], settings.patch_sweep, sweep_dir),
                  clears=[sweep_dir])
    seg_dir = out / "segmentation"

    def segmentation() -> dict[str, Any]:
        runs = {**data, **shaping, "output_dir": str(seg_dir / "models"), **settings.segmentation}
        bundle = "brats_tumour_segmentation"
        steps.bundle_run(bundle, ["train.yaml"], **runs)
        steps.bundle_run(bundle, ["train.yaml", "evaluate.yaml"], eval_dir=str(seg_dir / "eval"), **runs)
        steps.bundle_run(bundle, ["train.yaml", "attack.yaml"], attack_dir=str(seg_dir / "attacks"), **runs,
                         **settings.seg_attacks)
        return {name: json.loads(path.read_text()) for name, path in (
            ("metrics", seg_dir / "eval" / "metrics.json"), ("summary", seg_dir / "attacks" / "summary.json"),
            ("medis", seg_dir / "attacks" / "medis.json")) if path.is_file()}

    seg = steps("segmentation", segmentation, clears=[seg_dir])
    report = out / "report.md"
    text = _report(out, dataset_dir, cache_info, cls_metrics, gan_metrics, summary, sweep, steps.log,
                   time.perf_counter() - start, settings, seg)
    save_text(text, report)
    from medadv_monai.visualize import write_html

    write_html(text, out / "report.html", title="medadv-monai demo")
    print(f"[demo] report: {report} (and report.html); TensorBoard: tensorboard --logdir {out}", flush=True)
    return report


def headline_rows(summary: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """One row per attack and mask of an untargeted grid: the slice count, clean accuracy, robust accuracy at each
    eps, and the ASR (with its denominator) and SSIM at the largest eps; each rate with its 95% interval
    (``<key>_lo``, ``<key>_hi``)."""
    cells = [s for s in summary if not s["targeted"]]
    eps = sorted({s["eps_255"] for s in cells if s["attack"] != "clean"})
    rows = []
    for mask in dict.fromkeys(s["mask"] for s in cells):
        for attack in dict.fromkeys(s["attack"] for s in cells if s["attack"] != "clean"):
            mine = {s["eps_255"]: s for s in cells if s["mask"] == mask and s["attack"] == attack}
            if not mine:
                continue
            first, top = next(iter(mine.values())), mine[max(mine)]
            row = {"attack": attack, "mask": mask, "n": first["n"], **_with_interval("clean_acc", first)}
            for e in eps:
                row.update(_with_interval("robust_acc", mine.get(e, {}), f"robust_acc@{e:g}"))
            row[f"n_asr@{max(mine):g}"] = top["n_asr"]
            row.update(_with_interval("asr", top, f"asr@{max(mine):g}"))
            row["ssim"] = top["mean_ssim"]
            rows.append(row)
    return rows


def _with_interval(key: str, cell: Mapping[str, Any], name: str | None = None) -> dict[str, float]:
    """``{name: cell[key], name_lo: ..., name_hi: ...}`` (NaN where the cell lacks them)."""
    name = name or key
    return {name + end: cell.get(key + end, math.nan) for end in ("", "_lo", "_hi")}


def _portable(value: Any, out: Path) -> Any:
    """An override as the report shows it: paths relative to ``out`` (or the repository, or ``~``)."""
    if isinstance(value, str) and os.path.isabs(value):
        return portable_path(value, out)
    if isinstance(value, Mapping):
        return {k: _portable(v, out) for k, v in value.items()}
    return value


def _command(run: Mapping[str, Any]) -> str:
    """A recorded bundle run as the ``python -m monai.bundle run`` command that repeats it from the report's folder."""
    root = f"<repo>/bundles/{run['bundle']}"
    configs = ",".join(f"'{root}/configs/{c}'" for c in run["configs"])
    args = [f'--config_file "[{configs}]"', f"--meta_file {root}/configs/metadata.json", f"--bundle_root {root}"]
    args += [f"--{k} {shlex.quote(v if isinstance(v, str) else json.dumps(v))}" for k, v in run["overrides"].items()]
    return "python -m monai.bundle run " + " ".join(args)


def _report(out: Path, dataset_dir: Path | str, cache_info: Mapping[str, Any], cls: Mapping[str, Any],
            gan: Mapping[str, Any], summary: Sequence[Mapping[str, Any]], sweep: Sequence[Mapping[str, Any]],
            log: Sequence[Mapping[str, Any]], seconds: float, settings: DemoSettings,
            seg: Mapping[str, Any]) -> str:
    from medadv_monai.data import format_statistics
    from medadv_monai.metrics import wilson_interval
    from medadv_monai.visualize import markdown_table

    rel = lambda p: os.path.relpath(p, out)  # noqa: E731
    grid, sweep_dir = out / "attack_eval", out / "attack_eval" / "patch_sweep"
    head = headline_rows(summary)
    cls, gan = dict(cls), dict(gan)
    if "val_n" in gan:
        gan["val_n"] = int(gan["val_n"])
    if "slices" in cls and "test_acc" in cls:
        cls["test_acc_lo"], cls["test_acc_hi"] = wilson_interval(round(cls["test_acc"] * cls["slices"]), cls["slices"])
    stage_seconds = sum(r["seconds"] for r in log)
    lines = [
        "# medadv-monai demo report", "",
        f"Dataset `{portable_path(dataset_dir, out)}`; {os.cpu_count()} CPU cores; the stages took "
        f"{stage_seconds:.0f} s ({seconds:.0f} s for this run, where steps reused from an earlier run count as 0). "
        "Rates are given with their 95% Wilson interval in brackets.", "",
        "## Headline: robust accuracy of the slice classifier under attack", "",
        "Untargeted L-inf attacks on the `n` slices of the test split; eps in units of 1/255; ASR = flipped / the "
        "`n_asr` clean-correct attackable slices (with the seg and ring masks, tumour-free slices are not "
        "attackable); AdvGAN runs at the eps it was trained for.", "",
        markdown_table(head, list(k for k in head[0] if not k.endswith(("_lo", "_hi")))) if head else "", "",
        "## Data", "", "```", format_statistics(cache_info["stats"]), "```", "",
        "## Stage 1: classifier (test split)", "",
        markdown_table([cls], ["slices", "test_auc", "test_acc", "test_sensitivity", "test_specificity"],
                       ["slices", "ROC AUC", "accuracy", "sensitivity", "specificity"]), "",
        "## Stage 2: AdvGAN (validation split, last epoch)", "",
        "One generator pass per slice. The headline table compares it with PGD and the others on the same test "
        "slices and budget (its `advgan` rows).", "",
        markdown_table([gan], [k for k in ("val_n", "val_asr", "val_robust_acc", "val_pgd10_asr",
                                           "val_pgd10_robust_acc", "val_mean_linf", "val_mean_ssim", "epoch")
                               if k in gan]), "",
        "## Stage 3: attack grid", "",
        f"The full table with every cell and metric: [attack_eval/report.md]({rel(grid / 'report.md')}); per-sample "
        f"rows: `{rel(grid / 'per_sample.csv')}`.", "",
    ]
    for name, title in (("robust_accuracy.png", "Robust accuracy against eps"), ("gradcam.png", "Grad-CAM"),
                        ("asr_by_coverage.png", "ASR against tumour coverage")):
        if (grid / "figures" / name).is_file():
            lines += [f"### {title}", "", f"![{name}]({rel(grid / 'figures' / name)})", ""]
    grids = sorted((grid / "figures").glob("grid_pgd_*.png")) if (grid / "figures").is_dir() else []
    if grids:
        lines += ["### PGD examples", "", "Each row: a test slice with its true class; the model's prediction and "
                  "tumour probability on the clean and the adversarial slice (red: the attack flipped it); the "
                  "change on a colour scale in units of eps; the attack mask.", ""]
        lines += [f"![grid]({rel(p)})" for p in grids] + [""]
    lines += ["## Patch sweep", "",
              f"Patches of several shapes, sizes and anchors ([attack_eval/patch_sweep/report.md]"
              f"({rel(sweep_dir / 'report.md')})); the eight most successful:", ""]
    ranking = sorted((s for s in sweep if s["attack"] != "clean"), key=lambda s: -s["asr"])
    lines += [markdown_table(ranking[:8], ["mask", "attack", "eps_255", "n_asr", "asr", "mean_coverage",
                                           "mean_area"]), ""]
    for name in ("asr_by_coverage.png", "mask_ranking.png"):
        if (sweep_dir / "figures" / name).is_file():
            lines += [f"![{name}]({rel(sweep_dir / 'figures' / name)})", ""]
    lines += _segmentation_section(seg, rel(out / "segmentation"))
    lines += ["## Steps", "", markdown_table(log, ["step", "seconds"]), "",
              "TensorBoard: `tensorboard --logdir .` in this folder; each bundle run's full log is the `*.log` file "
              "beside its TensorBoard events (`runs/<time>/`).", ""]
    data = {}
    if Path(dataset_dir).resolve() == (out / "data" / "synthetic_brats").resolve():
        size = {"subjects": settings.subjects, "shape": settings.shape}
        data["synthetic_data"] = "medadv synth --kind anatomical --seed 0 " + " ".join(
            f"--{k} {json.dumps(list(v)) if isinstance(v, (list, tuple)) else v}" for k, v in size.items()
            if v is not None)
    lines.append(provenance_markdown(provenance(out, seed="0 (every stage's default)", **data)))
    runs = [r for record in log for r in record.get("runs", [])]
    if runs:
        lines += ["The bundle runs, from this folder:", "", "```"] + [_command(r) for r in runs] + ["```", ""]
    return "\n".join(lines)


def _segmentation_section(seg: Mapping[str, Any], folder: str) -> list[str]:
    """The report's segmentation section: clean Dice per region, Dice under each attack, the MedIS table."""
    from medadv_monai.visualize import markdown_table

    metrics, summary = seg.get("metrics", {}), seg.get("summary", [])
    regions = [k[len("test_dice_"):] for k in metrics if k.startswith("test_dice_")]
    lines = ["## Segmentation under attack", "",
             f"The segmentation bundle's UNet ([{folder}/attacks/report.md]({folder}/attacks/report.md)). Clean Dice "
             "on the test split, per region over the slices holding it and per subject:", "",
             markdown_table([metrics], [f"test_{kind}dice_{r}" for kind in ("", "subject_") for r in regions],
                            [f"{r} ({kind})" for kind in ("slice", "subject") for r in regions]), ""]
    attacked = [s for s in summary if s["attack"] != "clean"]
    if attacked:
        lines += ["Dice under attack on the tumour slices (eps in units of 1/255); success: IoU(prediction, ground "
                  "truth) <= 0.5 untargeted, IoU(prediction, target) >= 0.45 targeted; ROG: Dice under half the "
                  "clean mean.", "",
                  markdown_table(attacked, ["name", "loss", "target", "mask", "eps_255",
                                            *[f"adv_dice_{r}" for r in regions], "success_rate", "rog_success_rate"]),
                  ""]
    if seg.get("medis"):
        lines += ["MedIS: success rate and mean steps to success per surrogate loss and fused (steps counted from 0 "
                  "for the clean image).", "",
                  markdown_table(seg["medis"], ["target", "eps_255", "loss", "success_rate", "mean_steps",
                                                "clean_success"]), ""]
    return lines
