"""Feature-space detectors: feature hooks, KD, BU, LID, Mahalanobis, their combination and metrics (known answers)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from medadv_monai.detectors import (
    BayesianUncertaintyDetector,
    FeatureRecorder,
    KDBUCombiner,
    KernelDensityDetector,
    LIDDetector,
    LogisticCombiner,
    MahalanobisDetector,
    bu_unavailable,
    detection_metrics,
    detection_set,
    extract_features,
    extract_features_and_outputs,
    features_with_grad,
    lid_mle,
    roc_auc,
    tpr_at_tnr,
    uniform_noise,
)

pytestmark = pytest.mark.usefixtures("one_thread")


def _conv_net(seed: int = 0, dropout: float | None = None, out: int = 3) -> nn.Sequential:
    torch.manual_seed(seed)
    head = [nn.Dropout(dropout)] if dropout is not None else []
    return nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.ReLU(), nn.Conv2d(4, 6, 3, padding=1), nn.ReLU(),
                         nn.AdaptiveAvgPool2d(1), nn.Flatten(), *head, nn.Linear(6, out)).eval()


def _no_hooks(model: nn.Module) -> bool:
    return all(not m._forward_hooks for m in model.modules())


# ------------------------------------------------------------------------------------------------------- features
def test_gap_features_equal_manual_computation_and_batching():
    model = _conv_net()
    x = torch.rand(7, 1, 8, 8, generator=torch.Generator().manual_seed(1))
    feats, out = extract_features_and_outputs(model, x, ["0", "3", "6"], batch_size=3)
    with torch.no_grad():
        a0 = model[0](x)
        a3 = model[3](model[2](model[1](a0)))
    assert feats["0"].shape == (7, 4) and feats["6"].shape == (7, 3)
    torch.testing.assert_close(feats["0"], a0.mean((2, 3)))
    torch.testing.assert_close(feats["3"], a3.mean((2, 3)))
    torch.testing.assert_close(feats["6"], out)  # an (N, C) activation is kept as it is
    torch.testing.assert_close(out, model(x).detach())
    batches = extract_features(model, [x[:2], x[2:]], "3")  # an iterable of batches: same features
    torch.testing.assert_close(batches["3"], feats["3"])
    assert _no_hooks(model)


def test_unknown_layer_names_it_and_lists_the_available_ones():
    model = _conv_net()
    with pytest.raises(ValueError, match=r"unknown layer 'conv9'.*\['0', '1', '2'"):
        extract_features(model, torch.rand(2, 1, 8, 8), ["0", "conv9"])
    assert _no_hooks(model)


def test_hooks_removed_after_success_and_failure_and_graph_kept():
    model = _conv_net()
    with pytest.raises(RuntimeError):  # a forward pass that fails half-way (wrong channel count)
        extract_features(model, torch.rand(2, 3, 8, 8), ["0", "3"])
    assert _no_hooks(model)
    x = torch.rand(2, 1, 8, 8, requires_grad=True)
    feats, _ = features_with_grad(model, x, ["3"])
    assert _no_hooks(model) and feats["3"].requires_grad
    (g,) = torch.autograd.grad(feats["3"].sum(), x)
    assert g.abs().sum() > 0
    rec = FeatureRecorder(model, ["1"])
    out = rec(x)
    assert _no_hooks(model) and rec.output is out and rec.features["1"].shape == (2, 4)
    mixed = torch.nn.Sequential(torch.nn.Conv2d(1, 2, 3), torch.nn.Dropout(0.5)).eval()
    mixed[1].train()  # MC dropout: the model in eval mode with its dropout in train mode
    FeatureRecorder(mixed, ["0"])
    assert not mixed.training and not mixed[0].training and mixed[1].training  # wrapping changes no mode


# ------------------------------------------------------------------------------------------------------------ LID
def _subspace_points(dim: int, n: int, seed: int) -> torch.Tensor:
    basis, _ = torch.linalg.qr(torch.randn(30, 30, generator=torch.Generator().manual_seed(0), dtype=torch.float64))
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, dim, generator=g, dtype=torch.float64) @ basis[:dim]  # dim-D Gaussian in 30-D


def test_lid_estimates_the_dimension_of_a_linear_subspace():
    est = {}
    for dim in (2, 5):
        x = _subspace_points(dim, 400, seed=dim)
        est[dim] = float(lid_mle(x[100:], x[:100], k=20).mean())
        assert abs(est[dim] - dim) <= 0.3 * dim, est
    assert est[5] > est[2]


def test_lid_known_answer_self_exclusion_and_zero_distances():
    ref = _subspace_points(3, 30, seed=0)
    k = 5
    d = np.sort(np.linalg.norm(ref.numpy()[:, None] - ref.numpy()[None], axis=2), axis=1)[:, 1:k + 1]
    expected = -k / np.log(d / d[:, -1:]).sum(1)  # the point itself (distance 0) skipped
    np.testing.assert_allclose(lid_mle(ref, ref, k).numpy(), expected, rtol=1e-10)
    outside = ref[:4] + 0.01  # not in the reference: its nearest neighbour counts
    d = np.sort(np.linalg.norm(outside.numpy()[:, None] - ref.numpy()[None], axis=2), axis=1)[:, :k]
    np.testing.assert_allclose(lid_mle(outside, ref, k).numpy(), -k / np.log(d / d[:, -1:]).sum(1), rtol=1e-10)
    dup = torch.cat([ref[:1].repeat(8, 1), ref[1:]])  # 8 copies of one point: zero distances remain
    assert torch.isfinite(lid_mle(dup, dup, k)).all()
    with pytest.raises(ValueError, match="k = 30 must be < the reference minibatch size, got 30"):
        lid_mle(ref, ref, k=30)
    with pytest.raises(ValueError, match="k = 20 must be < reference_size = 20"):
        LIDDetector(k=20, reference_size=20)


def test_lid_detector_flags_off_manifold_points():
    pool = _subspace_points(3, 300, seed=1)
    lid = LIDDetector(k=10, reference_size=50, seed=0).fit({"a": pool, "b": pool[:, :10]})
    g = torch.Generator().manual_seed(2)
    clean = _subspace_points(3, 60, seed=3)
    adv = clean + 0.3 * torch.randn(60, 30, generator=g, dtype=torch.float64)  # off the 3-D subspace
    feats = {"a": torch.cat([clean, adv]), "b": torch.cat([clean, adv])[:, :10]}
    z = lid.layer_scores(feats)
    assert z.shape == (120, 2)
    np.testing.assert_array_equal(z, lid.layer_scores(feats))  # seeded draws: deterministic
    with pytest.raises(ValueError, match="needs fit_combiner"):
        lid.score(feats)
    labels = np.r_[np.zeros(60), np.ones(60)]
    assert roc_auc(labels, lid.fit_combiner(feats, labels).score(feats)) > 0.95
    with pytest.raises(ValueError, match="at least reference_size = 100"):
        LIDDetector().fit({"a": pool[:99]})


def test_lid_of_a_sample_does_not_depend_on_its_batch():
    """The reference minibatches are drawn once at fit: a sample's LID is the same alone, in any position of any
    batch (a slice's clean and adversarial versions meet the same references)."""
    pool = _subspace_points(3, 300, seed=1)
    lid = LIDDetector(k=10, reference_size=50, seed=0).fit({"a": pool})
    queries = _subspace_points(5, 250, seed=4)
    together = lid.layer_scores({"a": queries})[:, 0]
    shuffled = torch.randperm(250, generator=torch.Generator().manual_seed(5))
    np.testing.assert_allclose(lid.layer_scores({"a": queries[shuffled]})[:, 0], together[shuffled.numpy()])
    np.testing.assert_allclose(lid.layer_scores({"a": queries[7:8]})[:, 0], together[7:8])


# ---------------------------------------------------------------------------------------------------- Mahalanobis
def test_mahalanobis_confidence_equals_numpy_with_tied_covariance():
    rng = np.random.default_rng(0)
    y = np.repeat([0, 1, 2], 40)
    f = rng.normal(size=(120, 4)) @ rng.normal(size=(4, 4)) + 3.0 * y[:, None]
    det = MahalanobisDetector(None, ["l"]).fit_features({"l": f}, y)
    means = np.stack([f[y == c].mean(0) for c in range(3)])
    centred = f - means[y]
    inv = np.linalg.inv(centred.T @ centred / len(f))  # the pooled within-class (tied) covariance
    q = rng.normal(size=(10, 4)) * 3
    expected = np.max([-np.einsum("nd,de,ne->n", q - m, inv, q - m) for m in means], axis=0)
    np.testing.assert_allclose(det.confidence_from_features({"l": q})[:, 0], expected, rtol=1e-8)


def test_mahalanobis_preprocessing_raises_the_confidence():
    model = _conv_net(seed=3)
    g = torch.Generator().manual_seed(0)
    x = 0.2 + 0.6 * torch.rand(64, 1, 8, 8, generator=g)
    y = torch.arange(64) % 3
    plain = MahalanobisDetector(model, ["3"]).fit(x, y)
    pre = MahalanobisDetector(model, ["3"], magnitude=0.01).fit(x, y)
    xt = 0.2 + 0.6 * torch.rand(16, 1, 8, 8, generator=g)
    x_hat = pre.preprocess(xt, "3")
    assert (x_hat - xt).abs().max() <= 0.01 + 1e-6
    before, after = plain.confidence(xt)[:, 0], pre.confidence(xt)[:, 0]
    assert (after > before).mean() >= 0.9 and after.mean() > before.mean()
    np.testing.assert_allclose(plain.score(xt), -before)  # one layer: score = -confidence
    two = MahalanobisDetector(model, ["1", "3"], magnitude=0.01).fit(x, y)
    with pytest.raises(ValueError, match="needs fit_combiner"):
        two.score(xt)
    noisy = uniform_noise(xt, 0.3, torch.Generator().manual_seed(1))
    s = two.fit_combiner(torch.cat([xt, noisy]), np.r_[np.zeros(16), np.ones(16)]).score(xt)
    assert s.shape == (16,) and np.isfinite(s).all() and _no_hooks(model)


# ------------------------------------------------------------------------------------------------------------- KD
def _clusters(rng: np.random.Generator, n: int, scale: float = 1.0) -> tuple[np.ndarray, np.ndarray]:
    y = np.repeat([0, 1], n)
    return scale * (rng.normal(size=(2 * n, 3)) + 6.0 * y[:, None]), y


def test_kd_orders_centre_below_far_point_and_picks_bandwidth_from_grid():
    rng = np.random.default_rng(0)
    f, y = _clusters(rng, 100)
    fv, yv = _clusters(rng, 50)
    grid = (0.01, 0.1, 0.5, 1.0, 5.0)
    kd = KernelDensityDetector(grid).fit(f, y, fv, yv)
    assert kd.bandwidth_ in grid and 0.1 < kd.bandwidth_ < 5.0
    assert set(kd.val_log_likelihood_) == set(grid)
    assert kd.val_log_likelihood_[kd.bandwidth_] == max(kd.val_log_likelihood_.values())
    s = kd.score(np.array([[0.0, 0.0, 0.0], [3.0, 3.0, 3.0]]), [0, 0])
    assert s[0] < s[1]
    small = KernelDensityDetector(grid).fit(*_clusters(rng, 100, 0.01), *_clusters(rng, 50, 0.01))
    assert small.bandwidth_ < kd.bandwidth_  # the grid search follows the feature scale
    with pytest.raises(ValueError, match="predicted class 2 has no clean training sample"):
        kd.score(f[:2], [0, 2])
    with pytest.raises(ValueError, match="needs clean val_features"):
        KernelDensityDetector(grid).fit(f, y)
    assert KernelDensityDetector(0.3).fit(f, y).bandwidth_ == 0.3


# ------------------------------------------------------------------------------------------------------------- BU
def test_bu_variance_rng_and_modes():
    x = torch.rand(5, 1, 8, 8, generator=torch.Generator().manual_seed(0))
    with pytest.raises(ValueError, match="has p = 0"):  # all passes equal: a BU of 0 would be no measurement
        BayesianUncertaintyDetector(_conv_net(dropout=0.0), passes=10).score(x)
    assert "p = 0" in bu_unavailable(_conv_net(dropout=0.0)) and "no dropout" in bu_unavailable(_conv_net())
    assert bu_unavailable(_conv_net(dropout=0.5)) == ""
    model = _conv_net(dropout=0.5)
    model.train()
    model[0].eval()  # a mixed mode, to be restored exactly
    modes = [m.training for m in model.modules()]
    state = torch.get_rng_state()
    bu = BayesianUncertaintyDetector(model, passes=20, seed=3, batch_size=2)
    s = bu.score(x)
    assert torch.equal(torch.get_rng_state(), state)
    assert [m.training for m in model.modules()] == modes
    assert s.shape == (5,) and np.all(s > 0)
    np.testing.assert_array_equal(s, bu.score(x))  # seeded: reproducible
    with pytest.raises(ValueError, match="no dropout layer"):
        BayesianUncertaintyDetector(_conv_net(), passes=5).score(x)


def test_bu_formula_single_logit_and_batch_norm_kept_in_eval():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(16, 8), nn.BatchNorm1d(8), nn.Dropout(0.5), nn.Linear(8, 1))
    x = torch.rand(6, 1, 4, 4)
    running = model[2].running_mean.clone()
    s = BayesianUncertaintyDetector(model, passes=30, seed=7).score(x)
    assert torch.equal(model[2].running_mean, running)  # batch norm ran in eval mode
    assert model.training  # the mode the model came in (train) is back
    model.eval()
    model[3].train()
    with torch.no_grad(), torch.random.fork_rng(devices=[]):
        torch.manual_seed(7)
        p = torch.stack([torch.sigmoid(model(x).double())[:, 0] for _ in range(30)])
    np.testing.assert_allclose(s, p.var(0, unbiased=False).numpy(), rtol=1e-10)


# --------------------------------------------------------------------------------------------- metrics, combiners
def test_auc_and_tpr_at_tnr_hand_computed():
    neg = np.arange(1, 11) / 10  # 0.1 ... 1.0
    pos = np.array([0.35, 0.95, 1.5, 2.0])
    labels, scores = detection_set([neg[:5], neg[5:]], pos)
    np.testing.assert_array_equal(labels, [0] * 10 + [1] * 4)
    # pairs pos > neg: 3 + 9 + 10 + 10 = 32 of 40
    assert roc_auc(labels, scores) == pytest.approx(0.8)
    # TNR >= 0.9 allows one negative (1.0) at or above t; the smallest such threshold is t = 0.95 (9 negatives
    # below it), which flags 0.95, 1.5 and 2.0: TPR 3/4
    assert tpr_at_tnr(labels, scores) == pytest.approx(0.75)
    assert tpr_at_tnr(labels, scores, tnr=1.0) == pytest.approx(0.5)  # t = 1.5: every negative below
    assert tpr_at_tnr(labels, scores, tnr=0.3) == pytest.approx(1.0)  # t = 0.35: 3 of 10 negatives below
    assert tpr_at_tnr(labels, scores, tnr=0.31) == pytest.approx(0.75)  # 4 negatives below: t > 0.4
    perfect = detection_metrics(*detection_set(np.zeros(10), np.ones(3)))
    assert perfect == {"auc": 1.0, "tpr_at_tnr": 1.0}


def test_uniform_noise_and_combiners():
    g = torch.Generator().manual_seed(0)
    x = torch.rand(4, 1, 8, 8, generator=g)
    noisy = uniform_noise(x, 0.05, torch.Generator().manual_seed(1))
    assert (noisy - x).abs().max() <= 0.05 + 1e-7 and noisy.min() >= 0 and noisy.max() <= 1
    assert torch.equal(noisy, uniform_noise(x, 0.05, torch.Generator().manual_seed(1)))
    rng = np.random.default_rng(0)
    kd, bu = rng.normal(size=200), rng.normal(size=200)
    labels = np.r_[np.zeros(100), np.ones(100)]
    kd[100:] += 3.0
    bu[100:] += 3.0
    comb = KDBUCombiner().fit(kd, bu, labels)
    assert roc_auc(labels, comb.score(kd, bu)) > roc_auc(labels, kd) and np.all(comb.coefficients > 0)
    with pytest.raises(ValueError, match="before fit"):
        LogisticCombiner().score(np.zeros((3, 2)))
    with pytest.raises(ValueError, match="both present"):
        LogisticCombiner().fit(np.zeros((3, 2)), [0, 0, 0])
