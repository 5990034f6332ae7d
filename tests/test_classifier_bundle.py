"""The brats_slice_classifier bundle end to end on tiny synthetic data, through MONAI's bundle machinery."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest
import torch

from medadv_monai.networks import SliceClassifier
from tests.helpers import CLASSIFIER_BUNDLE as BUNDLE
from tests.helpers import bundle_copy, run_cli, workflow

pytestmark = pytest.mark.slow


def overrides(synth_dir: Path, work: Path, **extra) -> dict:
    return {"dataset_dir": str(synth_dir), "work_dir": str(work), "image_size": [32, 32], "batch_size": 16, **extra}


@pytest.fixture(scope="module")
def trained(trained_classifier):
    """The bundle trained through ConfigWorkflow (shared with other test modules)."""
    return trained_classifier


def test_train_writes_checkpoints_and_tensorboard(trained):
    models = trained / "models"
    state = torch.load(models / "model.pt", weights_only=True)
    net = SliceClassifier(in_channels=1)
    net.load_state_dict(state["model"])  # the best model: the configured network's weights, and what it takes in
    assert state["settings"]["modalities"] == ["t2"] and state["settings"]["image_size"] == [32, 32]
    assert state["training"] == {"method": "standard"}  # how it was trained, for stage 3's model comparison
    last = torch.load(models / "checkpoints" / "checkpoint_epoch=8.pt", weights_only=True)
    assert {"model", "optimizer", "lr_scheduler", "trainer"} <= set(last)
    assert all(torch.equal(v, last["model"][k]) for k, v in state["model"].items())  # select_model: last
    assert last["trainer"]["iteration"] == 8 * last["trainer"]["epoch_length"]

    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    (events,) = list((models / "runs").glob("*/events.out.tfevents.*"))
    acc = EventAccumulator(str(events))
    acc.Reload()
    tags = set(acc.Tags()["scalars"])
    assert {"train_loss", "val_auc", "val_acc", "val_sensitivity", "val_specificity"} <= tags
    aucs = [e.value for e in acc.Scalars("val_auc")]
    assert len(aucs) == 8 and all(0 <= a <= 1 for a in aucs)
    losses = [e.value for e in acc.Scalars("train_loss")]
    assert all(torch.isfinite(torch.tensor(losses)))
    assert acc.Tags()["images"]  # TensorBoardImageHandler wrote the validation images


def test_evaluate_and_inference_from_another_directory(trained, synth_dir, tmp_path):
    settings = overrides(synth_dir, trained / "work")
    args = [f"--{k}={json.dumps(v) if not isinstance(v, str) else v}" for k, v in settings.items()]
    files = lambda *names: "[" + ",".join(f"'{trained / 'configs' / n}'" for n in names) + "]"  # noqa: E731
    run_cli(["monai.bundle", "run", "--config_file", files("train.yaml", "evaluate.yaml"),
             "--bundle_root", str(trained), *args], cwd=tmp_path)
    metrics = json.loads((trained / "eval" / "metrics.json").read_text())
    assert metrics["split"] == "test" and metrics["slices"] > 0
    for key in ("test_auc", "test_acc", "test_sensitivity", "test_specificity"):  # named by the split
        assert 0.0 <= metrics[key] <= 1.0, key
    with open(trained / "eval" / "predictions.csv") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == metrics["slices"]
    assert set(rows[0]) == {"subject", "slice_index", "label", "probability", "prediction"}
    assert all(r["prediction"] == str(int(float(r["probability"]) >= 0.5)) for r in rows)
    assert all(0.0 <= float(r["probability"]) <= 1.0 and r["label"] in ("0", "1") for r in rows)
    assert len({(r["subject"], r["slice_index"]) for r in rows}) == len(rows)  # one row per slice

    own = ("dataset_dir", "work_dir")  # inference.yaml runs on its own; other train.yaml ids go via train_overrides
    wf = workflow(trained, ["inference.yaml"], "infer", **{k: settings[k] for k in own},
                  train_overrides={k: v for k, v in settings.items() if k not in own})
    wf.initialize()
    assert not wf.check_properties()
    wf.run()
    wf.finalize()
    with open(trained / "eval" / "inference" / "predictions.csv") as f:
        assert len(list(csv.DictReader(f))) == len(rows)


def test_evaluate_workflow_properties(trained, synth_dir):
    wf = workflow(trained, ["train.yaml", "evaluate.yaml"], "infer", **overrides(synth_dir, trained / "work"))
    wf.initialize()
    assert not wf.check_properties()


def test_verify_net_in_out_and_torchscript_export(trained, tmp_path):
    cfg, meta = str(trained / "configs" / "train.yaml"), str(trained / "models" / "metadata.json")  # the model's
    run_cli(["monai.bundle", "verify_net_in_out", "network_def", "--meta_file", meta, "--config_file", cfg,
             "--bundle_root", str(trained)], cwd=tmp_path)
    ts = tmp_path / "model.ts"
    run_cli(["monai.bundle", "ckpt_export", "network_def", "--filepath", str(ts), "--ckpt_file",
             str(trained / "models" / "model.pt"), "--key_in_ckpt", "model", "--meta_file", meta,
             "--config_file", cfg, "--bundle_root", str(trained)], cwd=tmp_path)
    scripted = torch.jit.load(str(ts))
    net = SliceClassifier(in_channels=1)
    net.load_state_dict(torch.load(trained / "models" / "model.pt", weights_only=True)["model"])
    net.eval()
    x = torch.rand(2, 1, 32, 32)
    torch.testing.assert_close(scripted(x), net(x))


def test_modality_swap_trains_a_two_channel_model(synth_dir, tmp_path):
    bundle = bundle_copy(BUNDLE, tmp_path / "brats_slice_classifier")
    wf = workflow(bundle, ["train.yaml"], "train", **overrides(
        synth_dir, tmp_path / "work", modalities=["t1ce", "flair"], **{"train#trainer#max_epochs": 1}))
    wf.initialize()
    wf.run()
    wf.finalize()
    state = torch.load(bundle / "models" / "model.pt", weights_only=True)
    assert state["model"]["features.0.weight"].shape[1] == 2 and state["settings"]["modalities"] == ["t1ce", "flair"]
    meta = json.loads((bundle / "models" / "metadata.json").read_text())["network_data_format"]["inputs"]["image"]
    assert meta["num_channels"] == 2 and meta["channel_def"] == {"0": "T1CE", "1": "FLAIR"}
    run_cli(["monai.bundle", "verify_net_in_out", "network_def", "--meta_file",
             str(bundle / "models" / "metadata.json"), "--config_file", str(bundle / "configs" / "train.yaml"),
             "--bundle_root", str(bundle),
             "--modalities", "['t1ce','flair']"], cwd=tmp_path)


def test_training_resumes_from_its_last_checkpoint(synth_dir, tmp_path):
    bundle = bundle_copy(BUNDLE, tmp_path / "brats_slice_classifier")
    settings = overrides(synth_dir, tmp_path / "work")
    for epochs in (1, 2):
        wf = workflow(bundle, ["train.yaml"], "train", **settings, **{"train#trainer#max_epochs": epochs})
        wf.initialize()
        wf.run()
        trainer = wf.parser.get_parsed_content("train#trainer")
        wf.finalize()
    resume = wf.parser.get_parsed_content("train#checkpointing")[0]
    assert resume.loaded is not None and resume.loaded.name == "checkpoint_epoch=1.pt"
    assert trainer.state.epoch == 2 and trainer.state.iteration == 2 * len(trainer.data_loader)
    assert (bundle / "models" / "checkpoints" / "checkpoint_epoch=2.pt").is_file()


@pytest.mark.skipif(not torch.distributed.is_available(), reason="torch.distributed is not available")
def test_multi_gpu_config_runs_two_gloo_processes_on_cpu(synth_dir, tmp_path):
    bundle = bundle_copy(BUNDLE, tmp_path / "brats_slice_classifier")
    settings = overrides(synth_dir, tmp_path / "work", **{"train#trainer#max_epochs": 1})
    args = [f"--{k}={json.dumps(v) if not isinstance(v, str) else v}" for k, v in settings.items()]
    files = f"['{bundle / 'configs' / 'train.yaml'}','{bundle / 'configs' / 'multi_gpu_train.yaml'}']"
    run_cli(["torch.distributed.run", "--standalone", "--nnodes=1", "--nproc_per_node=2", "-m", "monai.bundle",
             "run", "--config_file", files, "--bundle_root", str(bundle), *args], cwd=tmp_path)
    assert (bundle / "models" / "model.pt").is_file()
    assert len(list((bundle / "models" / "runs").glob("*/events.out.tfevents.*"))) == 1  # rank 0 only
