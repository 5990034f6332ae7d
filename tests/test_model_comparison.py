"""Stage 3 over several models: what a transfer target is shown, the transfer matrix's diagonal equal to the
white-box grid, the trade-off table's training record, and configs/compare.yaml end to end."""

from __future__ import annotations

import csv
import json

import pytest
import torch
from monai.data import Dataset
from torch import nn

from medadv_monai.engines import AttackGridRunner, ModelComparison, expand_grid, load_slice_models
from medadv_monai.errors import MedAdvInputError
from medadv_monai.handlers import SliceModel
from medadv_monai.masks import AttackMaskd
from tests.helpers import ATTACK_EVAL_BUNDLE, bundle_cmd, bundle_copy, run

pytestmark = pytest.mark.usefixtures("one_thread")


class Recording(nn.Module):
    """A single-logit model (mean intensity - 0.5) that keeps every batch it is given."""

    def __init__(self) -> None:
        super().__init__()
        self.seen: list[torch.Tensor] = []

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.seen.append(x.clone())
        return x.flatten(1).mean(1, keepdim=True) - 0.5


def _slice_model(images: torch.Tensor, labels, name: str = "target") -> SliceModel:
    entries = [{"subject": f"s{i // 2}", "slice_index": i % 2, "label": torch.tensor([lab]), "image": img}
               for i, (img, lab) in enumerate(zip(images, labels))]
    return SliceModel(Recording(), Dataset(entries), name=name)


def _batch(n: int = 4, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    x = torch.rand(n, 1, 16, 16, generator=g)
    mask = torch.zeros(n, 1, 16, 16)
    mask[..., 4:12, 4:12] = 1
    x_adv = (x + 0.03 * mask * torch.sign(torch.randn(n, 1, 16, 16, generator=g))).clamp(0, 1)
    return x, x_adv, mask, [f"s{i // 2}" for i in range(n)], [i % 2 for i in range(n)]


def test_target_reading_the_surrogate_input_gets_the_adversarial_image_itself():
    x, x_adv, mask, subjects, slices = _batch()
    target = _slice_model(x, [1, 0, 1, 0])
    cols = target.score(x, x_adv, subjects, slices, mask)
    clean_in, adv_in = target.network.seen
    assert torch.equal(clean_in, x) and torch.equal(adv_in, x_adv)  # bit for bit, as in a white-box run
    assert cols["label"].tolist() == [1, 0, 1, 0]
    assert torch.allclose(cols["linf"], (x_adv - x).flatten(1).abs().amax(1))


def test_target_of_another_modality_gets_the_perturbation_on_its_own_channels():
    x, x_adv, mask, subjects, slices = _batch()
    other = torch.rand(4, 1, 16, 16, generator=torch.Generator().manual_seed(1)) * 0.1 + 0.9  # clipping at 1 happens
    target = _slice_model(other, [0, 1, 1, 0])
    cols = target.score(x, x_adv, subjects, slices, mask)
    adv_in = target.network.seen[1]
    assert torch.allclose(adv_in, (other + (x_adv - x)).clamp(0, 1))
    assert torch.equal(adv_in[mask.expand_as(adv_in) == 0], other[mask.expand_as(other) == 0])  # outside: untouched
    assert float((adv_in - other).abs().max()) <= 0.03 + 1e-6 and float(adv_in.max()) <= 1.0
    # the target's own labels are the truth: clean_correct follows them, not the surrogate's
    expected = ((other.flatten(1).mean(1) - 0.5 > 0).long() == torch.tensor([0, 1, 1, 0]))
    assert torch.equal(cols["clean_correct"].cpu(), expected)


def test_target_errors_name_the_missing_slice_and_the_shape():
    x, x_adv, mask, subjects, slices = _batch()
    target = _slice_model(x[:2], [1, 0])
    with pytest.raises(MedAdvInputError, match=r"no slice 0 of subject 's1'.*same split"):
        target.score(x, x_adv, subjects, slices, mask)
    wide = _slice_model(torch.rand(4, 2, 16, 16), [1, 0, 1, 0], name="two_channels")
    with pytest.raises(MedAdvInputError, match=r"'two_channels' reads inputs of shape \(2, 16, 16\)"):
        wide.score(x, x_adv, subjects, slices, mask)


def test_comparison_refuses_unknown_models_and_targeted_transfer():
    x, *_ = _batch()
    models = {"a": _slice_model(x, [1, 0, 1, 0])}
    masks = {"none": AttackMaskd(keys="mask", output_key="attack_mask", kind="none")}
    cells = expand_grid({"fgsm": {}}, [4 / 255], ["none"])
    with pytest.raises(MedAdvInputError, match=r"targets: \['b'\] are not in models"):
        ModelComparison(cells, models, masks, targets=["b"])
    with pytest.raises(MedAdvInputError, match="untargeted attacks only"):
        ModelComparison(cells + expand_grid({"fgsm": {}}, [4 / 255], ["none"], [True], clean=False), models, masks,
                        targets=["a"]).runner("a")
    with pytest.raises(MedAdvInputError, match=r"models#bad: expected a mapping with ckpt"):
        load_slice_models({"bad": {"checkpoint": "model.pt"}}, "train.yaml")


# ------------------------------------------------------------------------------------------ on a trained model
@pytest.mark.slow
def test_transfer_diagonal_equals_the_white_box_grid(trained_classifier, synth_dir, tmp_path):
    """Model ``a`` scored on its own adversarial images (and on ``b``, the same checkpoint loaded again) gives
    exactly the robust accuracy and ASR of a plain stage-3 grid run of ``a``."""
    ckpt = trained_classifier / "models" / "model.pt"
    models = load_slice_models({"a": {"ckpt": ckpt}, "b": {"ckpt": ckpt}},
                               trained_classifier / "configs" / "train.yaml", split="test",
                               dataset_dir=str(synth_dir), work_dir=str(trained_classifier / "work"))
    masks = {"none": AttackMaskd(keys="mask", output_key="attack_mask", kind="none"),
             "ring": AttackMaskd(keys="mask", output_key="attack_mask", kind="ring", width=2)}
    cells = expand_grid({"pgd": {"steps": 3}}, [8 / 255], list(masks))
    tables = ModelComparison(cells, models, masks, surrogates=["a"], targets=["a", "b"], output_dir=tmp_path / "cmp",
                             batch_size=16, max_slices=40, split="test").run()
    a = models["a"]
    white = AttackGridRunner(cells, a.network, Dataset(a.dataset.data[:40], a.dataset.transform), masks,
                             output_dir=tmp_path / "wb", batch_size=16, classifier_ckpt=ckpt).run()
    white = {s["cell"]: s for s in white}
    transfer = tables["transfer"]
    assert len(transfer) == 2 * 2  # attacked cells x targets
    for row in transfer:
        for key in ("n", "n_asr", "clean_acc", "robust_acc", "asr"):
            assert row[key] == white[row["cell"]][key], (row["cell"], row["target"], key)
    attacked = white["pgd_eps8_none"]
    assert attacked["robust_acc"] < attacked["clean_acc"]  # the attack changed predictions: the check has teeth
    assert {r["whitebox"] for r in transfer if r["target"] == "a"} == {True}
    models_rows = tables["models"]
    assert {(r["method"], r["train_eps_255"]) for r in models_rows} == {("standard", 0.0)}
    out = tmp_path / "cmp"
    assert (out / "models" / "a" / "report.md").is_file() and (out / "figures" / "transfer_pgd_eps8_ring.png").is_file()
    per_sample = list(csv.DictReader((out / "models" / "a" / "per_sample.csv").open()))
    assert {"to_a_adv_correct", "to_b_success", "to_b_label"} <= set(per_sample[0])


@pytest.mark.slow
def test_model_entries_overrides_training_and_errors_that_name_the_entry(trained_classifier, synth_dir, tmp_path):
    ckpt = trained_classifier / "models" / "model.pt"
    config = trained_classifier / "configs" / "train.yaml"
    every = load_slice_models({"a": {"ckpt": ckpt}}, config, overrides={"split_fractions": [0, 0, 1]},
                              dataset_dir=str(synth_dir), work_dir=str(tmp_path / "all"))["a"]
    own = load_slice_models({"a": {"ckpt": ckpt, "overrides": {"split_fractions": [0.7, 0.15, 0.15]}}}, config,
                            overrides={"split_fractions": [0, 0, 1]}, dataset_dir=str(synth_dir),
                            work_dir=str(tmp_path / "own"))["a"]
    subjects = lambda m: {e["subject"] for e in m.dataset.data}  # noqa: E731
    assert len(subjects(every)) == len([p for p in synth_dir.iterdir() if p.is_dir()])  # every subject is a test one
    assert 0 < len(subjects(own)) < len(subjects(every))
    assert every.training == {"method": "standard"}  # the checkpoint's record
    ids = {"dataset_dir": str(synth_dir), "work_dir": str(tmp_path / "all")}
    with pytest.raises(MedAdvInputError, match=r"^models#a: training: the checkpoint records \{'method': 'standard'\}"):
        load_slice_models({"a": {"ckpt": ckpt, "training": {"method": "pgd_at", "eps": 4 / 255}}}, config, **ids)
    old = torch.load(ckpt, weights_only=True)
    del old["training"]  # a checkpoint saved before stage 1 recorded its training
    torch.save(old, tmp_path / "old.pt")
    given = {"method": "pgd_at", "eps": 4 / 255}
    loaded = load_slice_models({"old": {"ckpt": tmp_path / "old.pt", "training": given},
                                "unknown": {"ckpt": tmp_path / "old.pt"}}, config, **ids)
    assert loaded["old"].training == given and loaded["unknown"].training == {}
    with pytest.raises(MedAdvInputError, match=r"^models#a#overrides: \['work_dir'\] are the same for every model"):
        load_slice_models({"a": {"ckpt": ckpt, "overrides": {"work_dir": "elsewhere"}}}, config, **ids)
    with pytest.raises(MedAdvInputError, match=r"^models#gone: .*missing\.pt"):
        load_slice_models({"gone": {"ckpt": tmp_path / "missing.pt"}}, config, **ids)


@pytest.mark.slow
def test_compare_config_runs_end_to_end_and_refuses_a_bad_entry(trained_classifier, synth_dir, tmp_path):
    bundle = bundle_copy(ATTACK_EVAL_BUNDLE, tmp_path / "brats_attack_eval")
    ckpt = str(trained_classifier / "models" / "model.pt")
    settings = {"classifier_bundle": str(trained_classifier), "dataset_dir": str(synth_dir),
                "models": {"standard": {"ckpt": ckpt}, "again": {"ckpt": ckpt}}, "targets": ["standard", "again"],
                "attacks": {"fgsm": {}}, "eps": [4 / 255], "max_slices": 24, "runner#batch_size": 12,
                "output_dir": str(tmp_path / "cmp")}
    proc = run(bundle_cmd(bundle, ["evaluate.yaml", "compare.yaml"], **settings), tmp_path)
    assert proc.returncode == 0, proc.stdout[-1500:] + proc.stderr[-3000:]
    out = tmp_path / "cmp"
    report = (out / "report.md").read_text()
    assert "## Models: clean against robust accuracy" in report and "## Transfer" in report
    assert "| surrogate | standard | again |" in report  # a matrix: rows are surrogates, columns targets
    rows = list(csv.DictReader((out / "transfer.csv").open()))
    assert len(rows) == 3 * 2 * 2  # (fgsm x 3 masks) x surrogates x targets
    comparison = json.loads((out / "comparison.json").read_text())
    assert [r["method"] for r in comparison["models"]][:1] == ["standard"]
    assert list((out / "runs").iterdir())  # TensorBoard: one folder per surrogate

    bad = run(bundle_cmd(bundle, ["evaluate.yaml", "compare.yaml"],
                         **{**settings, "output_dir": str(tmp_path / "bad"), "models": {"x": {"checkpoint": ckpt}}}),
              tmp_path)
    line = [ln for ln in bad.stderr.splitlines() if ln.strip()][-1]
    assert bad.returncode != 0 and line.startswith("error: models#x: expected a mapping with ckpt"), line
