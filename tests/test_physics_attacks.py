"""The MRI-physics attacks: AdvBias (smooth multiplicative bias field) and the k-space perturbation, their random
baselines and measures: the B-spline, budgets, supports, masks, 2D/3D, batch independence, that the adversarial
version beats a random one of the same eps, and clear errors."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from medadv_monai.attacks.bias_field import (
    bias_field,
    bspline_basis,
    field_range,
    n_control_points,
    random_bias_field,
    spline_field,
)
from medadv_monai.attacks.kspace import kspace, kspace_support, random_kspace, relative_kspace_energy
from medadv_monai.errors import MedAdvInputError
from tests.helpers import brain, gen

pytestmark = pytest.mark.usefixtures("one_thread")  # tiny tensors: one thread (conftest)


def conv_model(dims: int, c: int, k: int, seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    conv, pool = (nn.Conv2d, nn.AdaptiveAvgPool2d) if dims == 2 else (nn.Conv3d, nn.AdaptiveAvgPool3d)
    return nn.Sequential(conv(c, 3, 3, padding=1), nn.Tanh(), pool(2), nn.Flatten(), nn.Linear(3 * 2**dims, k)).eval()


def linear_logit(w: torch.Tensor):
    """A single-logit model :math:`z = \\sum w x` (per sample)."""
    return lambda x: (x * w).flatten(1).sum(1, keepdim=True)


def ce(model, x, y) -> torch.Tensor:
    with torch.no_grad():
        out = model(x)
    if out.shape[1] == 1:
        return F.binary_cross_entropy_with_logits(out[:, 0], y.float(), reduction="none")
    return F.cross_entropy(out, y, reduction="none")


def fft_norm(t: torch.Tensor, dims=(-2, -1)) -> torch.Tensor:
    return torch.fft.fftn(t, dim=dims, norm="ortho").abs().flatten(1).norm(dim=1)


# ------------------------------------------------------------------------------------------------ the B-spline
@pytest.mark.parametrize("size,spacing,down", [(1, 64, 2), (7, 64, 2), (64, 8, 2), (100, 16, 1), (155, 64, 2),
                                               (240, 64, 2), (257, 64, 2)])
def test_basis_is_a_partition_of_unity_with_the_documented_count(size, spacing, down):
    b = bspline_basis(size, spacing, down)
    n = math.ceil(math.ceil(size / down) / spacing) + 3
    assert b.shape == (size, n) == (size, n_control_points(size, spacing, down)) and n >= 4
    assert (b >= 0).all() and torch.allclose(b.sum(1), torch.ones(size, dtype=torch.float64), atol=1e-12)


def test_constant_grid_gives_constant_field_2d_and_3d():
    for shape in [(24, 40), (10, 12, 14)]:
        ctrl_shape = (2, 1, *(n_control_points(s, 4, 2) for s in shape))
        s = spline_field(torch.full(ctrl_shape, 0.7, dtype=torch.float64), shape, spacing=4, downsample=2)
        assert s.shape == (2, 1, *shape) and torch.allclose(s, torch.full_like(s, 0.7), atol=1e-12)
    with pytest.raises(MedAdvInputError, match=r"control points .* must have shape"):
        spline_field(torch.zeros(1, 1, 3, 3), (24, 40), spacing=4)


def test_spline_second_differences_are_bounded_and_far_below_white_noise():
    shape, spacing, down = (64, 64), 8, 2  # 4 spans per axis, knot spacing h = 16 voxels
    h = 16
    ctrl = torch.rand(3, 1, 7, 7, generator=gen(1), dtype=torch.float64) * 2 - 1
    s = spline_field(ctrl, shape, spacing=spacing, downsample=down)
    noise = torch.rand(3, 1, *shape, generator=gen(2), dtype=torch.float64) * 2 - 1
    for dim in (2, 3):
        d2 = s.diff(n=2, dim=dim).abs().max()
        assert d2 <= 4 * ctrl.abs().max() / h**2 + 1e-12  # |s''| <= sum |beta''| max|P| / h^2
        assert d2 < 0.01 * noise.diff(n=2, dim=dim).abs().max()


# ------------------------------------------------------------------------------------------------ bias field
@pytest.mark.parametrize("shape", [(2, 3, 32, 40), (2, 2, 12, 16, 20)])
@pytest.mark.parametrize("shared", [True, False])
def test_bias_field_stays_in_range_keeps_background_and_is_applied(shape, shared):
    x, eps = brain(shape), 0.25
    model, y = conv_model(len(shape) - 2, shape[1], 3), torch.tensor([0, 2])
    x_adv, field = bias_field(model, x, y, eps=eps, steps=4, spacing=4, shared_across_channels=shared,
                              generator=gen(), return_field=True)
    assert x_adv.shape == x.shape and x_adv.dtype == x.dtype and 0 <= x_adv.min() and x_adv.max() <= 1
    assert field.shape == (shape[0], 1 if shared else shape[1], *shape[2:])
    lo, hi = field_range(field)
    assert (lo >= 1 - eps - 1e-6).all() and (hi <= 1 + eps + 1e-6).all() and (hi - lo > 0.01).all()
    assert torch.equal(x_adv[x == 0], torch.zeros_like(x_adv[x == 0]))  # multiplicative: background stays zero
    assert torch.allclose(x_adv, torch.clamp(field * x, 0, 1), atol=1e-6)
    rand, rfield = random_bias_field(x, eps=eps, spacing=4, shared_across_channels=shared, generator=gen(),
                                     return_field=True)
    lo, hi = field_range(rfield)  # the random baseline spans the whole range
    assert torch.allclose(lo, torch.full_like(lo, 1 - eps), atol=1e-5)
    assert torch.allclose(hi, torch.full_like(hi, 1 + eps), atol=1e-5)
    assert torch.equal(rand[x == 0], torch.zeros_like(rand[x == 0])) and 0 <= rand.min() and rand.max() <= 1


def test_bias_field_mask_keeps_the_outside_unchanged():
    x = brain((2, 2, 32, 32))
    m = torch.zeros(2, 1, 32, 32)
    m[:, :, 4:20, 6:30] = 1.0
    m[:, :, 20:24, 6:30] = 0.5
    model, y = conv_model(2, 2, 2), torch.tensor([0, 1])
    for x_adv, field in (bias_field(model, x, y, steps=3, spacing=4, mask=m, generator=gen(), return_field=True),
                         random_bias_field(x, spacing=4, mask=m, generator=gen(), return_field=True)):
        out = (m == 0).expand_as(x)
        assert torch.equal(x_adv[out], x[out]) and (field[(m == 0).expand_as(field)] == 1).all()
        assert not torch.equal(x_adv, x) and torch.allclose(x_adv, torch.clamp(field * x, 0, 1))  # field is B_eff


def test_per_sample_eps_sets_each_samples_range():
    x = brain((2, 1, 32, 32))
    _, field = random_bias_field(x, eps=torch.tensor([0.1, 0.4]), spacing=8, generator=gen(), return_field=True)
    lo, hi = field_range(field)
    assert torch.allclose(lo, torch.tensor([0.9, 0.6]), atol=1e-5)
    assert torch.allclose(hi, torch.tensor([1.1, 1.4]), atol=1e-5)


# ------------------------------------------------------------------------------------------------ k-space
def band_mask(shape, low, high):
    r = torch.sqrt(sum(g**2 for g in torch.meshgrid(*[2 * torch.fft.fftfreq(n) for n in shape], indexing="ij")))
    return (r >= low) & (r <= high)


@pytest.mark.parametrize("shape,per_slice", [((2, 2, 24, 32), False), ((2, 1, 8, 12, 16), False),
                                             ((2, 1, 8, 12, 16), True)])
def test_kspace_budget_band_and_range(shape, per_slice):
    x, eps, band = brain(shape), 0.08, (0.3, 0.7)
    dims = (-2, -1) if len(shape) == 4 or per_slice else (-3, -2, -1)
    model, y = conv_model(len(shape) - 2, shape[1], 3), torch.tensor([1, 2])
    x_adv, d = kspace(model, x, y, eps=eps, steps=4, band=band, per_slice=per_slice, generator=gen(),
                      return_delta=True)
    rand, d_rand = random_kspace(x, eps=eps, band=band, per_slice=per_slice, generator=gen(), return_delta=True)
    budget = eps * fft_norm(x, dims)
    off_band = ~band_mask(shape[len(shape) + dims[0]:], *band)
    for out, delta in ((x_adv, d), (rand, d_rand)):
        assert out.shape == x.shape and 0 <= out.min() and out.max() <= 1 and not torch.equal(out, x)
        assert delta.is_complex() and delta.shape == x.shape
        assert (delta.abs().flatten(1).norm(dim=1) <= budget * (1 + 1e-5)).all()
        assert (delta[..., off_band] == 0).all()
        recon = torch.fft.ifftn(torch.fft.fftn(x, dim=dims, norm="ortho") + delta, dim=dims, norm="ortho")
        assert torch.allclose(out, recon.abs().clamp(0, 1), atol=1e-6)  # the definition, with the returned d
    assert torch.allclose(d_rand.abs().flatten(1).norm(dim=1), budget, rtol=1e-5)  # the baseline uses it all
    assert (d.abs().flatten(1).norm(dim=1) > 0.5 * budget).all()  # the attack used much of it


def test_kspace_spikes_only_touch_the_given_locations():
    x = brain((1, 1, 16, 20))
    model = linear_logit(torch.randn(1, 1, 16, 20, generator=gen(3)))
    spikes = [(0, 3), (-8, -1), (5, 9)]
    _, d = kspace(model, x, torch.tensor([1]), eps=0.1, steps=3, spikes=spikes, generator=gen(), return_delta=True)
    nonzero = torch.fft.fftshift(d[0, 0] != 0).nonzero().tolist()
    assert sorted(nonzero) == sorted([[8 + a, 10 + b] for a, b in spikes])
    assert kspace_support((16, 20), spikes=spikes).sum() == 3


def test_kspace_mask_keeps_the_outside_unchanged():
    x = brain((2, 2, 24, 24))
    m = torch.zeros(1, 1, 24, 24)
    m[..., 6:18, 6:18] = 1.0
    model, y = conv_model(2, 2, 2), torch.tensor([0, 1])
    for x_adv in (kspace(model, x, y, eps=0.1, steps=3, mask=m, generator=gen()),
                  random_kspace(x, eps=0.1, mask=m, generator=gen())):
        out = (m == 0).expand_as(x)
        assert torch.equal(x_adv[out], x[out]) and not torch.equal(x_adv, x)


def test_relative_kspace_energy_is_the_realised_change():
    x = brain((3, 2, 16, 16))
    assert torch.allclose(relative_kspace_energy(x, x * 1.1), torch.full((3,), 0.1), atol=1e-5)
    x_adv = random_kspace(x, eps=0.05, generator=gen())
    realised = relative_kspace_energy(x, x_adv)
    assert torch.allclose(realised, (x_adv - x).flatten(1).norm(dim=1) / x.flatten(1).norm(dim=1), rtol=1e-4)
    assert (realised > 0).all() and (realised < 0.05 * 1.5).all()


# ------------------------------------------------------------------------------------------------ the attacks work
def test_adversarial_beats_random_of_the_same_eps():
    # single logit z = sum w x with w > 0 on the left half, < 0 on the right: y = 1, lower z to raise the BCE
    x = brain((2, 1, 32, 32))
    w = torch.ones(1, 1, 32, 32) / 100
    w[..., 16:] = -w[..., 16:] * 1.2
    model, y = linear_logit(w), torch.tensor([1, 1])
    clean = ce(model, x, y)
    adv_bias = ce(model, bias_field(model, x, y, eps=0.3, steps=10, spacing=8, generator=gen()), y)
    rand_bias = torch.stack([ce(model, random_bias_field(x, eps=0.3, spacing=8, generator=gen(s)), y)
                             for s in range(8)])
    assert (adv_bias > rand_bias.max(0).values).all() and (adv_bias > clean + 0.05).all()
    # k-space: a random linear read-out of the image, random multi-class head
    torch.manual_seed(0)
    net, y3 = nn.Sequential(nn.Flatten(), nn.Linear(32 * 32, 3)).eval(), torch.tensor([0, 2])
    adv_k = ce(net, kspace(net, x, y3, eps=0.05, steps=10, generator=gen()), y3)
    rand_k = torch.stack([ce(net, random_kspace(x, eps=0.05, generator=gen(s)), y3) for s in range(8)])
    assert (adv_k > rand_k.max(0).values).all() and (adv_k > ce(net, x, y3) + 0.05).all()


def test_targeted_descends_towards_the_target():
    x, t = brain((2, 1, 16, 16, 16)), torch.tensor([2, 0])
    model = conv_model(3, 1, 3, seed=1)
    before = ce(model, x, t)
    assert (ce(model, bias_field(model, x, t, steps=5, spacing=4, targeted=True, generator=gen()), t) < before).all()
    assert (ce(model, kspace(model, x, t, eps=0.1, steps=5, targeted=True, generator=gen()), t) < before).all()


def test_dense_loss_fn_for_segmentation():
    torch.manual_seed(0)
    seg = nn.Conv3d(2, 3, 3, padding=1).eval()
    x, masks = brain((2, 2, 8, 12, 12)), (torch.rand(2, 3, 8, 12, 12, generator=gen(4)) > 0.5).float()

    def loss_fn(out, target):
        return F.binary_cross_entropy_with_logits(out, target, reduction="none").mean(dim=(1, 2, 3, 4))

    with torch.no_grad():
        clean = loss_fn(seg(x), masks)
        for x_adv in (bias_field(seg, x, masks, steps=4, spacing=4, loss_fn=loss_fn, generator=gen()),
                      kspace(seg, x, masks, eps=0.1, steps=4, loss_fn=loss_fn, generator=gen())):
            assert (loss_fn(seg(x_adv), masks) > clean).all()


def test_batch_independence_and_determinism():
    x, y = brain((3, 2, 24, 24)), torch.tensor([0, 1, 2])
    model = conv_model(2, 2, 3, seed=2)
    for attack in (lambda xb, yb: bias_field(model, xb, yb, steps=3, spacing=4, random_start=False),
                   lambda xb, yb: kspace(model, xb, yb, eps=0.1, steps=3, band=(0, 0.5), random_start=False)):
        full = attack(x, y)
        for i in range(3):
            assert torch.allclose(attack(x[i:i + 1], y[i:i + 1]), full[i:i + 1], atol=1e-6)
    assert torch.equal(bias_field(model, x, y, steps=2, spacing=4, generator=gen(5)),
                       bias_field(model, x, y, steps=2, spacing=4, generator=gen(5)))
    assert torch.equal(kspace(model, x, y, eps=0.1, steps=2, generator=gen(5)),
                       kspace(model, x, y, eps=0.1, steps=2, generator=gen(5)))


# ------------------------------------------------------------------------------------------------ errors
def test_clear_errors():
    x, y = brain((1, 1, 8, 8)), torch.tensor([1])
    model = linear_logit(torch.ones(1, 1, 8, 8))
    cases = [
        (lambda: bias_field(model, x, y, eps=0.0), r"eps must be in \(0, 1\).*got 0"),
        (lambda: bias_field(model, x, y, eps=1.0), r"eps must be in \(0, 1\).*got 1"),
        (lambda: random_bias_field(x, eps=-0.2), r"eps must be in \(0, 1\).*got -0.2"),
        (lambda: kspace(model, x, y, eps=0.0, steps=1), r"eps must be in \(0, 1\].*got 0"),
        (lambda: random_kspace(x, eps=1.5), r"eps must be in \(0, 1\].*got 1.5"),
        (lambda: bias_field(model, x, y, spacing=0), r"spacing must be an integer >= 1, got 0"),
        (lambda: random_bias_field(x, downsample=1.5), r"downsample must be an integer >= 1, got 1.5"),
        (lambda: bias_field(model, x[0], y), r"x must be 4D .* or 5D .*got 3D"),
        (lambda: kspace(model, x[0], y, eps=0.1, steps=1), r"x must be 4D .* or 5D .*got 3D"),
        (lambda: random_kspace(x[0], eps=0.1), r"x must be 4D .* or 5D .*got 3D"),
        (lambda: bias_field(model, x, y, steps=0), r"steps must be an integer >= 1, got 0"),
        (lambda: kspace(model, x, y, eps=0.1, steps=1, alpha=0), r"alpha must be a finite number > 0, got 0"),
        (lambda: bias_field(model, x, torch.tensor([3])), r"labels for a single-logit .* must be 0 or 1"),
        (lambda: random_kspace(x, eps=0.1, band=(0.5, 0.2)), r"band must be \(low, high\).*got \(0.5, 0.2\)"),
        (lambda: random_kspace(x, eps=0.1, band=(-0.1, 0.2)), r"band must be .*0 <= low < high"),
        (lambda: random_kspace(x, eps=0.1, band="low"), r"band must be .*got 'low'"),
        (lambda: random_kspace(x, eps=0.1, band=(0.05, 0.1)), r"band \(0.05, 0.1\) holds no frequency of a \(8, 8\)"),
        (lambda: random_kspace(x, eps=0.1, spikes=[(4, 0)]), r"spike \(4, 0\) is outside .* \[-4, 3\]"),
        (lambda: random_kspace(x, eps=0.1, spikes=[(1,)]), r"spikes must be a non-empty sequence of 2-tuples"),
        (lambda: random_kspace(x, eps=0.1, spikes=[]), r"spikes must be a non-empty sequence"),
        (lambda: random_kspace(x, eps=0.1, band=(0, 1), spikes=[(0, 1)]), r"band or spikes, not both"),
        (lambda: random_bias_field(x, mask=torch.ones(1, 1, 4, 4)), r"mask of shape \(1, 1, 4, 4\) does not broadcast"),
        (lambda: relative_kspace_energy(x, x[:, :, :4]), r"x_adv must have x's shape"),
        (lambda: field_range(torch.ones(3)), r"field must be a tensor of shape \(N, C"),
    ]
    for call, pattern in cases:
        with pytest.raises(MedAdvInputError, match=pattern):
            call()
