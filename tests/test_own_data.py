"""Users' own data through every stage by config alone: a FLAIR + T1 only dataset and an MSD Task01 dataset.

Stage 1 is trained with ``python -m monai.bundle run`` and the settings of the data; stages 2 and 3 get only the
dataset folder and the classifier bundle (no ``classifier_overrides``): the modalities, slice size and layout flow
from the settings saved in ``models/model.pt``. Stage 1's inference scores new volumes without a segmentation.
"""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest
import torch

from tests.helpers import (
    ADVGAN_BUNDLE,
    ATTACK_EVAL_BUNDLE,
    CLASSIFIER_BUNDLE,
    bundle_cmd,
    bundle_copy,
    keep_modalities,
    make_msd,
    run,
)

pytestmark = pytest.mark.slow

#: dataset kind -> (stage-1 settings of the data, the model's input modalities)
DATASETS = {
    "flair_t1": ({"all_modalities": ["flair", "t1"], "modalities": ["flair", "t1"]}, ["flair", "t1"]),
    "msd": ({"modalities": ["flair"], "region": "TC"}, ["flair"]),
}


def _ok(proc) -> None:
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]


@pytest.fixture(scope="module", params=list(DATASETS))
def stages(request, synth_dir, tmp_path_factory):
    """The three bundles side by side, run on the dataset: stage 1 trained and evaluated, stage 2 trained, stage 3
    evaluated. Returns (root, dataset dir, kind)."""
    kind = request.param
    root = tmp_path_factory.mktemp(kind)
    data = (keep_modalities(synth_dir, root / "data", ("flair", "t1")) if kind == "flair_t1"
            else make_msd(synth_dir, root / "Task01_BrainTumour"))
    cls = bundle_copy(CLASSIFIER_BUNDLE, root / "brats_slice_classifier")
    gan = bundle_copy(ADVGAN_BUNDLE, root / "brats_advgan")
    ev = bundle_copy(ATTACK_EVAL_BUNDLE, root / "brats_attack_eval")
    settings = {"dataset_dir": str(data), "image_size": [32, 32], **DATASETS[kind][0]}
    _ok(run(bundle_cmd(cls, ["train.yaml"], **settings, batch_size=16, **{"train#trainer#max_epochs": 3}), root))
    _ok(run(bundle_cmd(cls, ["train.yaml", "evaluate.yaml"], **settings), root))
    upstream = {"dataset_dir": str(data)}  # nothing else: the rest flows from models/model.pt
    _ok(run(bundle_cmd(gan, ["train.yaml"], **upstream, batch_size=16, d_warmup_iterations=2,
                       **{"train#trainer#max_epochs": 1}), root))
    _ok(run(bundle_cmd(ev, ["evaluate.yaml"], **upstream, attacks={"fgsm": {}}, eps=[8 / 255], split="training",
                       generator_ckpt=str(gan / "models" / "generator.pt")), root))
    return root, data, kind


def test_stage_1_saves_what_it_takes_in_and_scores_its_test_split(stages):
    root, _, kind = stages
    models = root / "brats_slice_classifier" / "models"
    saved = torch.load(models / "model.pt", weights_only=True)["settings"]
    assert saved["modalities"] == DATASETS[kind][1] and saved["image_size"] == [32, 32]
    meta = json.loads((models / "metadata.json").read_text())["network_data_format"]["inputs"]["image"]
    assert meta["num_channels"] == len(DATASETS[kind][1]) and meta["spatial_shape"] == [32, 32]
    assert list(meta["channel_def"].values()) == [m.upper() for m in DATASETS[kind][1]]
    metrics = json.loads((root / "brats_slice_classifier" / "eval" / "metrics.json").read_text())
    assert metrics["split"] == "test" and 0 <= metrics["test_auc"] <= 1 and "val_auc" not in metrics


def test_stages_2_and_3_take_the_models_inputs_without_overrides(stages):
    root, _, kind = stages
    gen = torch.load(root / "brats_advgan" / "models" / "generator.pt", weights_only=True)
    assert gen["advgan_config"]["modalities"] == DATASETS[kind][1]
    summary = json.loads((root / "brats_attack_eval" / "eval" / "summary.json").read_text())
    assert {s["attack"] for s in summary} >= {"clean", "fgsm", "advgan"} and all(s["n"] > 0 for s in summary)
    seg = [s for s in summary if s["attack"] == "fgsm" and s["mask"] == "seg"]
    assert seg and all(s["n"] > 0 for s in seg)


def test_inference_scores_new_volumes_without_a_segmentation(stages, tmp_path):
    root, data, kind = stages
    cls = root / "brats_slice_classifier"
    if kind == "msd":
        volumes = str(data)  # the task folder: its 'test' list
    else:
        volumes = tmp_path / "new"
        first = sorted(p for p in data.iterdir() if p.is_dir())[0]
        keep_modalities(data, volumes, ("flair", "t1"), n=1)
        (volumes / first.name / f"{first.name}_seg.nii.gz").unlink()  # new cases come without one
    _ok(run(bundle_cmd(cls, ["inference.yaml"], volumes=str(volumes), infer_dir=str(tmp_path / "out")), root))
    with open(tmp_path / "out" / "predictions.csv") as f:
        rows = list(csv.DictReader(f))
    assert rows and all(r["label"] == "" and r["prediction"] in ("0", "1") for r in rows)
    assert len({r["subject"] for r in rows}) == 1 and all(0 <= float(r["probability"]) <= 1 for r in rows)


def test_a_model_scores_an_external_test_set_without_a_split(stages, tmp_path):
    root, data, kind = stages
    cls = root / "brats_slice_classifier"
    settings = {"dataset_dir": str(data), "split_fractions": [0, 0, 1], "work_dir": str(tmp_path / "work"),
                "eval_dir": str(tmp_path / "eval"), "image_size": [32, 32], **DATASETS[kind][0]}
    _ok(run(bundle_cmd(cls, ["train.yaml", "evaluate.yaml"], **settings), root))
    metrics = json.loads((tmp_path / "eval" / "metrics.json").read_text())
    with open(tmp_path / "eval" / "predictions.csv") as f:
        subjects = {r["subject"] for r in csv.DictReader(f)}
    assert len(subjects) == 8 and metrics["slices"] > 0  # every subject of the dataset
    assert Path(settings["work_dir"], "datalist.json").is_file()
