"""``medadv demo``: every stage on synthetic BraTS (or a real BraTS folder), ending in one report.

The stages run through MONAI's bundle machinery (``monai.bundle.run``, what ``python -m monai.bundle run`` calls)
on the repository's bundles, with their outputs redirected under ``out``:

==============  ==========================================================================================
step            what
==============  ==========================================================================================
synthetic_data  ``medadv synth`` into ``out/data/synthetic_brats`` (skipped with ``dataset_dir``)
slice_cache     datalist, slice cache and statistics through the classifier bundle's config
classifier      stage 1 training, then evaluation on the test split (``out/classifier``)
advgan          stage 2 AdvGAN training against the classifier (``out/advgan``)
attack_grid     stage 3: FGSM/BIM/PGD/MI-FGSM x eps x masks, plus the AdvGAN row (``out/attack_eval``)
patch_sweep     stage 3's patch sweep, small (``out/attack_eval/patch_sweep``)
report          ``out/report.md`` and ``out/report.html``
==============  ==========================================================================================

Each finished step leaves a marker in ``out/steps``; a second run reuses it unless ``redo`` is set.
"""

from __future__ import annotations

import json
import os
import platform
import shutil
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

from medadv_monai.utils import save_json, save_text

__all__ = ["DemoSettings", "run_demo"]


class DemoSettings:
    """What the demo runs; the defaults fit in about five minutes on 2 CPU cores.

    Attributes:
        subjects, shape: synthetic dataset size (``None``: the generator's defaults, 40 subjects of 64x64x48).
        image_size: slice size for every stage (``None``: the classifier bundle's, 64x64).
        classifier: overrides of the classifier bundle (e.g. ``{"train#trainer#max_epochs": 12}``).
        advgan: overrides of the AdvGAN bundle.
        attack_grid: overrides of the attack-evaluation bundle's grid.
        patch_sweep: overrides of its patch sweep.
    """

    def __init__(
        self,
        subjects: int | None = None,
        shape: Sequence[int] | None = None,
        image_size: Sequence[int] | None = None,
        classifier: Mapping[str, Any] | None = None,
        advgan: Mapping[str, Any] | None = None,
        attack_grid: Mapping[str, Any] | None = None,
        patch_sweep: Mapping[str, Any] | None = None,
    ) -> None:
        self.subjects, self.shape, self.image_size = subjects, shape, image_size
        self.classifier = dict(classifier or {})
        self.advgan = dict(advgan or {})
        self.attack_grid = {"max_slices": 128, **(attack_grid or {})}
        self.patch_sweep = {"sweep_sizes": [0.1, 0.2, 0.3], "max_slices": 128, **(patch_sweep or {})}


class _Steps:
    """Run named steps once: a step whose marker exists is reused unless ``redo``; its outputs are cleared
    before it runs again."""

    def __init__(self, out: Path, redo: bool) -> None:
        self.out, self.redo = out, redo
        self.log: list[dict[str, Any]] = []

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
            result = fn()
            record = {"step": name, "seconds": round(time.perf_counter() - start, 1), "result": result}
            save_json(record, marker)
            print(f"[demo] {name}: done in {record['seconds']} s", flush=True)
        self.log.append(record)
        return record["result"]


def _bundle_run(bundle: str, configs: Sequence[str], verbose: bool, **overrides: Any) -> None:
    """``python -m monai.bundle run`` of one of the repository's bundles, in this process."""
    from monai.bundle import run

    from medadv_monai.bundle import bundle_path

    root = bundle_path(bundle)
    run(
        config_file=[str(root / "configs" / c) for c in configs],
        meta_file=str(root / "configs" / "metadata.json"),
        logging_file=str(root / "configs" / "logging.conf") if verbose else False,
        bundle_root=str(root),
        **overrides,
    )


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
        verbose: show the bundles' INFO logs (every iteration) instead of progress lines only.
    """
    from medadv_monai.bundle import load_bundle_config
    from medadv_monai.data import make_synthetic_brats, split_statistics

    settings = settings or DemoSettings()
    out = Path(out).resolve()
    start = time.perf_counter()
    steps = _Steps(out, redo)
    if dataset_dir is None:
        dataset_dir = out / "data" / "synthetic_brats"
        synth = {k: v for k, v in {"subjects": settings.subjects, "shape": settings.shape}.items() if v is not None}
        steps("synthetic_data", lambda: len(make_synthetic_brats(dataset_dir, **synth)))
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
        _bundle_run("brats_slice_classifier", ["train.yaml"], verbose, **runs)
        _bundle_run("brats_slice_classifier", ["train.yaml", "evaluate.yaml"], verbose,
                    eval_dir=str(out / "classifier" / "eval"), **runs)
        return json.loads((out / "classifier" / "eval" / "metrics.json").read_text())

    generator_ckpt = out / "advgan" / "models" / "generator.pt"

    def advgan() -> dict[str, Any]:
        _bundle_run("brats_advgan", ["train.yaml"], verbose, **data, classifier_ckpt=str(classifier_ckpt),
                    classifier_overrides=shaping, output_dir=str(generator_ckpt.parent), **settings.advgan)
        return json.loads((generator_ckpt.parent / "val_metrics.json").read_text())

    def attack_grid(configs: Sequence[str], overrides: Mapping[str, Any], output_dir: Path) -> Callable[[], Any]:
        def run() -> list[dict[str, Any]]:
            _bundle_run("brats_attack_eval", configs, verbose, **data, classifier_ckpt=str(classifier_ckpt),
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
    report = out / "report.md"
    text = _report(out, dataset_dir, cache_info, cls_metrics, gan_metrics, summary, sweep, steps.log,
                   time.perf_counter() - start)
    save_text(text, report)
    from medadv_monai.visualize import write_html

    write_html(text, out / "report.html", title="medadv-monai demo")
    print(f"[demo] report: {report} (and report.html); TensorBoard: tensorboard --logdir {out}", flush=True)
    return report


def headline_rows(summary: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """One row per attack and mask of an untargeted grid: clean accuracy, robust accuracy at each eps, and the
    ASR at the largest eps."""
    cells = [s for s in summary if not s["targeted"]]
    eps = sorted({s["eps_255"] for s in cells if s["attack"] != "clean"})
    rows = []
    for mask in dict.fromkeys(s["mask"] for s in cells):
        for attack in dict.fromkeys(s["attack"] for s in cells if s["attack"] != "clean"):
            mine = {s["eps_255"]: s for s in cells if s["mask"] == mask and s["attack"] == attack}
            if not mine:
                continue
            row = {"attack": attack, "mask": mask, "clean_acc": next(iter(mine.values()))["clean_acc"]}
            row.update({f"robust_acc@{e:g}": mine[e]["robust_acc"] if e in mine else float("nan") for e in eps})
            top = mine[max(mine)]
            row[f"asr@{max(mine):g}"] = top["asr"]
            row["ssim"] = top["mean_ssim"]
            rows.append(row)
    return rows


def _report(out: Path, dataset_dir: Path | str, cache_info: Mapping[str, Any], cls: Mapping[str, Any],
            gan: Mapping[str, Any], summary: Sequence[Mapping[str, Any]], sweep: Sequence[Mapping[str, Any]],
            log: Sequence[Mapping[str, Any]], seconds: float) -> str:
    from medadv_monai.data import format_statistics
    from medadv_monai.visualize import markdown_table

    rel = lambda p: os.path.relpath(p, out)  # noqa: E731
    grid, sweep_dir = out / "attack_eval", out / "attack_eval" / "patch_sweep"
    head = headline_rows(summary)
    lines = [
        "# medadv-monai demo report", "",
        f"Dataset `{dataset_dir}`; {platform.platform()}, {os.cpu_count()} CPU cores; {seconds:.0f} s for this run "
        "(steps reused from an earlier run count as 0).", "",
        "## Headline: robust accuracy of the slice classifier under attack", "",
        f"Untargeted L-inf attacks on {summary[0]['n'] if summary else 0} slices of the test split; eps in units "
        "of 1/255; ASR = flipped / clean-correct attackable slices (with the seg and ring masks, tumour-free "
        "slices are not attackable); AdvGAN runs at the eps it was trained for.", "",
        markdown_table(head, list(head[0]) if head else []), "",
        "## Data", "", "```", format_statistics(cache_info["stats"]), "```", "",
        "## Stage 1: classifier (test split)", "",
        markdown_table([cls], ["test_auc", "test_acc", "test_sensitivity", "test_specificity", "slices"],
                       ["ROC AUC", "accuracy", "sensitivity", "specificity", "slices"]), "",
        "## Stage 2: AdvGAN (validation split, last epoch)", "",
        "One generator pass per slice. The headline table compares it with PGD and the others on the same test "
        "slices and budget (its `advgan` rows).", "",
        markdown_table([gan], [k for k in ("val_asr", "val_robust_acc", "val_pgd10_asr", "val_pgd10_robust_acc",
                                           "val_mean_linf", "val_mean_ssim", "epoch") if k in gan]), "",
        "## Stage 3: attack grid", "",
    ]
    for name, title in (("robust_accuracy.png", "Robust accuracy against eps"), ("gradcam.png", "Grad-CAM")):
        if (grid / "figures" / name).is_file():
            lines += [f"### {title}", "", f"![{name}]({rel(grid / 'figures' / name)})", ""]
    grids = sorted((grid / "figures").glob("grid_pgd_*.png")) if (grid / "figures").is_dir() else []
    if grids:
        lines += ["### PGD examples (clean | adversarial | |difference|/eps | mask)", ""]
        lines += [f"![grid]({rel(p)})" for p in grids] + [""]
    lines += [f"Full table: [`{rel(grid / 'report.md')}`]({rel(grid / 'report.md')}), per-sample rows: "
              f"`{rel(grid / 'per_sample.csv')}`.", "",
              "## Patch sweep", ""]
    ranking = sorted((s for s in sweep if s["attack"] != "clean"), key=lambda s: -s["asr"])
    lines += [markdown_table(ranking[:8], ["mask", "attack", "eps_255", "asr", "mean_coverage", "mean_area"]), ""]
    for name in ("asr_by_coverage.png", "mask_ranking.png"):
        if (sweep_dir / "figures" / name).is_file():
            lines += [f"![{name}]({rel(sweep_dir / 'figures' / name)})", ""]
    lines += ["## Steps", "", markdown_table(log, ["step", "seconds"]), "",
              f"TensorBoard: `tensorboard --logdir {out}`", ""]
    return "\n".join(lines)
