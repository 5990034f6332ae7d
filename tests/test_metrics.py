"""Metrics: known answers for norms, total variation, SSIM, outcomes, summaries and coverage bins."""

from __future__ import annotations

import math

import pytest
import torch

from medadv_monai.metrics import (
    coverage_bins,
    perturbation_metrics,
    prediction,
    sample_outcomes,
    ssim,
    summarize,
    total_variation,
    wilson_interval,
)


def test_norms_and_total_variation_known_answers():
    x = torch.full((2, 1, 16, 16), 0.5)
    x_adv = x.clone()
    x_adv[0, 0, 4, 4] += 0.1  # one voxel: L0 1/256, L2 = Linf = 0.1, TV = 4 edges * 0.1 / 256
    x_adv[1, 0, :, 8:] += 0.05  # a step: L0 1/2, L2 = 0.05 * sqrt(128), TV = 16 edges * 0.05 / 256
    m = perturbation_metrics(x, x_adv)
    assert m["l0"].tolist() == pytest.approx([1 / 256, 0.5])
    assert m["l2"].tolist() == pytest.approx([0.1, 0.05 * math.sqrt(128)], rel=1e-5)
    assert m["linf"].tolist() == pytest.approx([0.1, 0.05], rel=1e-5)
    assert m["tv"].tolist() == pytest.approx([0.4 / 256, 0.8 / 256], rel=1e-5)
    assert total_variation(torch.zeros(3, 2, 5, 5, 5)).tolist() == [0.0, 0.0, 0.0]
    assert m["area"].tolist() == [1.0, 1.0] and all(math.isnan(v) for v in m["coverage"].tolist())


def test_ssim_is_one_for_identical_and_lower_for_noise():
    x = torch.rand(2, 1, 32, 32)
    assert ssim(x, x).tolist() == pytest.approx([1.0, 1.0], abs=1e-5)
    assert (ssim(x, (x + 0.2 * torch.randn_like(x)).clamp(0, 1)) < 0.9).all()


def test_prediction_single_logit_and_classes():
    assert prediction(torch.tensor([[0.3], [-0.1], [0.0]])).tolist() == [1, 0, 0]
    assert prediction(torch.tensor([[0.1, 0.9, 0.0], [2.0, 1.0, 0.0]])).tolist() == [1, 0]


def test_outcomes_and_summary_definitions():
    labels = torch.tensor([1, 1, 0, 0, 1])
    clean = torch.tensor([1, 1, 0, 1, 1])  # sample 3 wrong before the attack
    adv = torch.tensor([0, 1, 1, 0, 0])
    attackable = torch.tensor([True, True, True, True, False])  # sample 4: empty mask
    o = sample_outcomes(labels, clean, adv, attackable)
    assert o["success"].tolist() == [True, False, True, False, False]
    s = summarize({**o, "l2": torch.tensor([1.0, 2.0, 3.0, math.nan, 0.0])})
    assert s["clean_acc"] == 4 / 5 and s["robust_acc"] == 2 / 5  # samples 1 and 3 end correct
    assert s["asr"] == 2 / 3  # flips among clean-correct attackable: samples 0, 1, 2
    assert s["asr_all"] == 3 / 4  # every clean-correct sample counts, sample 4 (flipped, unattackable) too
    assert s["mean_l2"] == pytest.approx(1.5)  # NaN ignored
    targets = 1 - labels
    t = sample_outcomes(labels, clean, adv, attackable, targets)
    ts = summarize({**t, "label": labels, "target": targets}, targeted=True)
    assert t["success"].tolist() == [True, False, True, False, False]
    assert ts["targeted_success"] == 2 / 4
    assert (s["n"], s["n_asr"], ts["n_targeted"]) == (5, 3, 4)  # the denominators the intervals are for
    assert (s["asr_lo"], s["asr_hi"]) == pytest.approx(wilson_interval(2, 3))
    assert (s["robust_acc_lo"], s["robust_acc_hi"]) == pytest.approx(wilson_interval(2, 5))
    assert (ts["targeted_success_lo"], ts["targeted_success_hi"]) == pytest.approx(wilson_interval(2, 4))


def test_wilson_interval_known_values():
    # published values (Newcombe 1998, Table I; e.g. 0/10 -> 0 to 0.2775, 5/10 -> 0.2366 to 0.7634)
    assert wilson_interval(0, 10) == pytest.approx((0.0, 0.2775), abs=1e-4)
    assert wilson_interval(5, 10) == pytest.approx((0.2366, 0.7634), abs=1e-4)
    assert wilson_interval(81, 263) == pytest.approx((0.2553, 0.3662), abs=1e-4)
    assert wilson_interval(10, 10) == pytest.approx((0.7225, 1.0), abs=1e-4)
    assert all(math.isnan(v) for v in wilson_interval(0, 0))


def test_coverage_bins():
    bins = coverage_bins([0.0, 0.04, 0.5, 1.0, math.nan], [True, False, True, True, True],
                         [True, True, True, False, True], edges=(0, 0.05, 0.5, 1.0))
    assert [b["n"] for b in bins] == [2, 0, 1]  # 1.0 is not eligible, NaN has no tumour
    assert bins[0]["asr"] == 0.5 and math.isnan(bins[1]["asr"]) and bins[2]["asr"] == 1.0
    assert (bins[0]["asr_lo"], bins[0]["asr_hi"]) == pytest.approx(wilson_interval(1, 2))


def test_attack_display_names_in_tables():
    from medadv_monai.attacks import display_name
    from medadv_monai.visualize import markdown_table

    assert [display_name(n) for n in ("fgsm", "bim", "pgd", "mifgsm", "mi-fgsm", "advgan", "pgd40", "clean")] == [
        "FGSM", "BIM", "PGD", "MI-FGSM", "MI-FGSM", "AdvGAN", "pgd40", "clean"]
    table = markdown_table([{"attack": "mifgsm", "mask": "seg"}], ["attack", "mask"])
    assert table.splitlines()[-1] == "| MI-FGSM | seg |"
