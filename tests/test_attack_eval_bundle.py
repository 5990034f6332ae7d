"""The brats_attack_eval bundle end to end on tiny synthetic data: a classifier checkpoint in, the summary out."""

from __future__ import annotations

import csv
import json
import math
import re
import shutil
from collections import defaultdict
from pathlib import Path

import pytest

from tests.helpers import ATTACK_EVAL_BUNDLE as BUNDLE
from tests.helpers import run_cli

pytestmark = pytest.mark.slow


def _float(v: str) -> float:
    return math.nan if v in ("", "nan") else float(v)


def _bool(v: str) -> bool:
    return v == "True"


@pytest.fixture(scope="module")
def evaluated(trained_classifier, synth_dir, tmp_path_factory):
    """Run the bundle with `monai.bundle run` from another directory on a small grid."""
    root = tmp_path_factory.mktemp("attack_eval")
    bundle = root / "brats_attack_eval"
    shutil.copytree(BUNDLE, bundle, ignore=shutil.ignore_patterns("eval"))
    args = [
        "monai.bundle", "run", "--config_file", str(bundle / "configs" / "evaluate.yaml"),
        "--bundle_root", str(bundle),
        "--classifier_bundle", str(trained_classifier),
        "--dataset_dir", str(synth_dir),
        "--classifier_overrides", "{'image_size': [32, 32]}",
        "--attacks", "{'fgsm': {}, 'pgd': {'steps': 5}}",
        "--eps", "[0.03137254901960784]",
        "--targeted", "[False, True]",
        "--split", "training",   # the tiny test split is one subject; the mechanics need more slices
    ]
    first = run_cli(args, cwd=root)
    again = run_cli(args, cwd=root)
    return bundle / "eval", first, again


def _per_sample(out: Path) -> dict[str, list[dict[str, str]]]:
    cells = defaultdict(list)
    with open(out / "per_sample.csv") as f:
        for row in csv.DictReader(f):
            cells[row["cell"]].append(row)
    return cells


def test_summary_equals_recomputation_from_per_sample_csv(evaluated):
    out, _, _ = evaluated
    summary = {s["cell"]: s for s in json.loads((out / "summary.json").read_text())}
    cells = _per_sample(out)
    assert set(summary) == set(cells)
    assert len(summary) == 3 + 2 * 3 * 2  # clean per mask + 2 attacks x 3 masks x (untargeted, targeted)
    for name, rows in cells.items():
        s = summary[name]
        n = len(rows)
        clean = [_bool(r["clean_correct"]) for r in rows]
        adv = [_bool(r["adv_correct"]) for r in rows]
        ok = [_bool(r["attackable"]) for r in rows]
        success = [_bool(r["success"]) for r in rows]
        assert s["n"] == n and s["n_attackable"] == sum(ok)
        assert s["clean_acc"] == pytest.approx(sum(clean) / n)
        assert s["robust_acc"] == pytest.approx(sum(adv) / n)
        if s["targeted"]:
            eligible = [o and r["label"] != r["target"] for o, r in zip(ok, rows)]
            assert s["targeted_success"] == pytest.approx(sum(success) / sum(eligible))
            assert all(r["target"] == str(1 - int(r["label"])) for r in rows)
        else:
            den = sum(c and o for c, o in zip(clean, ok))
            asr = sum(success) / den if den else math.nan
            assert s["asr"] == pytest.approx(asr, nan_ok=True)
            flipped = sum(c and not a for c, a in zip(clean, adv))
            assert s["asr_all"] == pytest.approx(flipped / sum(clean) if sum(clean) else math.nan, nan_ok=True)
        for key in ("l0", "l2", "linf", "tv", "ssim", "coverage", "area"):
            values = [v for v in (_float(r[key]) for r in rows) if not math.isnan(v)]
            expected = sum(values) / len(values) if values else math.nan
            assert s[f"mean_{key}"] == pytest.approx(expected, rel=1e-9, abs=1e-12, nan_ok=True), (name, key)


def test_pgd_lowers_robust_accuracy_and_respects_the_budget(evaluated):
    out, _, _ = evaluated
    summary = {s["cell"]: s for s in json.loads((out / "summary.json").read_text())}
    pgd = summary["pgd_eps8_none"]
    assert pgd["robust_acc"] < pgd["clean_acc"]
    assert pgd["mean_linf"] <= 8 / 255 + 1e-6
    for row in _per_sample(out)["pgd_eps8_none"]:
        assert _float(row["linf"]) <= 8 / 255 + 1e-6


def test_seg_mask_tumour_free_slices_are_not_attackable(evaluated):
    out, _, _ = evaluated
    rows = _per_sample(out)["pgd_eps8_seg"]
    negatives = [r for r in rows if r["label"] == "0"]
    positives = [r for r in rows if r["label"] == "1"]
    assert negatives and positives
    for r in negatives:  # no tumour: empty mask, not attackable, untouched
        assert not _bool(r["attackable"]) and not _bool(r["success"])
        assert _float(r["l0"]) == 0.0 and r["adv_pred"] == r["clean_pred"]
        assert math.isnan(_float(r["coverage"]))
    assert all(_bool(r["attackable"]) and _float(r["coverage"]) == 1.0 for r in positives)
    ring = _per_sample(out)["pgd_eps8_ring"]
    assert all(_float(r["coverage"]) == 0.0 for r in ring if r["label"] == "1")  # the ring excludes the tumour


def test_outputs_report_and_resume(evaluated):
    out, first, again = evaluated
    for name in ("summary.csv", "coverage.csv", "report.md", "report.html", "figures/asr_by_coverage.png",
                 "figures/gradcam.png", "figures/grid_pgd_eps8_seg.png"):
        assert (out / name).is_file(), name
    assert not (out / "figures" / "robust_accuracy.png").exists()  # one eps: no curve (the demo test has two)
    report = (out / "report.md").read_text()
    assert "| PGD | 8.000 | none |" in report and "figures/gradcam.png" in report
    assert list((out / "runs").glob("*/events.out.tfevents.*"))
    assert "[attack grid]" in first.stdout and "[attack grid]" not in again.stdout  # the rerun resumed every cell
    # the console: one line per cell with its rates; the cell's full summary only in the run's log file
    assert re.search(r"\[attack grid\] \d+/\d+ pgd_eps8_seg: clean_acc [\d.]+, robust_acc [\d.]+, asr [\d.]+",
                     first.stdout)
    assert "Metrics --" not in first.stdout
    (log,) = [p for p in (out / "runs").glob("*/evaluate.log") if "pgd_eps8_seg" in p.read_text()]
    assert "'asr_lo'" in log.read_text()
    with open(out / "summary.csv") as f:
        for row in csv.DictReader(f):
            if row["attack"] != "clean":  # every rate sits inside its 95% interval
                rate, n = ("targeted_success", "n_targeted") if _bool(row["targeted"]) else ("asr", "n_asr")
                assert _float(row[f"{rate}_lo"]) <= _float(row[rate]) <= _float(row[f"{rate}_hi"])
                assert int(row[n]) <= int(row["n"])
    assert "## Reproduce" in report and "classifier checkpoint" in report and str(out.parent) not in report
    with open(out / "coverage.csv") as f:
        cov = list(csv.DictReader(f))
    assert {r["cell"] for r in cov} >= {"pgd_eps8_seg", "fgsm_eps8_ring"}


def test_patch_sweep_ranks_patches_and_bins_coverage(trained_classifier, synth_dir, tmp_path):
    bundle = tmp_path / "brats_attack_eval"
    shutil.copytree(BUNDLE, bundle, ignore=shutil.ignore_patterns("eval"))
    files = f"['{bundle / 'configs' / 'evaluate.yaml'}','{bundle / 'configs' / 'sweep.yaml'}']"
    run_cli(["monai.bundle", "run", "--config_file", files, "--bundle_root", str(bundle),
             "--classifier_bundle", str(trained_classifier), "--dataset_dir", str(synth_dir),
             "--classifier_overrides", "{'image_size': [32, 32]}", "--split", "training",
             "--sweep_sizes", "[0.1, 0.3]", "--sweep_anchors", "['centroid', 'random']"], cwd=tmp_path)
    out = bundle / "eval" / "patch_sweep"
    with open(out / "ranking.csv") as f:
        ranking = list(csv.DictReader(f))
    assert len(ranking) == 2 * 2 * 2  # (w, h) pairs x anchors
    asr = [_float(r["asr"]) for r in ranking]
    assert asr == sorted(asr, reverse=True) and [r["rank"] for r in ranking] == [str(i + 1) for i in range(8)]
    assert {r["mask"] for r in ranking} >= {"rect_0.10x0.30_centroid", "rect_0.30x0.30_random"}
    with open(out / "coverage_pooled.csv") as f:
        pooled = list(csv.DictReader(f))
    assert [(_float(r["bin_lo"]), _float(r["bin_hi"])) for r in pooled][0] == (0.0, 0.05) and len(pooled) == 8
    assert (out / "figures" / "asr_by_coverage.png").is_file() and (out / "figures" / "mask_ranking.png").is_file()
    assert "## Masks ranked by attack success" in (out / "report.md").read_text()


def test_advmia_protocol_overlay_runs_the_survey_grid(trained_classifier, synth_dir, tmp_path):
    bundle = tmp_path / "brats_attack_eval"
    shutil.copytree(BUNDLE, bundle, ignore=shutil.ignore_patterns("eval"))
    files = f"['{bundle / 'configs' / 'evaluate.yaml'}','{bundle / 'configs' / 'protocol_advmia.yaml'}']"
    run_cli(["monai.bundle", "run", "--config_file", files, "--bundle_root", str(bundle),
             "--classifier_bundle", str(trained_classifier), "--dataset_dir", str(synth_dir),
             "--classifier_overrides", "{'image_size': [32, 32]}", "--split", "training",
             "--attacks#autoattack", "{'steps': 10, 'queries': 20}", "--attacks#square", "{'queries': 20}"],
            cwd=tmp_path)
    out = bundle / "eval" / "protocol_advmia"
    with open(out / "summary.csv") as f:
        summary = {r["cell"]: r for r in csv.DictReader(f)}
    attacks = ("fgsm", "pgd20", "cw_margin", "autoattack", "square")
    assert set(summary) == {"clean_none"} | {f"{a}_eps{e}_none" for a in attacks for e in (1, 2, 4, 8)}
    cost = {a: (summary[f"{a}_eps8_none"]["grad_evals"], summary[f"{a}_eps8_none"]["queries"]) for a in attacks}
    assert cost == {"fgsm": ("1", "0"), "pgd20": ("20", "0"), "cw_margin": ("30", "0"),
                    "autoattack": (str(11 * 10), "20"), "square": ("0", "20")}
    for e in (1, 2, 4, 8):  # every attack within its budget
        for a in attacks:
            assert _float(summary[f"{a}_eps{e}_none"]["mean_linf"]) <= e / 255 + 1e-6
    report = (out / "report.md").read_text()
    assert "## Robust accuracy by attack and eps" in report and "| AutoAttack-style |" in report
    assert "eps 1/255 | eps 2/255 | eps 4/255 | eps 8/255" in report
