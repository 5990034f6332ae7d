"""The brats_tumour_segmentation bundle end to end on tiny synthetic data: training (MONAI workflow ids, per-region
Dice, TensorBoard), evaluation, and the attack grid through ``python -m monai.bundle run`` (dense attacks, masks,
targets, MedIS), its resume and its errors."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest
import torch

from medadv_monai.handlers import REGION_THRESHOLD_GRID
from tests.helpers import BUNDLES, CLASSIFIER_TRAIN, bundle_cmd, bundle_copy, copy_subjects, run, run_cli, workflow

pytestmark = pytest.mark.slow

SEG_BUNDLE = BUNDLES / "brats_tumour_segmentation"
REGIONS = ("WT", "TC", "ET")


@pytest.fixture(scope="module")
def trained(synth_dir, tmp_path_factory) -> dict:
    """The bundle copied alone (its data definition named by data_config) and trained for 3 epochs at 32x32."""
    bundle = bundle_copy(SEG_BUNDLE, tmp_path_factory.mktemp("seg") / "brats_tumour_segmentation")
    ids = {"dataset_dir": str(synth_dir), "work_dir": str(bundle / "work"), "data_config": str(CLASSIFIER_TRAIN),
           "image_size": [32, 32]}
    wf = workflow(bundle, ["train.yaml"], "train", batch_size=16, **ids, **{"train#trainer#max_epochs": 3})
    wf.initialize()
    assert wf.check_properties() == []  # model-zoo train workflow ids
    wf.run()
    wf.finalize()
    return {"bundle": bundle, "ids": ids}


def test_training_writes_model_region_metrics_and_tensorboard(trained):
    models = trained["bundle"] / "models"
    assert (models / "model.pt").is_file() and (models / "metadata.json").is_file()
    val = json.loads((models / "val_metrics.json").read_text())
    assert val["epoch"] == 3
    for key in ("val_mean_dice", *[f"val_dice_{r}" for r in REGIONS]):
        assert 0.0 <= val[key] <= 1.0, key
    assert list(models.glob("runs/*/events.out.tfevents.*"))
    # region thresholds chosen on validation, saved with the weights
    thresholds = torch.load(models / "model.pt", weights_only=True)["model"]["region_thresholds"]
    for r, t in zip(REGIONS, thresholds.tolist()):
        if f"val_threshold_{r}" in val:  # a region with validation foreground
            assert val[f"val_threshold_{r}"] in REGION_THRESHOLD_GRID
            assert t == pytest.approx(float(torch.logit(torch.tensor(val[f"val_threshold_{r}"]))), abs=1e-5)
    assert "val_threshold_WT" in val
    meta = json.loads((models / "metadata.json").read_text())
    assert meta["network_data_format"]["inputs"]["image"]["spatial_shape"] == [32, 32]


def test_evaluate_writes_per_region_dice(trained):
    wf = workflow(trained["bundle"], ["train.yaml", "evaluate.yaml"], "infer", **trained["ids"],
                  eval_split="training")
    wf.initialize()
    assert wf.check_properties() == []
    wf.run()
    metrics = json.loads((trained["bundle"] / "eval" / "metrics.json").read_text())
    assert metrics["split"] == "training" and metrics["slices"] > 0
    assert {f"training_dice_{r}" for r in REGIONS} <= set(metrics) and "training_mean_dice" in metrics
    assert 0 <= metrics["training_subject_dice_WT"] <= 1  # per subject, over its slices


def test_inference_writes_region_volumes(trained, synth_dir, tmp_path):
    import nibabel as nib

    ids = {k: v for k, v in trained["ids"].items() if k not in ("data_config", "image_size")}
    out = trained["bundle"] / "eval" / "inference"
    wf = workflow(trained["bundle"], ["inference.yaml"], "infer", **ids, infer_split="training",
                  train_overrides={"data_config": str(CLASSIFIER_TRAIN)})
    wf.initialize()
    assert wf.check_properties() == []
    wf.run()
    rows = _rows(out / "predictions.csv")
    subject = rows[0]["subject"]
    volume = nib.load(str(out / f"{subject}_regions.nii.gz")).get_fdata()
    assert volume.shape[:2] == (32, 32) and volume.shape[3] == 3 and set(volume.ravel()) <= {0.0, 1.0}
    z = int(rows[0]["slice_index"])
    assert volume[:, :, z, 0].sum() == int(rows[0]["area_WT"])
    new = trained["bundle"] / "eval" / "new"  # new volumes (a folder of subject folders): their seg is not read
    cases = copy_subjects(synth_dir, tmp_path / "cases", 1)
    cmd = bundle_cmd(trained["bundle"], ["inference.yaml"], **ids, volumes=str(cases), infer_dir=str(new),
                     train_overrides={"data_config": str(CLASSIFIER_TRAIN)})
    proc = run(cmd, trained["bundle"])
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert len(list(new.glob("*_regions.nii.gz"))) == 1


def _rows(path: Path) -> list[dict]:
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def test_attack_grid_end_to_end_and_resume(trained, tmp_path):
    bundle, out = trained["bundle"], tmp_path / "attacks"
    ids = {**trained["ids"], "eval_split": "training", "attack_dir": str(out), "eps": "$[8/255]",
           "attacks": {"pgd_ce": {"attack": "pgd", "loss": "bce", "steps": 3}}, "attack_masks": ["none", "ring"],
           "attack_targets": ["none", "erase", "implant"],
           "medis": {"eps": [8 / 255], "masks": ["none"], "targets": ["none"], "steps": 3, "losses": ["bce", "dice"]}}
    cmd = bundle_cmd(bundle, ["train.yaml", "attack.yaml"], **ids)
    proc = run(cmd, bundle, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    summary = _rows(out / "summary.csv")
    assert [r["cell"] for r in summary][:2] == ["clean", "pgd_ce-none-none-eps8"] and len(summary) == 1 + 6 + 1
    clean = summary[0]
    assert clean["adv_dice_WT"] == clean["clean_dice_WT"]
    samples = _rows(out / "per_sample.csv")
    assert all(float(r["linf"]) <= 8 / 255 + 1e-6 for r in samples)
    assert all(float(r["linf"]) == 0 for r in samples if r["cell"] == "clean")
    erase = [r for r in summary if r["target"] == "erase"]
    assert erase and all("target" in r and r["rog_success_rate"] == "" for r in erase)  # no ROG rule when targeted
    medis = _rows(out / "medis.csv")
    assert [r["loss"] for r in medis] == ["bce", "dice", "fused"]
    assert float(medis[-1]["success_rate"]) >= max(float(r["success_rate"]) for r in medis[:-1])
    report = (out / "report.md").read_text()
    assert "Segmentation under attack" in report and "MedIS" in report
    assert (out / "figures" / "dice_vs_eps.png").is_file() and list(out.glob("figures/overlay_*.png"))
    again = run(cmd, bundle, timeout=600)
    assert again.returncode == 0 and "[segmentation attacks]" not in again.stdout  # every cell reused
    assert _rows(out / "summary.csv") == summary


def test_attack_grid_refuses_an_undefined_mask(trained, tmp_path):
    ids = {**trained["ids"], "eval_split": "training", "attack_dir": str(tmp_path / "a"), "attack_masks": ["halo"]}
    proc = run(bundle_cmd(trained["bundle"], ["train.yaml", "attack.yaml"], **ids), trained["bundle"])
    assert proc.returncode != 0
    assert "['halo']" in proc.stderr and "masks:" in proc.stderr
    assert not (tmp_path / "a").exists()


@pytest.mark.skipif(not torch.distributed.is_available(), reason="torch.distributed is not available")
def test_multi_gpu_train_runs_on_two_gloo_processes(trained, tmp_path):
    """train.yaml + multi_gpu_train.yaml under torchrun (2 CPU processes): rank 0 alone writes the model, its
    validation metrics and TensorBoard."""
    out = tmp_path / "out"
    cmd = bundle_cmd(trained["bundle"], ["train.yaml", "multi_gpu_train.yaml"], **trained["ids"], output_dir=str(out),
                     batch_size=16, **{"train#trainer#max_epochs": 1})
    run_cli(["torch.distributed.run", "--standalone", "--nnodes=1", "--nproc_per_node=2", *cmd[1:]], cwd=tmp_path,
            timeout=900)
    assert (out / "model.pt").is_file()
    assert 0 <= json.loads((out / "val_metrics.json").read_text())["val_dice_WT"] <= 1
    assert len(list((out / "runs").glob("*/events.out.tfevents.*"))) == 1  # rank 0 only
