"""AdvGAN networks, losses, settings, trainer step invariants and its evaluation by the attack evaluator."""

from __future__ import annotations

import csv
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from ignite.engine import Events
from torch.utils.data import DataLoader

from medadv_monai.attacks import AdversarialInferer
from medadv_monai.engines import AdvGANTrainer, AttackEvaluator, advgan_scalars
from medadv_monai.errors import MedAdvInputError
from medadv_monai.handlers import AttackImageGrid, AttackSummary, PerSampleRecorder
from medadv_monai.losses import (
    AdvGANDiscriminatorLoss,
    AdvGANGeneratorLoss,
    attack_loss,
    discriminator_loss,
    generator_gan_loss,
    gradient_penalty,
    perturbation_loss,
)
from medadv_monai.masks import AttackMaskd
from medadv_monai.networks import (
    AdvGANGenerator,
    AdvGANSettings,
    PatchDiscriminator,
    SliceClassifier,
    load_generator_checkpoint,
)

EPS = 8 / 255


# ---------------------------------------------------------------------------------------------- networks
@pytest.mark.parametrize("channels", [1, 2])
def test_generator_keeps_the_input_shape_and_treats_samples_independently(channels):
    torch.manual_seed(0)
    g = AdvGANGenerator(in_channels=channels).train()
    x = torch.rand(3, channels, 32, 32)
    out = g(x)
    assert out.shape == x.shape
    torch.testing.assert_close(g(x[1:2]), out[1:2], atol=1e-5, rtol=1e-5)  # instance norm: no batch coupling


def test_generator_3d_and_out_channels():
    g = AdvGANGenerator(in_channels=2, out_channels=1, spatial_dims=3, channels=(4, 8))
    assert g(torch.rand(1, 2, 8, 16, 16)).shape == (1, 1, 8, 16, 16)


def test_patch_discriminator_gives_patch_logits_and_spectral_norm_bounds_weights():
    torch.manual_seed(0)
    d = PatchDiscriminator(in_channels=1, channels=(8, 16, 32), spectral_norm=True).train()
    x = torch.rand(2, 1, 32, 32)
    for _ in range(30):  # power iterations converge while it runs in train mode
        out = d(x)
    assert out.shape == (2, 1, 4, 4)
    convs = [m for m in d.modules() if isinstance(m, torch.nn.Conv2d)]
    assert len(convs) == 4
    for conv in convs:
        sigma = torch.linalg.matrix_norm(conv.weight.detach().flatten(1), ord=2)
        assert sigma == pytest.approx(1.0, abs=0.05)
    plain = PatchDiscriminator(in_channels=1, spectral_norm=False)
    assert not any("parametrizations" in k for k in plain.state_dict())


# ---------------------------------------------------------------------------------------------- losses
def test_cw_attack_loss_single_logit_and_two_class_agree():
    z = torch.tensor([[3.0], [-1.0], [0.5], [-4.0]])
    y = torch.tensor([1, 1, 0, 0])
    expected = torch.clamp((2 * y - 1) * z[:, 0] + 1.0, min=0)  # max(s z + kappa, 0)
    torch.testing.assert_close(attack_loss(z, y, kappa=1.0), expected)
    two = torch.cat([torch.zeros_like(z), z], dim=1)  # logits (0, z) are the same binary model
    for kind in ("cw", "ce"):
        torch.testing.assert_close(attack_loss(two, y, kind=kind, kappa=1.0), attack_loss(z, y, kind=kind, kappa=1.0))
        # untargeted away from y == targeted towards 1 - y
        torch.testing.assert_close(attack_loss(z, y, kind=kind), attack_loss(z, 1 - y, kind=kind, targeted=True))
    assert attack_loss(z, y)[1] == 0  # already fooled (label 1, logit < 0): no loss


def test_ce_attack_loss_is_minus_log_one_minus_p_label_and_ce_when_targeted():
    torch.manual_seed(0)
    z, y = torch.randn(5, 3), torch.tensor([0, 1, 2, 1, 0])
    p_y = z.softmax(1).gather(1, y[:, None])[:, 0]
    torch.testing.assert_close(attack_loss(z, y, kind="ce"), -torch.log1p(-p_y))
    torch.testing.assert_close(attack_loss(z, y, kind="ce", targeted=True), F.cross_entropy(z, y, reduction="none"))
    margin = z.gather(1, y[:, None])[:, 0] - z.masked_fill(F.one_hot(y, 3).bool(), -1e9).amax(1)
    torch.testing.assert_close(attack_loss(z, y, kind="cw"), margin.clamp_min(0))


def test_attack_loss_rejects_bad_names_and_labels():
    with pytest.raises(MedAdvInputError, match="attack loss: expected one of"):
        attack_loss(torch.zeros(2, 1), torch.zeros(2), kind="hinge")
    with pytest.raises(MedAdvInputError, match=r"class ids in \[0, 1\]"):
        attack_loss(torch.zeros(2, 1), torch.tensor([0, 2]))
    with pytest.raises(MedAdvInputError, match=r"\(N, 1\) or \(N, K\)"):
        attack_loss(torch.zeros(2), torch.zeros(2))


@pytest.mark.parametrize("kind", ["hinge", "lsgan", "bce"])
def test_gan_losses(kind):
    real, fake = torch.tensor([2.0, 0.5]), torch.tensor([0.5, -3.0])
    d = discriminator_loss(real, fake, kind)
    g = generator_gan_loss(fake, kind)
    if kind == "hinge":
        assert d.item() == pytest.approx(((0 + 0.5) / 2) + ((1.5 + 0) / 2))
        assert g.item() == pytest.approx(1.25)
    elif kind == "lsgan":
        assert d.item() == pytest.approx(0.5 * ((1 + 0.25) / 2) + 0.5 * ((0.25 + 9) / 2))
        assert g.item() == pytest.approx(0.5 * ((0.25 + 16) / 2))
    else:
        assert d.item() == pytest.approx((F.softplus(-real).mean() + F.softplus(fake).mean()).item())
        assert g.item() == pytest.approx(F.softplus(-fake).mean().item())
    with pytest.raises(MedAdvInputError, match="GAN loss"):
        discriminator_loss(real, fake, "wgan")


def test_gradient_penalty_of_a_linear_critic():
    w = torch.full((1, 1, 4, 4), 0.5)  # ||w||_2 = 2

    def critic(t):
        return (t * w).flatten(1).sum(1)

    gp = gradient_penalty(critic, torch.rand(3, 1, 4, 4), torch.rand(3, 1, 4, 4))
    assert gp.item() == pytest.approx(1.0)  # (2 - 1)^2


def test_perturbation_loss_norms_bound_and_zero_gradient():
    d = torch.tensor([[[[0.1, -0.3], [0.0, 0.2]]]])
    assert perturbation_loss(d, "l1").item() == pytest.approx(0.15)
    assert perturbation_loss(d, "l2").item() == pytest.approx(math.sqrt((0.01 + 0.09 + 0.04) / 4))
    assert perturbation_loss(d, "l1", bound=0.2).item() == 0.0
    z = torch.zeros(2, 1, 4, 4, requires_grad=True)
    perturbation_loss(z, "l2").sum().backward()
    assert torch.isfinite(z.grad).all() and (z.grad == 0).all()  # empty mask: no NaN
    with pytest.raises(MedAdvInputError, match="perturbation norm"):
        perturbation_loss(d, "linf")


# ---------------------------------------------------------------------------------------------- settings
def test_settings_validate_and_check_saved_configs():
    with pytest.raises(MedAdvInputError, match="eps must be a number in"):
        AdvGANSettings(eps=1.5)
    with pytest.raises(MedAdvInputError, match="mask_kind"):
        AdvGANSettings(eps=EPS, mask_kind="tumour")
    assert AdvGANSettings(eps=EPS, mask_kind="patch").mask_kind == "patch"
    s = AdvGANSettings(eps=EPS, mask_kind="seg", modalities=["t2"])
    s.load_state_dict(AdvGANSettings(eps=EPS, mask_kind="none", modalities=["t2"]).state_dict())  # warns only
    with pytest.raises(MedAdvInputError, match=r"eps=0\.0156863 \(= 4/255\).*eps=0\.0313725 \(= 8/255\)"):
        s.load_state_dict(AdvGANSettings(eps=4 / 255).state_dict())
    with pytest.raises(MedAdvInputError, match="modalities"):
        s.load_state_dict(AdvGANSettings(eps=EPS, modalities=["flair"]).state_dict())


def test_generator_checkpoint_roundtrip_and_eps_mismatch(tmp_path):
    g = AdvGANGenerator(1)
    path = tmp_path / "generator.pt"
    torch.save({"generator": g.state_dict(), "advgan_config": AdvGANSettings(eps=EPS).state_dict()}, path)
    fresh = AdvGANGenerator(1)
    cfg = load_generator_checkpoint(path, fresh, AdvGANSettings(eps=EPS))
    assert cfg["eps"] == pytest.approx(EPS) and cfg["mask_kind"] == "none"
    for a, b in zip(g.state_dict().values(), fresh.state_dict().values()):
        torch.testing.assert_close(a, b)
    with pytest.raises(MedAdvInputError, match=rf"{path.name}.*8/255.*2/255"):
        load_generator_checkpoint(path, fresh, AdvGANSettings(eps=2 / 255))
    torch.save(g.state_dict(), tmp_path / "plain.pt")
    with pytest.raises(MedAdvInputError, match="advgan_config"):
        load_generator_checkpoint(tmp_path / "plain.pt", fresh, AdvGANSettings(eps=EPS))
    with pytest.raises(MedAdvInputError, match="does not exist"):
        load_generator_checkpoint(tmp_path / "missing.pt", fresh)


# ---------------------------------------------------------------------------------------------- engines
def _loader(n: int = 12, size: int = 16, batch: int = 6, mask_kind: str = "none", width: int = 2) -> DataLoader:
    """Slices with a tumour in every other one, and the attack mask made by ``AttackMaskd`` as in the bundles."""
    gen = torch.Generator().manual_seed(0)
    make_mask = AttackMaskd(keys="mask", output_key="attack_mask", kind=mask_kind, width=width)
    data = []
    for i in range(n):
        tumour = torch.zeros(1, size, size)
        if i % 2:
            tumour[:, 4:9, 5:10] = 1
        data.append(make_mask({"image": torch.rand(1, size, size, generator=gen), "label": torch.tensor([float(i % 2)]),
                               "mask": tumour, "subject": f"s{i // 4}", "slice_index": i}))
    return DataLoader(data, batch_size=batch)


def _nets(seed: int = 0):
    torch.manual_seed(seed)
    g = AdvGANGenerator(1, channels=(4, 8))
    d = PatchDiscriminator(1, channels=(4, 8))
    c = SliceClassifier(1, channels=(4, 8)).eval()
    return g, d, c


def _trainer(g, d, c, eps=EPS, targeted=False, mask_kind="none", g_loss=None, d_loss=None, **kwargs) -> AdvGANTrainer:
    go = torch.optim.Adam(g.parameters(), 1e-3)
    do = torch.optim.Adam(d.parameters(), 1e-3)
    return AdvGANTrainer("cpu", kwargs.pop("max_epochs", 1), _loader(mask_kind=mask_kind), g, go, d, do, c,
                         AdvGANSettings(eps=eps, mask_kind=mask_kind, targeted=targeted), g_loss, d_loss, **kwargs)


@pytest.mark.parametrize("mask_kind", ["none", "seg", "ring"])
def test_trainer_step_invariants(mask_kind):
    g, d, c = _nets()
    c.train()  # the trainer must freeze it anyway
    c_before = {k: v.clone() for k, v in c.state_dict().items()}
    g_before = [p.detach().clone() for p in g.parameters()]
    d_before = [p.detach().clone() for p in d.parameters()]
    trainer = _trainer(g, d, c, mask_kind=mask_kind, g_loss=AdvGANGeneratorLoss(lambda_pert=0.1, lambda_tv=0.1),
                       d_loss=AdvGANDiscriminatorLoss(gp_weight=1.0), d_steps=2, decollate=False)
    trainer.run()
    out = trainer.state.output
    x, adv, m = out["image"], out["adv"], out["attack_mask"]
    assert ((adv - x).abs() <= EPS * m + 1e-6).all()
    assert adv.min() >= 0 and adv.max() <= 1
    assert torch.equal(adv.masked_select(m == 0), x.masked_select(m == 0))
    assert not c.training and not any(p.requires_grad for p in c.parameters())
    for k, v in c.state_dict().items():
        assert torch.equal(v, c_before[k]), k  # frozen: weights and batch-norm statistics unchanged
    assert any(not torch.equal(a, b) for a, b in zip(g_before, g.parameters()))
    assert any(not torch.equal(a, b) for a, b in zip(d_before, d.parameters()))
    assert all(p.requires_grad for p in d.parameters())
    scalars = advgan_scalars(out)
    assert set(scalars) == {"loss_g", "loss_d", "loss_adv", "loss_gan", "loss_pert", "loss_tv", "loss_gp", "fool_rate"}
    assert all(math.isfinite(v) for v in scalars.values())
    assert 0 <= scalars["fool_rate"] <= 1 and scalars["loss_gp"] > 0
    expected = (scalars["loss_adv"] + 0.1 * scalars["loss_gan"] + 0.1 * scalars["loss_pert"]
                + 0.1 * scalars["loss_tv"])
    assert scalars["loss_g"] == pytest.approx(expected, rel=1e-5, abs=1e-6)


def test_trainer_warmup_skips_the_gan_term_and_decollated_outputs_work():
    g, d, c = _nets()
    trainer = _trainer(g, d, c, g_loss=AdvGANGeneratorLoss(lambda_gan=1.0), d_warmup_iterations=2, max_epochs=2)
    gan = []
    trainer.add_event_handler(Events.ITERATION_COMPLETED,
                              lambda e: gan.append(advgan_scalars(e.state.output)["loss_gan"]))
    trainer.run()
    assert gan[0] == 0.0 and gan[1] == 0.0 and gan[2] != 0.0 and len(gan) == 4


def test_trainer_without_gan_term_leaves_the_discriminator_untouched():
    g, d, c = _nets()
    before = [p.detach().clone() for p in d.parameters()]
    trainer = _trainer(g, d, c, g_loss=AdvGANGeneratorLoss(lambda_gan=0.0))
    trainer.run()
    assert all(torch.equal(a, b) for a, b in zip(before, d.parameters()))
    assert advgan_scalars(trainer.state.output)["loss_d"] == 0.0


def test_losses_and_trainer_reject_bad_settings():
    g, d, c = _nets()
    for make, match in [(lambda: AdvGANGeneratorLoss(gan_loss="wgan"), "GAN loss"),
                        (lambda: AdvGANGeneratorLoss(attack_loss="l2"), "attack loss"),
                        (lambda: AdvGANGeneratorLoss(lambda_gan=-1.0), "lambda_gan"),
                        (lambda: AdvGANGeneratorLoss(pert_norm="linf"), "perturbation norm"),
                        (lambda: AdvGANDiscriminatorLoss(gp_weight=-1.0), "gp_weight"),
                        (lambda: _trainer(g, d, c, eps=2.0), "eps must be"),
                        (lambda: _trainer(g, d, c, d_steps=0), "d_steps"),
                        (lambda: AdvGANTrainer("cpu", 1, _loader(), g, None, d, None, c, settings={"eps": EPS}),
                         "AdvGANSettings")]:
        with pytest.raises(MedAdvInputError, match=match):
            make()


def test_trainer_needs_the_attack_mask_in_the_batch():
    g, d, c = _nets()
    trainer = _trainer(g, d, c)
    trainer.data_loader = DataLoader([{"image": torch.rand(1, 16, 16), "label": torch.tensor([1.0])}], batch_size=1)
    with pytest.raises(MedAdvInputError, match="attack_mask.* missing from the batch"):
        trainer.run()


def test_targeted_trainer_runs_and_k_class_model_needs_targets():
    g, d, c = _nets()
    _trainer(g, d, c, targeted=True, g_loss=AdvGANGeneratorLoss(attack_loss="ce")).run()
    c3 = SliceClassifier(1, channels=(4, 8), num_classes=3).eval()
    with pytest.raises(MedAdvInputError, match="targets"):
        _trainer(g, d, c3, targeted=True, g_loss=AdvGANGeneratorLoss(attack_loss="ce")).run()  # no default for K > 2


def test_evaluator_runs_the_generator_with_references_summary_recorder_and_grid(tmp_path):
    g, _, c = _nets()
    g.train()  # under evaluation it must run in eval mode and be left as it was
    images = []

    class Writer:
        def add_image(self, tag, img, global_step=None, dataformats="CHW"):
            images.append((tag, tuple(img.shape), global_step))

    advgan = AdversarialInferer("advgan", eps=EPS, generator=g)
    refs = {"pgd10": AdversarialInferer("pgd", eps=EPS, steps=10)}
    ev = AttackEvaluator("cpu", _loader(mask_kind="seg"), c, inferer=advgan, reference_attacks=refs, eval_modules=[g],
                         key_val_metric={"val_asr": AttackSummary("asr", prefix="val_")},
                         additional_metrics=AttackSummary.for_references(refs),
                         val_handlers=[PerSampleRecorder(tmp_path, save_images=True),
                                       AttackImageGrid(Writer(), max_samples=4, eps=EPS)])
    ev.run()
    assert g.training
    m = ev.state.metrics
    assert m["val_n"] == 12 and m["val_n_attackable"] == 6  # seg mask: the 6 tumour slices
    for k in ("val_asr", "val_robust_acc", "val_clean_acc", "val_mean_linf", "val_mean_l2", "val_mean_ssim",
              "pgd10_asr", "pgd10_robust_acc", "pgd10_mean_linf"):
        assert k in m, k
    assert m["val_mean_linf"] <= EPS + 1e-6 and m["pgd10_mean_linf"] <= EPS + 1e-6
    assert m["pgd10_clean_acc"] == m["val_clean_acc"]  # same slices, same clean predictions
    with open(tmp_path / "samples.csv") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == 12 and [int(r["row"]) for r in rows] == list(range(12))
    for r in rows:
        assert {"subject", "slice_index", "label", "target", "clean_prob", "adv_prob", "success", "linf", "l2", "ssim",
                "pgd10_success", "pgd10_linf"} <= set(r)
        assert float(r["linf"]) <= EPS + 1e-6 and 0 <= float(r["adv_prob"]) <= 1
        if r["label"] == "0":
            assert float(r["linf"]) == 0.0 and r["attackable"] == "False"  # no tumour: nothing to perturb
    adv = np.load(tmp_path / "adversarial.npy")
    assert adv.shape == (12, 1, 16, 16) and adv.dtype == np.float32
    assert images == [("attack/clean_adv_diff_mask", (1, 4 * 16, 4 * 16), 1)]


def test_evaluator_rejects_an_attack_that_is_not_an_inferer():
    _, _, c = _nets()
    with pytest.raises(MedAdvInputError, match="AdversarialInferer"):
        AttackEvaluator("cpu", _loader(), c, inferer="pgd")


def test_attack_summary_needs_per_sample_columns():
    s = AttackSummary()
    with pytest.raises(MedAdvInputError, match="success"):
        s.update({"image": torch.zeros(1)})
