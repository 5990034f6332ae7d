"""The frame every bundle shares: MONAI's workflow properties, and each bundle running on its own.

Each bundle declares the ids of a model-zoo workflow (``ConfigWorkflow.check_properties()`` returns nothing), and
each bundle folder copied alone, with no sibling bundle beside it, runs its evaluation or inference config when
its inputs (the model under attack, its checkpoint, the slices) are passed as ids.
"""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest
import torch

from medadv_monai.networks import AdvGANGenerator, AdvGANSettings
from tests.helpers import ADVGAN_BUNDLE, ATTACK_EVAL_BUNDLE, CLASSIFIER_BUNDLE, bundle_copy, workflow

pytestmark = pytest.mark.slow

EPS = 8 / 255
#: the trained classifier of the ``trained_classifier`` fixture, as a network_def id (train.yaml's, on t2)
CLASSIFIER_DEF = {"_target_": "medadv_monai.networks.SliceClassifier", "in_channels": 1, "channels": [32, 64, 128],
                  "batch_norm": True}
ALL_MODALITIES = ["t1", "t1ce", "t2", "flair"]


@pytest.fixture(scope="module")
def inputs(trained_classifier, synth_dir) -> dict:
    """What a stage-2/3 bundle needs when it runs alone: the classifier and the cached test slices."""
    from tests.helpers import classifier_config

    parser = classifier_config(synth_dir, trained_classifier / "work")
    slices = parser.get_parsed_content("slice_cache").slices(parser.get_parsed_content("datalist")["test"])
    assert slices
    return {"classifier_ckpt": str(trained_classifier / "models" / "model.pt"), "modalities": ["t2"],
            "all_modalities": ALL_MODALITIES, "slices": slices}


def _check(bundle: Path, files: list[str], kind: str, **ids) -> None:
    wf = workflow(bundle, files, kind, **ids)
    wf.initialize()
    assert wf.check_properties() == [], (bundle.name, files)


def test_every_config_declares_the_workflow_properties(trained_classifier, synth_dir, tmp_path):
    data = {"dataset_dir": str(synth_dir)}
    shaping = {"image_size": [32, 32]}
    cls = bundle_copy(CLASSIFIER_BUNDLE, tmp_path / "brats_slice_classifier")
    # training gets a fresh output_dir (initializing it opens a TensorBoard writer there; the shared fixture stays as
    # it is); evaluation and inference load the trained model in `initialize`
    own = {**data, "work_dir": str(trained_classifier / "work"), "output_dir": str(trained_classifier / "models")}
    _check(cls, ["train.yaml"], "train", **{**own, "output_dir": str(tmp_path / "models")}, **shaping)
    _check(cls, ["train.yaml", "evaluate.yaml"], "infer", **own, **shaping)
    _check(cls, ["inference.yaml"], "infer", **own, train_overrides=shaping)
    classifier = {"classifier_bundle": str(trained_classifier), "classifier_overrides": shaping}
    upstream = {**data, **classifier}
    gan = bundle_copy(ADVGAN_BUNDLE, tmp_path / "brats_advgan")
    _check(gan, ["train.yaml"], "train", **upstream)
    _save_generator(gan / "models" / "generator.pt")
    _check(gan, ["inference.yaml"], "infer", **data, train_overrides=classifier)
    ev = bundle_copy(ATTACK_EVAL_BUNDLE, tmp_path / "brats_attack_eval")
    _check(ev, ["evaluate.yaml"], "infer", **upstream)
    _check(ev, ["evaluate.yaml", "sweep.yaml"], "infer", **upstream)
    _check(ev, ["inference.yaml"], "infer", **data, eval_overrides=classifier)


def _save_generator(path: Path, modalities=("t2",)) -> Path:
    """A (untrained) generator checkpoint in the brats_advgan format: weights and the attack it is for."""
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(0)
    net = AdvGANGenerator(in_channels=len(modalities), channels=[16, 32, 64, 128, 128], num_res_units=0)
    torch.save({"generator": net.state_dict(),
                "advgan_config": AdvGANSettings(eps=EPS, modalities=list(modalities)).state_dict()}, path)
    return path


def _run(bundle: Path, files: list[str], **ids) -> None:
    wf = workflow(bundle, files, "infer", **ids)
    wf.initialize()
    wf.run()
    wf.finalize()


def test_classifier_bundle_alone_runs_inference(trained_classifier, synth_dir, tmp_path):
    bundle = bundle_copy(CLASSIFIER_BUNDLE, tmp_path / "alone" / "brats_slice_classifier")
    _run(bundle, ["inference.yaml"], dataset_dir=str(synth_dir), work_dir=str(tmp_path / "work"),
         output_dir=str(trained_classifier / "models"), train_overrides={"image_size": [32, 32]})
    with open(bundle / "eval" / "inference" / "predictions.csv") as f:
        rows = list(csv.DictReader(f))
    assert rows and all(0 <= float(r["probability"]) <= 1 for r in rows)


def test_advgan_bundle_alone_runs_inference(inputs, tmp_path):
    bundle = bundle_copy(ADVGAN_BUNDLE, tmp_path / "alone" / "brats_advgan")
    assert not (bundle.parent / "brats_slice_classifier").exists()
    ckpt = _save_generator(tmp_path / "generator.pt")
    out = tmp_path / "out"
    _run(bundle, ["inference.yaml"], generator_ckpt=str(ckpt), infer_slices=inputs["slices"], infer_dir=str(out),
         reference_attacks={}, train_overrides={"classifier_def": CLASSIFIER_DEF, "classifier_ckpt":
                                                inputs["classifier_ckpt"], "modalities": inputs["modalities"],
                                                "all_modalities": inputs["all_modalities"]})
    with open(out / "samples.csv") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == len(inputs["slices"]) and all(float(r["linf"]) <= EPS + 1e-6 for r in rows)
    assert json.loads((out / "metrics.json").read_text())["n"] == len(rows)


def test_attack_eval_bundle_alone_runs_its_grid(inputs, tmp_path):
    bundle = bundle_copy(ATTACK_EVAL_BUNDLE, tmp_path / "alone" / "brats_attack_eval")
    out = tmp_path / "out"
    _run(bundle, ["evaluate.yaml"], network_def=CLASSIFIER_DEF, classifier_ckpt=inputs["classifier_ckpt"],
         modalities=inputs["modalities"], all_modalities=inputs["all_modalities"], slices=inputs["slices"],
         generator_ckpt=str(_save_generator(tmp_path / "generator.pt")), attacks={"fgsm": {}}, eps=[EPS],
         output_dir=str(out))
    summary = json.loads((out / "summary.json").read_text())
    assert {s["attack"] for s in summary} == {"clean", "fgsm", "advgan"}
    assert all(s["n"] == len(inputs["slices"]) for s in summary)


def test_attack_eval_bundle_alone_runs_inference(inputs, tmp_path):
    bundle = bundle_copy(ATTACK_EVAL_BUNDLE, tmp_path / "alone" / "brats_attack_eval")
    out = tmp_path / "out"
    _run(bundle, ["inference.yaml"], attack="pgd", attack_kwargs={"steps": 3}, eps=EPS, mask="seg", infer_dir=str(out),
         eval_overrides={"network_def": CLASSIFIER_DEF, "classifier_ckpt": inputs["classifier_ckpt"],
                         "modalities": inputs["modalities"], "all_modalities": inputs["all_modalities"],
                         "slices": inputs["slices"]})
    with open(out / "samples.csv") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == len(inputs["slices"])
    for r in rows:  # the seg mask: tumour-free slices are untouched
        assert float(r["linf"]) <= EPS + 1e-6 and (r["label"] == "1" or float(r["linf"]) == 0.0)
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["attack"] == "pgd" and metrics["mask"] == "seg" and metrics["n"] == len(rows)
