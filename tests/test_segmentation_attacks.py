"""Segmentation under attack: dense losses, region metrics, target masks, MedIS and the dense-attack invariants in
2D and 3D (through sliding-window inference)."""

from __future__ import annotations

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from monai.data import MetaTensor
from monai.networks.nets import UNet

from medadv_monai.attacks import SegTargetd, implant_bank, medis, run_attack
from medadv_monai.data import TumourMaskd, check_regions
from medadv_monai.errors import MedAdvInputError
from medadv_monai.losses import DENSE_LOSSES, DenseLoss, lovasz_hinge, medis_losses, soft_dice
from medadv_monai.metrics.segmentation import region_scores, seg_success, summarize_regions
from medadv_monai.networks import SlidingWindowModel

pytestmark = pytest.mark.usefixtures("one_thread")


class Threshold(torch.nn.Module):
    """Per-pixel logits ``w (x_c - 0.5)`` for R regions from channel 0: region r is present where x > 0.5."""

    def __init__(self, regions: int = 1, w: float = 20.0, dims: int = 2) -> None:
        super().__init__()
        self.regions, self.w = regions, w

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.w * (x[:, :1] - 0.5).expand(-1, self.regions, *x.shape[2:])


def conv_net(dims: int = 2, regions: int = 3, seed: int = 0) -> torch.nn.Module:
    torch.manual_seed(seed)
    conv = torch.nn.Conv2d if dims == 2 else torch.nn.Conv3d
    return torch.nn.Sequential(conv(2, 4, 3, padding=1), torch.nn.Tanh(), conv(4, regions, 3, padding=1)).eval()


# ------------------------------------------------------------------------------------------------ losses and metrics
def test_soft_dice_known_answers() -> None:
    g = torch.zeros(3, 1, 4, 4)
    g[1, 0, :2] = 1
    g[2, 0, :2] = 1
    p = torch.zeros_like(g)
    p[1, 0, :2] = 1  # identical
    p[2, 0, 2:] = 1  # disjoint
    assert soft_dice(p, g)[:, 0].tolist() == [1.0, 1.0, 0.0]  # both empty counts 1
    half = torch.full_like(g, 0.5)
    assert soft_dice(half, g)[1, 0].item() == pytest.approx(2 * 4 / (8 + 8))


def test_lovasz_hinge_known_answers() -> None:
    g = torch.tensor([[1.0, 0.0, 1.0, 0.0]]).reshape(1, 1, 2, 2)
    assert lovasz_hinge(4 * (2 * g - 1), g).item() == 0.0  # every margin >= 1: no loss
    # one error of 1 (a zero logit) on a positive pixel: errors sorted [1, 1, 1, 1] and the Jaccard increments
    # sum to the Jaccard loss of predicting nothing right = 1
    assert lovasz_hinge(torch.zeros(1, 1, 2, 2), g).item() == pytest.approx(1.0)


@pytest.mark.parametrize("loss", DENSE_LOSSES)
def test_dense_losses_are_per_sample(loss: str) -> None:
    torch.manual_seed(0)
    z, g = torch.randn(3, 2, 6, 6), (torch.rand(3, 2, 6, 6) > 0.6).float()
    fn = DenseLoss(loss)
    together = fn(z, g)
    assert together.shape == (3,)
    alone = torch.cat([fn(z[i:i + 1], g[i:i + 1]) for i in range(3)])
    assert torch.allclose(together, alone, atol=1e-6)


def test_dense_loss_softmax_class_map_and_errors() -> None:
    z = torch.randn(2, 3, 5, 5)
    classes = torch.randint(0, 3, (2, 1, 5, 5))
    onehot = torch.nn.functional.one_hot(classes[:, 0], 3).movedim(-1, 1)
    for loss in ("ce", "dice", "bce_dice"):
        fn = DenseLoss(loss, activation="softmax")
        assert torch.allclose(fn(z, classes), fn(z, onehot))
    with pytest.raises(MedAdvInputError, match="does not match logits"):
        DenseLoss("bce")(z, torch.zeros(2, 2, 5, 5))
    with pytest.raises(MedAdvInputError, match="Lovasz"):
        DenseLoss("lovasz", activation="softmax")
    with pytest.raises(MedAdvInputError, match="expected one of"):
        DenseLoss("focal")


def test_region_scores_summary_and_success_rules() -> None:
    gt = torch.zeros(2, 2, 4, 4)
    gt[0, 0, :2] = 1  # sample 0 holds region 0 only
    pred = torch.zeros_like(gt)
    pred[0, 0, :1] = 1  # half of it: Dice 2/3, IoU 1/2
    dice, iou = region_scores(pred, gt)
    assert dice[0, 0].item() == pytest.approx(2 / 3) and iou[0, 0].item() == pytest.approx(0.5)
    assert dice[1].tolist() == [1.0, 1.0]  # both empty
    assert seg_success(iou, targeted=False).tolist() == [True, False]  # IoU <= 0.5
    assert seg_success(torch.tensor([0.44, 0.45]), targeted=True).tolist() == [False, True]
    cols = {"success": [1, 0], "present_A": [1, 0], "present_B": [0, 0], "clean_dice_A": [0.8, 1.0],
            "adv_dice_A": [0.3, 1.0], "clean_iou_A": [0.7, 1.0], "adv_iou_A": [0.2, 1.0], "clean_dice_B": [1, 1],
            "adv_dice_B": [1, 1], "clean_iou_B": [1, 1], "adv_iou_B": [1, 1]}
    s = summarize_regions(cols, ["A", "B"])
    assert s["clean_dice_A"] == 0.8 and s["adv_dice_A"] == 0.3  # the slice without region A is left out
    assert s["rog_success_rate"] == 1.0 and s["success_rate"] == 0.5
    assert s["tumour_samples_B"] == 0 and s["adv_dice_B"] != s["adv_dice_B"]  # NaN: no slice holds B


def test_subject_dice_pools_a_subjects_slices() -> None:
    from types import SimpleNamespace

    from medadv_monai.handlers import SubjectDice

    def item(pred: list[int], label: list[int]) -> dict:
        return {"pred": torch.tensor(pred).float().reshape(1, 1, -1), "label": torch.tensor(label).float()
                .reshape(1, 1, -1)}

    # subject a: slice 1 all right (2 pixels), slice 2 misses its 2 pixels: volume Dice 2*2 / (2 + 4) = 2/3, where
    # the mean of the slice Dice would be 1/2; subject b holds no tumour and is left out
    outs = [item([1, 1, 0], [1, 1, 0]), item([0, 0, 0], [1, 1, 0]), item([1, 0, 0], [0, 0, 0])]
    state = SimpleNamespace(batch=[{"subject": s} for s in "aab"], output=outs, metrics={})
    handler = SubjectDice(["WT"])
    handler._update(SimpleNamespace(state=state))
    handler._compute(SimpleNamespace(state=state))
    assert state.metrics["val_subject_dice_WT"] == pytest.approx(2 / 3)


def test_region_mean_dice_is_the_mean_of_the_regions() -> None:
    from ignite.engine import Engine

    from medadv_monai.handlers import RegionMeanDice

    pred, gt = torch.zeros(2, 3, 4, 4), torch.zeros(2, 3, 4, 4)
    gt[0, 0, :2], pred[0, 0, :1] = 1, 1  # WT on slice 0 only: Dice 2/3
    gt[1, 1, :2], pred[1, 1, :2] = 1, 1  # TC on slice 1 only: Dice 1; no slice holds ET: left out
    engine = Engine(lambda e, b: (list(pred), list(gt)))
    RegionMeanDice().attach(engine, "dice")
    engine.run([0])
    assert engine.state.metrics["dice"] == pytest.approx((2 / 3 + 1) / 2)


def test_tumour_mask_regions_as_channels() -> None:
    seg = MetaTensor(torch.tensor([0, 1, 2, 4]).reshape(1, 2, 2, 1).float())
    out = TumourMaskd("seg", label_convention="brats2021", region=["WT", "TC", "ET"])({"seg": seg})["mask"]
    assert out.shape == (3, 2, 2, 1) and isinstance(out, MetaTensor)
    assert out.flatten(1).tolist() == [[0, 1, 1, 1], [0, 1, 0, 1], [0, 0, 0, 1]]
    assert check_regions(["wt", "et"]) == ["WT", "ET"]
    for bad, match in ((["WT", "WT"], "once"), ("WT", "non-empty list"), (["XX"], "expected one of")):
        with pytest.raises(MedAdvInputError, match=match):
            check_regions(bad)
    with pytest.raises(MedAdvInputError, match="defines only"):
        check_regions(["TC"], "binary")


# ------------------------------------------------------------------------------------------------ targets
def test_seg_targets_erase_and_implant() -> None:
    masks = {s: torch.zeros(2, 4, 4) for s in ("a", "b", "c")}
    masks["b"][:, 1:3, 1:3] = 1
    masks["c"][:, :2, :2] = 1
    samples = [{"subject": s, "slice_index": z, "mask": masks[s]} for s in masks for z in range(2)]
    bank = implant_bank(samples)
    assert [s for s, _ in bank] == ["b", "b", "c", "c"]  # tumour slices only
    erase = SegTargetd(kind="erase")(samples[2])
    assert erase["target"].shape == (2, 4, 4) and not erase["target"].any()
    implant = SegTargetd(kind="implant", bank=bank)
    for sample in samples:
        t = implant(sample)["target"]
        assert t.any() and not torch.equal(t, sample["mask"].float()) or sample["subject"] == "a"
        assert torch.equal(t, implant(dict(sample))["target"])  # depends on the sample alone
    with pytest.raises(MedAdvInputError, match="another subject"):
        SegTargetd(kind="implant", bank=[("b", masks["b"])])(samples[2])
    with pytest.raises(MedAdvInputError, match="needs a bank"):
        SegTargetd(kind="implant")
    with pytest.raises(MedAdvInputError, match="no 'target'"):
        SegTargetd(kind="given")(samples[0])


# ------------------------------------------------------------------------------------------------ dense attacks
@st.composite
def dense_cases(draw):
    dims = draw(st.sampled_from([2, 3]))
    n = draw(st.integers(1, 3))
    size = (6,) * dims
    seed = draw(st.integers(0, 2**16))
    g = torch.Generator().manual_seed(seed)
    return {
        "dims": dims, "seed": seed,
        "attack": draw(st.sampled_from(["fgsm", "bim", "pgd", "mifgsm", "apgd"])),
        "loss": draw(st.sampled_from(list(DENSE_LOSSES))),
        "targeted": draw(st.booleans()),
        "eps": draw(st.sampled_from([2 / 255, 8 / 255, 0.1])),
        "x": torch.rand((n, 2, *size), generator=g),
        "y": (torch.rand((n, 3, *size), generator=g) > 0.5).float(),
        "mask": (torch.rand((n, 1, *size), generator=g) > 0.5).float() * draw(st.sampled_from([1.0, 0.5])),
    }


@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(dense_cases())
def test_dense_attack_invariants(case) -> None:
    """Budget, range and mask-exactness, 2D and 3D, every gradient attack and dense loss."""
    net, x, mask, eps = conv_net(case["dims"]), case["x"], case["mask"], case["eps"]
    kw = {"steps": 3} if case["attack"] != "fgsm" else {}
    x_adv = run_attack(case["attack"], net, x, case["y"], eps=eps, mask=mask, targeted=case["targeted"],
                       loss_fn=DenseLoss(case["loss"]), **kw)
    assert x_adv.shape == x.shape and x_adv.min() >= 0 and x_adv.max() <= 1
    assert bool(((x_adv - x).abs() <= eps * mask + 1e-6).all())
    assert torch.equal(x_adv[(mask == 0).expand_as(x)], x[(mask == 0).expand_as(x)])


@pytest.mark.parametrize("dims", [2, 3])
@pytest.mark.parametrize("attack", ["bim", "mifgsm"])
def test_dense_attack_batch_independence(dims: int, attack: str) -> None:
    torch.manual_seed(1)
    net, size = conv_net(dims), (8,) * dims
    x, y = torch.rand(3, 2, *size), (torch.rand(3, 3, *size) > 0.5).float()
    fn = DenseLoss("bce_dice")
    both = run_attack(attack, net, x, y, eps=8 / 255, steps=4, loss_fn=fn)
    alone = torch.cat([run_attack(attack, net, x[i:i + 1], y[i:i + 1], eps=8 / 255, steps=4, loss_fn=fn)
                       for i in range(3)])
    assert torch.allclose(both, alone, atol=1e-6)


def test_untargeted_pgd_lowers_dice_and_erase_empties_prediction() -> None:
    net = Threshold(regions=1)
    x = torch.full((2, 1, 8, 8), 0.2)
    x[:, :, 2:6, 2:6] = 0.5 + 4 / 255  # tumour just over the threshold
    gt = (x > 0.5).float()
    for loss in ("bce", "dice", "lovasz"):
        adv = run_attack("pgd", net, x, gt, eps=8 / 255, steps=20, alpha=1 / 255, loss_fn=DenseLoss(loss))
        dice, _ = region_scores((net(adv) > 0).float(), gt)
        assert dice.max() == 0.0, loss  # the whole tumour is pushed under the threshold
    erased = run_attack("bim", net, x, torch.zeros_like(gt), eps=8 / 255, steps=10, alpha=1 / 255, targeted=True,
                        loss_fn=DenseLoss("bce"))
    assert not (net(erased) > 0).any()
    ring = torch.zeros_like(x)
    ring[:, :, 2:6, 2:4] = 1  # only the left half may change
    half = run_attack("bim", net, x, gt, eps=8 / 255, steps=10, alpha=1 / 255, mask=ring, loss_fn=DenseLoss("bce"))
    assert (net(half)[:, :, 2:6, 4:6] > 0).all() and not (net(half)[:, :, 2:6, 2:4] > 0).any()


# ------------------------------------------------------------------------------------------------ MedIS
def test_medis_known_steps_fusion_and_off_by_one() -> None:
    """Tumour pixels at 0.5 + 2.5/255 under a threshold model: each 1/255 step lowers them by 1/255, so the third
    step takes them under 0.5 and IoU to 0. The clean image is step 0 (the reference code would say 4)."""
    net = Threshold(regions=1)
    x = torch.full((3, 1, 8, 8), 0.2)
    x[:, :, 2:6, 2:6] = 0.5 + 2.5 / 255
    x[1, :, 2:6, 2:6] = 0.5 + 0.5 / 255  # one step
    gt = (x > 0.5).float()
    gt[2] = 0
    gt[2, :, 0:2, 0:2] = 1  # the model is already wrong here: judged a success before any step
    res = medis(net, x, gt, eps=8 / 255, losses=medis_losses(["bce", "dice"]))
    assert res.steps.tolist() == [[3, 1, 0], [3, 1, 0]]
    assert res.fused_steps.tolist() == [3, 1, 0] and res.success.all()
    assert torch.equal(res.x_adv[2], x[2])  # a success at step 0 never moves
    assert ((res.x_adv - x).abs() <= 8 / 255 + 1e-6).all()
    capped = medis(net, x, gt, eps=8 / 255, losses=medis_losses(["bce"]), steps=2)
    assert capped.steps.tolist() == [[-1, 1, 0]] and capped.success.tolist() == [False, True, True]


def test_medis_fused_success_at_least_best_single_loss() -> None:
    net = conv_net(2, regions=3, seed=3)
    torch.manual_seed(3)
    x = torch.rand(6, 2, 10, 10)
    with torch.no_grad():
        gt = (net(x) > 0).float()  # the model's own masks: IoU 1 at the start
    for targeted, y in ((False, gt), (True, torch.zeros_like(gt))):
        res = medis(net, x, y, eps=8 / 255, losses=medis_losses(), steps=6, targeted=targeted)
        per_loss = (res.steps >= 0).float().mean(1)
        assert res.success.float().mean() >= per_loss.max()
        assert torch.equal(res.success, (res.steps >= 0).any(0))  # by construction
        ok = res.steps >= 0
        best = torch.where(ok, res.steps, torch.full_like(res.steps, 99)).min(0).values
        assert torch.equal(res.fused_steps[res.success], best[res.success])
        # each image is the chosen loss's own result: its prediction passes the rule the table reports
        _, iou = region_scores((net(res.x_adv) > 0).float(), y)
        assert torch.equal(seg_success(iou, targeted), res.success)


def test_medis_errors() -> None:
    net, x = Threshold(), torch.rand(2, 1, 4, 4)
    bce = medis_losses(["bce"])
    with pytest.raises(MedAdvInputError, match="region masks"):
        medis(net, x, torch.zeros(2, 4, 4), eps=0.1, losses=bce)
    with pytest.raises(MedAdvInputError, match="only 0 and 1"):
        medis(net, x, torch.full((2, 1, 4, 4), 0.5), eps=0.1, losses=bce)
    with pytest.raises(MedAdvInputError, match="non-empty mapping"):
        medis(net, x, torch.zeros(2, 1, 4, 4), eps=0.1, losses=["bce"])
    with pytest.raises(MedAdvInputError, match="non-empty list"):
        medis_losses("bce")


# ------------------------------------------------------------------------------------------------ 3D
def test_3d_sliding_window_attack() -> None:
    """A 3D UNet run patch-wise over a larger volume: PGD through sliding_window_inference keeps the budget and
    the mask, and lowers the Dice of the model's own prediction."""
    torch.manual_seed(0)
    unet = UNet(spatial_dims=3, in_channels=1, out_channels=2, channels=(4, 8), strides=(2,), num_res_units=0)
    model = SlidingWindowModel(unet, roi_size=(8, 8, 8), overlap=0.25).eval()
    x = torch.rand(1, 1, 12, 12, 12)
    with torch.no_grad():
        own = (model(x) > 0).float()
    mask = torch.zeros_like(x)
    mask[..., 2:10, 2:10, 2:10] = 1
    adv = run_attack("pgd", model, x, own, eps=0.2, steps=10, mask=mask, loss_fn=DenseLoss("bce"))
    assert bool(((adv - x).abs() <= 0.2 * mask + 1e-6).all()) and torch.equal(adv[mask == 0], x[mask == 0])
    dice, _ = region_scores((model(adv) > 0).float(), own)
    assert dice.mean() < 0.9  # 1 before the attack; 0.84 measured
    assert all(p.grad is None for p in unet.parameters()) and not unet.training


# ------------------------------------------------------------------------------------------------ the grid's checks
def test_seg_grid_cells_and_their_errors() -> None:
    from medadv_monai.engines import DenseAttack, MedISAttack, seg_cells

    cells = seg_cells({"pgd_ce": {"attack": "pgd", "loss": "bce"}}, [4 / 255, 8 / 255], ["none", "ring"],
                      ["none", "erase"], {"eps": [8 / 255], "masks": ["none"], "targets": ["none"], "steps": 3})
    assert [c.label for c in cells][:3] == ["clean", "pgd_ce-none-none-eps4", "pgd_ce-erase-none-eps4"]
    assert len(cells) == 1 + 8 + 1 and cells[-1].label == "medis-none-none-eps8"
    bad = [
        (({"medis": {"attack": "pgd"}}, [0.1], ["none"]), "not named clean or medis"),
        (({"x": {"attack": "cw"}}, [0.1], ["none"]), "fgsm|bim|pgd"),
        (({"x": {"attack": "pgd", "eps": 0.1}}, [0.1], ["none"]), "set by the grid"),
        (({"x": {"attack": "pgd"}}, 0.03, ["none"]), "non-empty list of budgets"),
        (({"x": {"attack": "pgd"}}, [2.0], ["none"]), "eps"),
        (({"x": {"attack": "pgd"}}, [0.1], "none"), "attack_masks"),
        (({"x": {"attack": "pgd"}}, [0.1, 0.1], ["none"]), "appear twice"),
    ]
    for args, match in bad:
        with pytest.raises(MedAdvInputError, match=match):
            seg_cells(*args)
    with pytest.raises(MedAdvInputError, match="does not take"):
        DenseAttack("pgd", "bce", eps=0.1, stepz=3)
    with pytest.raises(MedAdvInputError, match="does not take"):
        MedISAttack(eps=0.1, foo=1)
    with pytest.raises(MedAdvInputError, match="expected one of"):
        DenseAttack("pgd", "bcx")
    for weights in ({"bce": float("nan")}, {"bce": 0.0}, {"bce": True}, {"focal": 1.0}):
        with pytest.raises(MedAdvInputError, match="combo weights"):
            DenseLoss("combo", weights=weights)
    with pytest.raises(MedAdvInputError, match=r"class ids in \[0, 2\]"):
        DenseLoss("ce", activation="softmax")(torch.zeros(1, 3, 2, 2), torch.full((1, 1, 2, 2), 3))


def test_implant_bank_is_read_on_first_use_only() -> None:
    class Counting(list):
        reads = 0

        def __iter__(self):
            Counting.reads += 1
            return super().__iter__()

    mask = torch.zeros(1, 2, 2)
    mask[0, 0, 0] = 1
    samples = Counting([{"subject": "b", "mask": mask}])
    t = SegTargetd(kind="implant", samples=samples)
    assert Counting.reads == 0
    out = t({"subject": "a", "slice_index": 0, "mask": torch.zeros(1, 2, 2)})["target"]
    assert torch.equal(out, mask) and Counting.reads == 1
    t({"subject": "a", "slice_index": 1, "mask": torch.zeros(1, 2, 2)})
    assert Counting.reads == 1
