"""The brats_advgan bundle end to end on tiny synthetic data, through MONAI's bundle machinery."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest
import torch

from medadv_monai.errors import MedAdvInputError, find_input_error
from medadv_monai.networks import AdvGANGenerator, SliceClassifier
from tests.helpers import ADVGAN_BUNDLE as BUNDLE
from tests.helpers import CLASSIFIER_BUNDLE, bundle_copy, workflow

EPS = 8 / 255
pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def classifier_ckpt(synth_config, tmp_path_factory) -> Path:
    """A slice classifier trained for a few steps on the cached training slices, saved as a plain state dict."""
    cache, datalist = synth_config.get_parsed_content("slice_cache"), synth_config.get_parsed_content("datalist")
    ds = cache.dataset(datalist["training"], modalities=["t2"])
    x = torch.stack([ds[i]["image"] for i in range(len(ds))])
    y = torch.stack([ds[i]["label"] for i in range(len(ds))])
    torch.manual_seed(0)
    net = SliceClassifier(in_channels=1)
    opt = torch.optim.Adam(net.parameters(), 3e-3)
    for step in range(15):
        idx = torch.randperm(len(x))[:32]
        loss = torch.nn.functional.binary_cross_entropy_with_logits(net(x[idx]), y[idx])
        opt.zero_grad()
        loss.backward()
        opt.step()
    path = tmp_path_factory.mktemp("cls") / "model.pt"
    torch.save(net.state_dict(), path)
    return path


@pytest.fixture(scope="module")
def settings(synth_dir, synth_config, classifier_ckpt) -> dict:
    """Overrides: the tiny data, the classifier's work dir (same datalist and slice cache), 32x32 slices."""
    return {"dataset_dir": str(synth_dir), "work_dir": synth_config["work_dir"],
            "classifier_bundle": str(CLASSIFIER_BUNDLE),
            "classifier_overrides": {"image_size": [32, 32]},
            "classifier_ckpt": str(classifier_ckpt), "batch_size": 16, "d_warmup_iterations": 2}


@pytest.fixture(scope="module")
def trained(settings, tmp_path_factory) -> Path:
    """The bundle trained for 2 epochs through ConfigWorkflow (run from the bundle copy, not the cwd)."""
    bundle = bundle_copy(BUNDLE, tmp_path_factory.mktemp("gan") / "brats_advgan")
    wf = workflow(bundle, ["train.yaml"], "train", **settings, **{"train#trainer#max_epochs": 2})
    wf.initialize()
    assert not wf.check_properties()
    cache = wf.parser.get_parsed_content("slice_cache")
    assert not cache.missing(wf.parser.get_parsed_content("datalist")["training"])  # the classifier's cache is hit
    wf.run()
    wf.finalize()
    return bundle


def infer_settings(settings: dict, **ids) -> dict:
    """The inference config's own ids, and every other training setting through train_overrides."""
    own = {k: settings[k] for k in ("dataset_dir",)}
    return {**own, "train_overrides": {k: v for k, v in settings.items() if k not in own}, **ids}


def test_train_writes_generator_checkpoints_and_tensorboard(trained):
    models = trained / "models"
    best = torch.load(models / "generator.pt", weights_only=True)
    assert set(best) == {"generator", "advgan_config"}
    assert best["advgan_config"]["eps"] == pytest.approx(EPS) and best["advgan_config"]["mask_kind"] == "none"
    assert best["advgan_config"]["modalities"] == ["t2"]
    AdvGANGenerator(in_channels=1).load_state_dict(best["generator"])
    last = torch.load(models / "checkpoints" / "checkpoint_epoch=2.pt", weights_only=True)
    assert {"generator", "discriminator", "g_optimizer", "d_optimizer", "advgan_config", "trainer"} <= set(last)
    assert last["trainer"]["iteration"] == 2 * last["trainer"]["epoch_length"]

    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    (events,) = list((models / "runs").glob("*/events.out.tfevents.*"))
    acc = EventAccumulator(str(events))
    acc.Reload()
    tags = set(acc.Tags()["scalars"])
    assert {"loss_g", "loss_d", "loss_adv", "loss_gan", "fool_rate", "val_asr", "val_robust_acc", "val_mean_linf",
            "val_mean_l2", "val_mean_ssim"} <= tags
    asr = [e.value for e in acc.Scalars("val_asr")]
    assert len(asr) == 2 and all(0 <= a <= 1 for a in asr)
    assert all(e.value <= EPS + 1e-6 for e in acc.Scalars("val_mean_linf"))
    assert "advgan/clean_adv_diff_mask" in acc.Tags()["images"]


@pytest.mark.parametrize("mask_kind", ["seg", "ring"])
def test_inference_keeps_the_budget_and_the_mask(trained, settings, mask_kind):
    """The trained generator's outputs on the test split: |x' - x| <= eps m, x' in [0, 1], x' == x where m == 0."""
    out_dir = trained / "eval" / mask_kind
    wf = workflow(trained, ["inference.yaml"], "infer", **infer_settings(settings, mask_kind=mask_kind,
                                                                          infer_dir=str(out_dir), reference_attacks={}))
    wf.initialize()
    assert not wf.check_properties()
    wf.run()
    wf.finalize()
    adv = torch.from_numpy(np.load(out_dir / "adversarial.npy"))
    ds = wf.parser.get_parsed_content("dataset")
    x = torch.stack([ds[i]["image"] for i in range(len(ds))])
    tumour = torch.stack([ds[i]["mask"] for i in range(len(ds))])
    from medadv_monai.masks import make_attack_mask

    m = make_attack_mask(mask_kind, tumour, width=3, like=x)
    assert adv.shape == x.shape and m.sum() > 0
    assert ((adv - x).abs() <= EPS * m + 1e-6).all()
    assert adv.min() >= 0 and adv.max() <= 1
    assert torch.equal(adv.masked_select(m == 0), x.masked_select(m == 0))
    with open(out_dir / "samples.csv") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == len(ds)
    assert all(0 <= float(r["clean_prob"]) <= 1 and 0 <= float(r["adv_prob"]) <= 1 for r in rows)
    metrics = json.loads((out_dir / "metrics.json").read_text())
    assert metrics["split"] == "test" and metrics["mask_kind"] == mask_kind and metrics["slices"] == len(ds)
    assert 0 <= metrics["robust_acc"] <= 1 and metrics["mean_linf"] <= EPS + 1e-6


def test_inference_compares_with_pgd10(trained, settings):
    out_dir = trained / "eval" / "pgd"
    wf = workflow(trained, ["inference.yaml"], "infer", **infer_settings(settings, infer_dir=str(out_dir)))
    wf.initialize()
    wf.run()
    wf.finalize()
    metrics = json.loads((out_dir / "metrics.json").read_text())
    for key in ("asr", "robust_acc", "mean_linf", "mean_l2", "mean_ssim"):
        assert key in metrics and f"pgd10_{key}" in metrics
    assert metrics["pgd10_clean_acc"] == metrics["clean_acc"]
    with open(out_dir / "samples.csv") as f:
        assert {"pgd10_success", "pgd10_adv_prob", "pgd10_linf"} <= set(next(csv.DictReader(f)))


def test_generator_with_another_eps_is_refused(trained, settings):
    wf = workflow(trained, ["inference.yaml"], "infer", **infer_settings(settings, eps=4 / 255))
    with pytest.raises(Exception) as info:
        wf.initialize()
    err = find_input_error(info.value)
    assert isinstance(err, MedAdvInputError)
    assert "generator.pt" in str(err) and "8/255" in str(err) and "4/255" in str(err)


def test_bad_config_names_are_clear(trained, settings):
    for override, match in [({"mask_kind": "tumour"}, "got 'tumour'"), ({"gan_loss": "wgan"}, "GAN loss"),
                            ({"eps": 1.5}, "eps must be")]:
        wf = workflow(trained, ["train.yaml"], "train", **settings, **override)
        with pytest.raises(Exception) as info:
            wf.initialize()  # attaching the checkpoint handlers builds the settings and the trainer
            wf.parser.get_parsed_content("train#trainer")
        err = find_input_error(info.value)
        assert isinstance(err, MedAdvInputError) and match in str(err), info.value


def test_training_resumes_from_its_last_checkpoint(trained, settings):
    wf = workflow(trained, ["train.yaml"], "train", **settings, **{"train#trainer#max_epochs": 3})
    wf.initialize()
    wf.run()
    trainer = wf.parser.get_parsed_content("train#trainer")
    wf.finalize()
    resume = wf.parser.get_parsed_content("train#checkpointing")[0]
    assert resume.loaded is not None and resume.loaded.name == "checkpoint_epoch=2.pt"
    assert trainer.state.epoch == 3 and trainer.state.iteration == 3 * len(trainer.data_loader)
    assert (trained / "models" / "checkpoints" / "checkpoint_epoch=3.pt").is_file()
