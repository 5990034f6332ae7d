"""The brats_adv_detection bundle end to end on tiny synthetic data, and the benchmark's protocol on its counts.

The shared trained classifier has no dropout: BU and KD + BU are "not applicable" with the reason in the table. The
same weights loaded into ``SliceClassifier(dropout=0.5)`` (dropout has no weights) give BU its Monte-Carlo passes: the
BU path. Tiny settings (LID k 5 over minibatches of 20, 5 PGD steps, 5 BU passes) keep the module fast.
"""

from __future__ import annotations

import json
import math
import shutil
from pathlib import Path

import pytest
import torch

from tests.helpers import BUNDLES, bundle_cmd, run, workflow

pytestmark = pytest.mark.slow

BUNDLE = BUNDLES / "brats_adv_detection"
EPS = [4 / 255, 16 / 255]
DETECTORS = ("KD", "BU", "LID", "Mahalanobis", "KD+BU")
ATTACKS = ("pgd", "pgd_targeted", "pgd_hfc")
DROPOUT_NET = {"_target_": "medadv_monai.networks.SliceClassifier", "in_channels": 1, "dropout": 0.5}


def _ids(trained_classifier: Path, synth_dir: Path, **more) -> dict:
    return {"classifier_bundle": str(trained_classifier), "dataset_dir": str(synth_dir),
            "classifier_overrides": {"image_size": [32, 32]}, "eps": EPS, "lid_k": 5, "lid_batch": 20,
            "pgd_steps": 5, "bu_passes": 5, "max_fit_slices": 120, "hfc_reg_covar": 0.1, **more}


@pytest.fixture(scope="module")
def bundle(tmp_path_factory) -> Path:
    dst = tmp_path_factory.mktemp("detection") / "brats_adv_detection"
    shutil.copytree(BUNDLE, dst, ignore=shutil.ignore_patterns("eval"))
    return dst


@pytest.fixture(scope="module")
def detected(bundle, trained_classifier, synth_dir):
    """Two runs of `python -m monai.bundle run` with the same settings (the second reuses every eps)."""
    args = bundle_cmd(bundle, ["detect.yaml"], **_ids(trained_classifier, synth_dir))
    first = run(args, cwd=bundle.parent)
    assert first.returncode == 0, first.stdout[-3000:] + first.stderr[-3000:]
    stamps = {p.name: p.stat().st_mtime_ns for p in (bundle / "eval" / "cells").glob("*.json")}
    again = run(args, cwd=bundle.parent)
    assert again.returncode == 0, again.stdout[-3000:] + again.stderr[-3000:]
    return bundle / "eval", first, again, stamps


def _check_table(rows: list[dict], bu: bool) -> None:
    assert {(r["eps"], r["attack"], r["detector"]) for r in rows} == {
        (e, a, d) for e in EPS for a in ATTACKS for d in DETECTORS}
    assert len(rows) == len(EPS) * len(ATTACKS) * len(DETECTORS)
    for r in rows:
        assert r["n_neg"] == 2 * r["n_pos"] and 0 <= r["n_pos"] <= r["n_correct"]
        assert r["asr"] == pytest.approx(r["n_pos"] / r["n_correct"])
        for key in ("auc", "tpr_at_90tnr"):
            value = r[key]
            if math.isnan(value):  # never a made-up number: a missing value says why
                assert r["note"], r
            else:
                assert 0.0 <= value <= 1.0 and not r["note"], r
        if r["detector"] in ("BU", "KD+BU") and not bu:
            assert math.isnan(r["auc"]) and "not applicable" in r["note"] and "dropout" in r["note"]
    strongest = [r for r in rows if r["eps"] == EPS[-1] and r["attack"] == "pgd"]
    assert strongest[0]["n_pos"] > 0  # PGD at 16/255 succeeds on the tiny classifier: numbers, not notes
    assert all(not math.isnan(r["auc"]) for r in strongest if bu or r["detector"] not in ("BU", "KD+BU"))
    for e in EPS:  # single logit: targeted PGD toward 1 - y takes the steps of untargeted PGD (but where the
        # sigmoid saturates: there one gradient is 0, the other not)
        pair = [[r for r in rows if r["eps"] == e and r["attack"] == a] for a in ("pgd", "pgd_targeted")]
        assert [r["detector"] for r in pair[0]] == [r["detector"] for r in pair[1]]
        assert [r["n_pos"] for r in pair[0]] == pytest.approx([r["n_pos"] for r in pair[1]], abs=1)
        assert [r["auc"] for r in pair[0]] == pytest.approx([r["auc"] for r in pair[1]], abs=0.05, nan_ok=True)


def test_table_has_every_detector_attack_and_eps_in_range(detected):
    out, first, _, _ = detected
    rows = json.loads((out / "detection.json").read_text())
    _check_table(rows, bu=False)
    header = (out / "detection.csv").read_text().splitlines()[0].split(",")
    assert {"eps", "attack", "detector", "auc", "tpr_at_90tnr", "n_pos", "n_neg", "asr", "note"} <= set(header)
    for e in EPS:
        for a in ATTACKS:
            if any(r["attack"] == a and r["eps"] == e and r["n_pos"] for r in rows):
                assert (out / "figures" / f"roc_{a}_eps{e * 255:g}.png").is_file()
    report = (out / "report.md").read_text()
    assert "| eps | attack | ASR |" in report and "not applicable" in report and (out / "report.html").is_file()
    assert "[detection] eps 16/255" in first.stdout


def test_rerun_reuses_finished_eps(detected):
    out, _, again, stamps = detected
    assert f"reused {len(EPS)} finished eps" in again.stdout
    assert {p.name: p.stat().st_mtime_ns for p in (out / "cells").glob("*.json")} == stamps


def test_bad_layer_is_refused_before_anything_is_written(bundle, trained_classifier, synth_dir, tmp_path):
    out = tmp_path / "never"
    wf = workflow(bundle, ["detect.yaml"], "infer", **_ids(trained_classifier, synth_dir, output_dir=str(out),
                                                          layers=["features.2", "features.99"]))
    with pytest.raises(Exception) as info:  # MONAI wraps the error of a config expression in a RuntimeError
        wf.initialize()
    error = info.value
    while not isinstance(error, ValueError) and (error.__cause__ or error.__context__):
        error = error.__cause__ or error.__context__
    assert isinstance(error, ValueError)
    assert "layers ['features.2', 'features.99']: unknown layer 'features.99'" in str(error)
    assert "features.10" in str(error)  # the layers there are
    assert not out.exists()


def test_bu_with_dropout_in_process(bundle, trained_classifier, synth_dir, tmp_path):
    """The same weights in a network with dropout: BU and KD + BU get values."""
    ids = _ids(trained_classifier, synth_dir, output_dir=str(tmp_path / "bu"), eps=[16 / 255], attacks=["pgd"])
    ids["classifier_overrides"] = {**ids["classifier_overrides"], "network_def": DROPOUT_NET}
    wf = workflow(bundle, ["detect.yaml"], "infer", **ids)
    wf.initialize()
    wf.run()
    wf.finalize()
    rows = json.loads((tmp_path / "bu" / "detection.json").read_text())
    assert isinstance(wf.parser.get_parsed_content("network").dropout, torch.nn.Dropout)
    bu = {r["detector"]: r for r in rows}
    assert set(bu) == set(DETECTORS)
    for det in ("BU", "KD+BU"):
        assert 0.0 <= bu[det]["auc"] <= 1.0 and 0.0 <= bu[det]["tpr_at_90tnr"] <= 1.0 and not bu[det]["note"]


def test_targets_and_predictions_known_answers():
    from medadv_monai.engines.detection_suite import ScoreColumns
    from medadv_monai.losses.hfc import most_likely_other_class as _other_class
    from medadv_monai.metrics import prediction as predicted_classes

    single = torch.tensor([[2.0], [-0.5], [0.0]])
    assert predicted_classes(single).tolist() == [1, 0, 0]  # logit > 0 (the threshold is already subtracted)
    assert _other_class(single, torch.tensor([1, 0, 0])).tolist() == [0, 1, 1]
    three = torch.tensor([[3.0, 2.0, 1.0], [0.0, 5.0, 4.0]])
    assert predicted_classes(three).tolist() == [0, 1]
    assert _other_class(three, torch.tensor([0, 1])).tolist() == [1, 2]  # the most likely wrong class
    cols = ScoreColumns(kd=torch.arange(4.0).numpy(), bu=None, lid=torch.ones(4, 2).numpy(),
                        maha=torch.zeros(4, 3).numpy())
    both = ScoreColumns.stack([cols.take(torch.tensor([3, 1]).numpy()), cols])
    assert both.kd.tolist() == [3.0, 1.0, 0.0, 1.0, 2.0, 3.0] and both.bu is None and both.maha.shape == (6, 3)
