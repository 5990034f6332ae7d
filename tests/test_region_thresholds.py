"""Region thresholds of a segmentation network: the wrapper that carries them (eval-mode shift, state dict, bare
checkpoints) and the validation handler that chooses them (the best-Dice candidate, checked by brute force)."""

from __future__ import annotations

import pytest
import torch
from ignite.engine import Engine

from medadv_monai.handlers import REGION_THRESHOLD_GRID, CalibrateRegionThresholds
from medadv_monai.networks import ThresholdedNetwork


def _net(channels: int = 2) -> ThresholdedNetwork:
    return ThresholdedNetwork(torch.nn.Conv2d(1, channels, 1), channels)


def test_wrapper_shifts_logits_in_eval_mode_only() -> None:
    net = _net()
    net.region_thresholds.copy_(torch.tensor([1.0, -2.0]))
    x = torch.randn(3, 1, 4, 4)
    raw = net.network(x)
    assert torch.equal(net.train()(x), raw)
    shifted = net.eval()(x)
    assert torch.allclose(shifted[:, 0], raw[:, 0] - 1) and torch.allclose(shifted[:, 1], raw[:, 1] + 2)
    three_d = ThresholdedNetwork(torch.nn.Conv3d(1, 2, 1), 2).eval()  # (N, C, D, H, W) broadcasts too
    three_d.region_thresholds.fill_(0.5)
    v = torch.randn(1, 1, 2, 3, 3)
    assert torch.allclose(three_d(v), three_d.network(v) - 0.5)
    with pytest.raises(ValueError, match="3 channels"):
        ThresholdedNetwork(torch.nn.Conv2d(1, 3, 1), 2).eval()(x)


def test_wrapper_state_dict_round_trip_and_bare_checkpoints() -> None:
    net = _net()
    net.region_thresholds.copy_(torch.tensor([0.3, -0.7]))
    other = _net()
    other.load_state_dict(net.state_dict())
    assert torch.equal(other.region_thresholds, net.region_thresholds)
    assert torch.equal(other.network.weight, net.network.weight)
    bare = _net()
    bare.region_thresholds.fill_(4.0)
    bare.load_state_dict(net.network.state_dict())  # the unwrapped network's weights: thresholds 0
    assert torch.equal(bare.network.weight, net.network.weight) and not bare.region_thresholds.any()
    with pytest.raises(RuntimeError):
        bare.load_state_dict({"network.weight": net.network.weight})  # incomplete: still refused


def _validate(net: ThresholdedNetwork, batches: list[tuple[torch.Tensor, torch.Tensor]],
              handler: CalibrateRegionThresholds) -> Engine:
    """An evaluator whose output is the wrapper's eval-mode logits of each batch and its label."""

    def step(engine, batch):
        x, y = batch
        with torch.no_grad():
            return {"logits": net.eval()(x), "label": y}

    engine = Engine(step)
    handler.attach(engine)
    engine.run(batches)
    return engine


def _brute_force_threshold(scores: torch.Tensor, truth: torch.Tensor) -> float:
    """The grid probability with the best pooled Dice (ties: nearest 0.5), one threshold at a time."""
    best = None
    for p in REGION_THRESHOLD_GRID:
        hard = scores >= p
        tp = (hard & truth).sum().item()
        dice = 2 * tp / (hard.sum().item() + truth.sum().item())
        key = (round(dice, 12), -abs(p - 0.5))
        if best is None or key > best[0]:
            best = (key, p)
    return best[1]


def test_calibration_picks_the_best_dice_threshold_per_region() -> None:
    g = torch.Generator().manual_seed(0)
    net = ThresholdedNetwork(torch.nn.Identity(), 2)
    net.region_thresholds.copy_(torch.tensor([0.4, -1.0]))  # the evaluator's outputs are shifted: added back
    truth = torch.rand(6, 2, 8, 8, generator=g) > 0.6
    # region 0 under-confident on its foreground (best threshold below 0.5), region 1 over-confident
    prob = torch.where(truth, torch.rand(truth.shape, generator=g) * 0.6 + 0.15,
                       torch.rand(truth.shape, generator=g) * 0.3)
    prob[:, 1] = torch.where(truth[:, 1], torch.rand(truth[:, 1].shape, generator=g) * 0.2 + 0.8,
                             torch.rand(truth[:, 1].shape, generator=g) * 0.75)
    logits = torch.logit(prob)
    handler = CalibrateRegionThresholds(net, ["WT", "TC"])
    engine = _validate(net, [(logits[:3], truth[:3].float()), (logits[3:], truth[3:].float())], handler)
    for c, name in enumerate(["WT", "TC"]):
        expected = _brute_force_threshold(prob[:, c], truth[:, c])
        assert engine.state.metrics[f"val_threshold_{name}"] == pytest.approx(expected)
        assert float(net.region_thresholds[c]) == pytest.approx(float(torch.logit(torch.tensor(expected))), abs=1e-5)
    assert engine.state.metrics["val_threshold_WT"] < 0.5 < engine.state.metrics["val_threshold_TC"]
    # the saved model now predicts with them: eval logit > 0 <=> probability >= the chosen threshold
    for c, name in enumerate(["WT", "TC"]):
        chosen = engine.state.metrics[f"val_threshold_{name}"]
        away = (prob[:, c] - chosen).abs() > 1e-4
        assert torch.equal((net.eval()(logits)[:, c] > 0)[away], (prob[:, c] >= chosen)[away])


def test_calibration_keeps_a_region_without_foreground_and_a_single_candidate_grid() -> None:
    net = ThresholdedNetwork(torch.nn.Identity(), 2)
    net.region_thresholds.copy_(torch.tensor([0.0, 0.8]))
    logits = torch.randn(2, 2, 4, 4)
    truth = torch.zeros(2, 2, 4, 4)
    truth[:, 0, :2] = 1  # no voxel of region 1
    engine = _validate(net, [(logits, truth)], CalibrateRegionThresholds(net, ["WT", "ET"], grid=[0.5]))
    assert engine.state.metrics["val_threshold_WT"] == 0.5 and "val_threshold_ET" not in engine.state.metrics
    assert net.region_thresholds.tolist() == pytest.approx([0.0, 0.8])


def test_calibration_errors() -> None:
    net = _net()
    with pytest.raises(ValueError, match="probabilities in"):
        CalibrateRegionThresholds(net, ["WT", "TC"], grid=[0.0, 0.5])
    with pytest.raises(ValueError, match="2 channels"):
        _validate(net, [(torch.randn(1, 1, 2, 2), torch.zeros(1, 1, 2, 2))],
                  CalibrateRegionThresholds(net, ["WT", "TC"]))
