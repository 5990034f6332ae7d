"""The demo pipeline on tiny settings: every step runs, the report's table matches the stage outputs, and a
second run reuses the finished steps."""

from __future__ import annotations

import json
import math

import pytest

from medadv_monai.attacks import display_name
from medadv_monai.demo import DemoSettings, headline_rows, run_demo

pytestmark = pytest.mark.slow


def _table(markdown: str, header_start: str) -> list[list[str]]:
    lines = markdown.splitlines()
    i = next(k for k, line in enumerate(lines) if line.startswith(header_start))
    rows = []
    for line in lines[i + 2:]:
        if not line.startswith("|"):
            break
        rows.append([c.strip() for c in line.strip("|").split("|")])
    return rows


def test_demo_on_tiny_settings(tmp_path, capsys):
    settings = DemoSettings(
        subjects=6, shape=(32, 32, 16), image_size=(32, 32),
        classifier={"train#trainer#max_epochs": 2, "batch_size": 16},
        advgan={"train#trainer#max_epochs": 1, "batch_size": 16, "d_warmup_iterations": 2},
        attack_grid={"attacks": {"fgsm": {}, "pgd": {"steps": 3}}, "eps": [4 / 255, 8 / 255], "split": "training"},
        patch_sweep={"sweep_sizes": [0.2, 0.4], "split": "training"},
        segmentation={"train#trainer#max_epochs": 2, "batch_size": 16},
        seg_attacks={"eval_split": "training", "eps": [8 / 255], "attack_targets": ["none"],
                     "attacks": {"pgd_dice": {"attack": "pgd", "loss": "dice", "steps": 2}},
                     "medis": {"steps": 2, "losses": ["bce", "dice"], "targets": ["none"]}},
    )
    out = tmp_path / "demo"
    report = run_demo(out, settings=settings)
    text = report.read_text()
    assert (out / "report.html").is_file()
    summary = json.loads((out / "attack_eval" / "summary.json").read_text())
    expected = headline_rows(summary)
    table = _table(text, "| attack | mask | n | clean_acc")
    assert len(table) == len(expected) == 3 * 3  # (fgsm, pgd, advgan) x (none, seg, ring)
    assert {row[0] for row in table} == {"FGSM", "PGD", "AdvGAN"}  # display names, not registry keys
    for row, exp in zip(table, expected):
        assert row[:2] == [display_name(exp["attack"]), exp["mask"]]
        # a rate prints as "0.812 [0.74, 0.87]" (its 95% interval), NaN as a dash
        values = [math.nan if v == "–" else float(v.split()[0]) for v in row[2:]]
        shown = {k: v for k, v in exp.items() if k not in ("attack", "mask") and not k.endswith(("_lo", "_hi"))}
        assert values == pytest.approx(list(shown.values()), abs=5e-4, nan_ok=True)
        for key in ("clean_acc", "asr@8"):
            cell = row[2 + list(shown).index(key)]
            if exp[key] == exp[key]:  # not NaN: the interval is printed and holds the rate
                lo, hi = (float(v) for v in cell.split("[")[1].rstrip("]").split(","))
                assert (lo, hi) == pytest.approx((exp[f"{key}_lo"], exp[f"{key}_hi"]), abs=5e-3)
                assert lo <= exp[key] <= hi
    cls = json.loads((out / "classifier" / "eval" / "metrics.json").read_text())
    (cls_row,) = _table(text, "| slices | ROC AUC")
    assert float(cls_row[1]) == pytest.approx(cls["test_auc"], abs=5e-4)
    for figure in ("attack_eval/figures/robust_accuracy.png", "attack_eval/figures/gradcam.png",
                   "attack_eval/patch_sweep/figures/asr_by_coverage.png"):
        assert (out / figure).is_file() and figure in text
    seg = json.loads((out / "segmentation" / "eval" / "metrics.json").read_text())
    assert "## Segmentation under attack" in text
    (seg_row,) = _table(text, "| WT (slice)")
    shown = math.nan if seg_row[0] == "–" else float(seg_row[0])
    assert shown == pytest.approx(seg["test_dice_WT"], abs=5e-4, nan_ok=True)
    medis = _table(text, "| target | eps_255 | loss")
    assert [row[2] for row in medis] == ["bce", "dice", "fused"]
    steps = [line for line in text.splitlines() if line.startswith("| ") and line.endswith(" |")]
    assert any(line.startswith("| classifier |") for line in steps)
    # shareable: no path of this machine, links to the HTML versions, and what made it
    for name in ("report.md", "report.html", "attack_eval/report.md", "attack_eval/report.html"):
        assert str(tmp_path) not in (out / name).read_text(), name
    html = (out / "report.html").read_text()
    assert 'href="attack_eval/report.html"' in html and 'href="attack_eval/report.md"' not in html
    assert "## Reproduce" in text and "git commit" in text and "monai " in text
    assert "python -m monai.bundle run --config_file" in text and "--dataset_dir data/synthetic_brats" in text

    capsys.readouterr()
    run_demo(out, settings=settings)  # everything is reused
    log = capsys.readouterr().out
    gan = json.loads((out / "advgan" / "models" / "val_metrics.json").read_text())
    assert 0.0 <= gan["val_asr"] <= 1.0 and "## Stage 2: AdvGAN" in text
    for step in ("synthetic_data", "slice_cache", "classifier", "advgan", "attack_grid", "patch_sweep", "segmentation"):
        assert f"[demo] {step}: done before" in log
