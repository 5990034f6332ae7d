"""The HFC term (Yao et al., MICCAI 2021): known answers against the fitted mixtures, and its use in a PGD attack."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from medadv_monai.attacks.pgd import pgd
from medadv_monai.detectors import extract_features, features_with_grad
from medadv_monai.losses.hfc import HFCTerm, hfc_attack

pytestmark = pytest.mark.usefixtures("one_thread")


def _features(seed: int = 0) -> tuple[dict[str, np.ndarray], np.ndarray]:
    """Two classes, each two well-separated clusters, in a 3-channel and a 5-channel layer."""
    rng = np.random.default_rng(seed)
    y = np.repeat([0, 1], 80)
    cluster = np.tile(np.repeat([0, 1], 40), 2)
    feats = {}
    for name, c in (("a", 3), ("b", 5)):
        centres = rng.normal(scale=8.0, size=(2, 2, c))
        mix = rng.normal(size=(c, c)) * 0.5 + np.eye(c)
        feats[name] = centres[y, cluster] + rng.normal(size=(160, c)) @ mix
    return feats, y


def _direct(term: HFCTerm, f: dict[str, np.ndarray], target: np.ndarray) -> np.ndarray:
    """lam * sum_l (f - mu_k*)^T Sigma_k*^-1 (f - mu_k*) / d_l with numpy, k* from GaussianMixture.predict."""
    total = np.zeros(len(target))
    for name in term.layers:
        for i, t in enumerate(target):
            gm = term.mixtures[name][int(t)]
            k = gm.predict(f[name][i:i + 1])[0]
            diff = f[name][i] - gm.means_[k]
            total[i] += diff @ np.linalg.inv(gm.covariances_[k]) @ diff / len(diff)
    return term.lam * total


def test_hfc_zero_at_the_component_mean_and_equal_to_the_mahalanobis_distance():
    feats, y = _features()
    term = HFCTerm(n_components=2, lam=0.5).fit(feats, y)
    assert term.layers == ["a", "b"] and term.skipped == []
    target = np.array([0, 1, 1])
    at_mean = {n: np.stack([term.mixtures[n][t].means_[j] for t, j in zip(target, (0, 1, 0))]) for n in feats}
    value = term({n: torch.from_numpy(v) for n, v in at_mean.items()}, torch.from_numpy(target))
    torch.testing.assert_close(value, torch.zeros(3, dtype=torch.float64), atol=1e-9, rtol=0)
    comps = term.components({n: torch.from_numpy(v) for n, v in at_mean.items()}, torch.from_numpy(target))
    assert comps["a"].tolist() == [0, 1, 0]
    q = {n: np.random.default_rng(1).normal(scale=6.0, size=(12, f.shape[1])) for n, f in feats.items()}
    target = np.arange(12) % 2
    value = term({n: torch.from_numpy(v) for n, v in q.items()}, torch.from_numpy(target))
    np.testing.assert_allclose(value.numpy(), _direct(term, q, target), rtol=1e-7)


def test_hfc_skips_wide_layers_and_rejects_unknown_classes():
    feats, y = _features()
    wide = np.random.default_rng(2).normal(size=(160, 513))
    term = HFCTerm().fit({"a": feats["a"], "wide": wide}, y)
    assert term.layers == ["a"] and term.skipped == ["wide"]
    q = torch.from_numpy(feats["a"][:4])
    t = torch.tensor([0, 1, 0, 1])
    torch.testing.assert_close(term({"a": q, "wide": torch.from_numpy(wide[:4])}, t), term({"a": q}, t))
    with pytest.raises(ValueError, match="target class 2 has no fitted mixture"):
        term({"a": q}, torch.tensor([0, 1, 2, 0]))
    with pytest.raises(ValueError, match="lack the fitted layers"):
        term({"b": q}, t)


def test_hfc_component_choice_carries_no_gradient():
    feats, y = _features()
    term = HFCTerm(n_components=2).fit(feats, y)
    f = torch.from_numpy(feats["a"][::16] + 1.0).requires_grad_(True)
    target = torch.arange(len(f)) % 2
    (g,) = torch.autograd.grad(term({"a": f, "b": torch.from_numpy(feats["b"][::16])}, target).sum(), f)
    k = term.components({"a": f, "b": torch.from_numpy(feats["b"][::16])}, target)["a"]
    assert not k.requires_grad
    expected = []  # d/df (f - mu)^T Sigma^-1 (f - mu) / d = 2 Sigma^-1 (f - mu) / d with mu, Sigma of a fixed k*
    for i, t in enumerate(target.tolist()):
        gm = term.mixtures["a"][t]
        expected.append(2 * np.linalg.inv(gm.covariances_[k[i]]) @ (f[i].detach().numpy() - gm.means_[k[i]]) / 3)
    np.testing.assert_allclose(g.numpy(), np.stack(expected), rtol=1e-6)


def _trained_net() -> tuple[nn.Module, torch.Tensor, torch.Tensor]:
    """A tiny conv net that tells dark-striped from bright-dotted 8x8 images, trained in a few steps."""
    torch.manual_seed(0)
    n = 96
    y = torch.arange(n) % 2
    x = torch.rand(n, 1, 8, 8) * 0.4 + 0.3
    x[y == 0, :, ::2] -= 0.2
    x[y == 1, :, 1::3, 1::3] += 0.2
    model = nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.ReLU(), nn.Conv2d(4, 6, 3, padding=1), nn.ReLU(),
                          nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(6, 2))
    opt = torch.optim.Adam(model.parameters(), lr=0.05)
    for _ in range(60):
        opt.zero_grad()
        nn.functional.cross_entropy(model(x), y).backward()
        opt.step()
    return model.eval(), x.clamp(0, 1), y


@pytest.mark.parametrize("targeted", [True, False])
def test_pgd_with_hfc_ends_with_a_lower_term_inside_the_budget(targeted):
    model, x, y = _trained_net()
    layers = ["1", "3"]
    term = HFCTerm(n_components=1).fit(extract_features(model, x, layers), y)
    hfc_model, hfc_loss = hfc_attack(model, term, targeted=targeted)
    x0, y0 = x[:16], y[:16]
    labels = 1 - y0 if targeted else y0
    eps, kw = 0.2, dict(alpha=0.04, steps=10, targeted=targeted)
    plain = pgd(model, x0, labels, eps=eps, generator=torch.Generator().manual_seed(0), **kw)
    with_hfc = pgd(hfc_model, x0, labels, eps=eps, generator=torch.Generator().manual_seed(0), loss_fn=hfc_loss,
                   **kw)
    hfc_class = 1 - y0  # targeted: the target; untargeted (two classes): the other class

    def hfc(xa: torch.Tensor) -> float:
        with torch.no_grad():
            return float(term(features_with_grad(model, xa, layers)[0], hfc_class).mean())

    assert hfc(with_hfc) < 0.5 * hfc(plain)
    for xa in (plain, with_hfc):
        assert (xa - x0).abs().max() <= eps + 1e-6 and xa.min() >= 0 and xa.max() <= 1
    assert all(not m._forward_hooks for m in model.modules())
    with pytest.raises(ValueError, match="did not produce"):
        hfc_loss(model(x0), labels)
