"""Tests of the attack core: properties (hypothesis), known answers, textbook agreement and clear errors."""

from __future__ import annotations

import math
from typing import Any, Callable

import pytest
import torch
import torch.nn.functional as F
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from torch import nn

from medadv_monai.attacks import bim, fgsm, get_attack, mifgsm, pgd, run_attack
from medadv_monai.errors import MedAdvInputError

pytestmark = pytest.mark.usefixtures("one_thread")  # tiny tensors: one thread (conftest)


ATTACK_NAMES = ("fgsm", "bim", "pgd", "mifgsm")
V2_NAMES = ("apgd", "cwl2", "square", "autoattack")  # attack suite v2: the same invariants, their own known answers


# ----------------------------------------------------------------------------------------------------------------
# helpers (no conftest)
# ----------------------------------------------------------------------------------------------------------------
def make_model(kind: str, dims: int, channels: int, k: int, spatial: tuple[int, ...], seed: int, dtype=torch.float32):
    """A tiny random model with ``k`` outputs: ``linear`` (flatten + linear) or ``conv`` (conv, tanh, pool, linear)."""
    torch.manual_seed(seed)
    if kind == "linear":
        model = nn.Sequential(nn.Flatten(), nn.Linear(channels * math.prod(spatial), k))
    else:
        conv = nn.Conv2d if dims == 2 else nn.Conv3d
        pool = nn.AdaptiveAvgPool2d if dims == 2 else nn.AdaptiveAvgPool3d
        model = nn.Sequential(
            conv(channels, 3, 3, padding=1), nn.Tanh(), pool(2), nn.Flatten(), nn.Linear(3 * 2**dims, k)
        )
    return model.to(dtype)


def make_labels(k: int, n: int, g: torch.Generator) -> torch.Tensor:
    if k == 1:
        return torch.randint(0, 2, (n,), generator=g).float()
    return torch.randint(0, k, (n,), generator=g)


def call_attack(name: str, model, x, y, eps, *, alpha=None, steps=3, init_delta=None, **kw) -> torch.Tensor:
    fn = get_attack(name)
    if name == "fgsm":
        return fn(model, x, y, eps=eps, **kw)
    if name in V2_NAMES:  # small budgets; a fresh seeded generator per call, so a sample alone draws as in a batch
        small = {"apgd": {"steps": steps}, "cwl2": {"steps": steps, "binary_steps": 2},
                 "square": {"queries": 8, "generator": torch.Generator().manual_seed(0)},
                 "autoattack": {"steps": steps, "n_targets": 2, "queries": 8,
                                "generator": torch.Generator().manual_seed(0)}}[name]
        return fn(model, x, y, eps=eps, **small, **kw)
    alpha = alpha if alpha is not None else 0.4 * eps if not isinstance(eps, torch.Tensor) else 0.4 * eps + 1e-3
    if isinstance(alpha, float) and alpha <= 0:
        alpha = 1e-3
    if name == "pgd":
        return fn(model, x, y, eps=eps, alpha=alpha, steps=steps, init_delta=init_delta, **kw)
    return fn(model, x, y, eps=eps, alpha=alpha, steps=steps, **kw)


# ----------------------------------------------------------------------------------------------------------------
# properties
# ----------------------------------------------------------------------------------------------------------------
@st.composite
def attack_cases(draw):
    dims = draw(st.sampled_from([2, 3]))
    spatial = (4, 4) if dims == 2 else (3, 4, 4)
    return dict(
        name=draw(st.sampled_from(ATTACK_NAMES + V2_NAMES)),
        dims=dims,
        spatial=spatial,
        n=draw(st.integers(1, 3)),
        channels=draw(st.sampled_from([1, 2])),
        k=draw(st.sampled_from([1, 2, 3, 4])),  # 4: APGD-T inside the AutoAttack-style ensemble
        early_stop=draw(st.booleans()),
        dlr=draw(st.booleans()),
        kind=draw(st.sampled_from(["linear", "conv"])),
        eps=draw(st.one_of(st.just(0.0), st.floats(1e-3, 0.5))),
        per_sample_eps=draw(st.booleans()),
        mask=draw(st.sampled_from([None, "per_sample", "shared", "per_channel"])),
        soft=draw(st.booleans()),
        targeted=draw(st.booleans()),
        train=draw(st.booleans()),
        dtype=draw(st.sampled_from([torch.float32, torch.float64])),
        seed=draw(st.integers(0, 2**16)),
    )


def _mask_for(kind: str | None, soft: bool, n: int, c: int, spatial, g: torch.Generator, dtype) -> torch.Tensor | None:
    if kind is None:
        return None
    shape = {"per_sample": (n, 1, *spatial), "shared": (1, 1, *spatial), "per_channel": (n, c, *spatial)}[kind]
    hard = (torch.rand(shape, generator=g) < 0.5).to(dtype)
    if not soft:
        return hard
    return hard * torch.rand(shape, generator=g).to(dtype)  # soft values, exact zeros where hard == 0


@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(attack_cases())
def test_attack_properties(case: dict[str, Any]) -> None:
    g = torch.Generator().manual_seed(case["seed"])
    n, c, sp, dt = case["n"], case["channels"], case["spatial"], case["dtype"]
    model = make_model(case["kind"], case["dims"], c, case["k"], sp, case["seed"], dt)
    model.train(case["train"])
    for p in model[-1].parameters():  # a frozen head and a trainable body: flags must stay as they are
        p.requires_grad_(False)
    flags = [p.requires_grad for p in model.parameters()]

    x = torch.rand((n, c, *sp), generator=g).to(dt)
    x[x < 0.1] = 0.0  # values on the bounds exercise the [0, 1] clip
    x[x > 0.9] = 1.0
    y = make_labels(case["k"], n, g)
    if case["per_sample_eps"]:
        eps: float | torch.Tensor = torch.rand(n, generator=g).to(dt) * 0.3
        eps_b = eps.reshape(n, *([1] * (x.ndim - 1)))
    else:
        eps = case["eps"]
        eps_b = torch.tensor(eps, dtype=dt)
    mask = _mask_for(case["mask"], case["soft"], n, c, sp, g, dt)
    init_delta = (torch.rand(x.shape, generator=g).to(dt) * 2 - 1) * 0.5
    x0, y0 = x.clone(), y.clone()
    m0 = mask.clone() if mask is not None else None

    extra: dict[str, Any] = {}
    if case["name"] in ("bim", "pgd", "mifgsm", "apgd"):
        extra["early_stop"] = case["early_stop"]
    if case["name"] == "apgd" and case["dlr"] and case["k"] >= 3 and not case["targeted"]:
        extra["loss"] = "dlr"
    out = call_attack(case["name"], model, x, y, eps, mask=mask, targeted=case["targeted"], init_delta=init_delta,
                      **extra)

    m_full = torch.ones_like(x) if mask is None else mask.expand_as(x)
    assert out.shape == x.shape and out.dtype == x.dtype and out.device == x.device
    assert not out.requires_grad
    assert bool(((out - x).abs() <= eps_b * m_full + 1e-6).all())
    assert bool((out >= 0).all()) and bool((out <= 1).all())
    zero = m_full == 0
    assert torch.equal(out[zero], x[zero])
    if not case["per_sample_eps"] and case["eps"] == 0.0:
        assert torch.equal(out, x)
    # inputs untouched, model untouched
    assert torch.equal(x, x0) and torch.equal(y, y0)
    if mask is not None:
        assert torch.equal(mask, m0)
    assert all(p.grad is None for p in model.parameters())
    assert [p.requires_grad for p in model.parameters()] == flags
    assert model.training == case["train"]

    if case["name"] == "pgd":  # the random start respects the same box and mask
        rs = pgd(model, x, y, eps=eps, alpha=0.01, steps=1, mask=mask, targeted=case["targeted"],
                 generator=torch.Generator().manual_seed(case["seed"]))
        assert bool(((rs - x).abs() <= eps_b * m_full + 1e-6).all())
        assert bool((rs >= 0).all()) and bool((rs <= 1).all()) and torch.equal(rs[zero], x[zero])

    # batch independence: each sample attacked alone gives the same result
    for i in range(n):
        mi = None
        if mask is not None:
            mi = mask if mask.shape[0] == 1 else mask[i : i + 1]
        ei = eps[i : i + 1] if isinstance(eps, torch.Tensor) else eps
        oi = call_attack(
            case["name"], model, x[i : i + 1], y[i : i + 1], ei, mask=mi, targeted=case["targeted"],
            init_delta=init_delta[i : i + 1], **extra,
        )
        torch.testing.assert_close(oi[0], out[i], atol=1e-6, rtol=0)


# ----------------------------------------------------------------------------------------------------------------
# known answers
# ----------------------------------------------------------------------------------------------------------------
def linear_model(shape=(4, 1, 8, 8), seed=0) -> tuple[nn.Module, torch.Tensor]:
    torch.manual_seed(seed)
    model = nn.Sequential(nn.Flatten(), nn.Linear(math.prod(shape[1:]), 1))
    w = model[1].weight.detach().reshape(shape[1:])
    return model, w


def test_fgsm_linear_known_answer() -> None:
    model, w = linear_model()
    x = torch.full((4, 1, 8, 8), 0.5)
    y = torch.zeros(4)
    eps = 0.05
    out = fgsm(model, x, y, eps=eps)
    # label 0, BCE: dL/dx = sigmoid(z) w, so the step is eps * sign(w)
    torch.testing.assert_close(out - x, (eps * torch.sign(w)).expand_as(x), atol=1e-7, rtol=0)


def test_fgsm_linear_masked_known_answer() -> None:
    model, w = linear_model()
    x = torch.full((4, 1, 8, 8), 0.5)
    y = torch.zeros(4)
    mask = torch.zeros(4, 1, 8, 8)
    mask[:, :, 2:5, 3:7] = 1.0
    out = fgsm(model, x, y, eps=0.05, mask=mask)
    expected = (0.05 * torch.sign(w) * mask).expand_as(x)
    torch.testing.assert_close(out - x, expected, atol=1e-7, rtol=0)
    assert torch.equal(out[mask == 0], x[mask == 0])
    assert bool(((out - x)[mask == 1].abs() > 0.04).all())


@pytest.mark.parametrize("name", ["pgd", "bim", "mifgsm"])
def test_iterative_linear_reaches_corner(name: str) -> None:
    model, w = linear_model()
    g = torch.Generator().manual_seed(1)
    x = torch.rand(4, 1, 8, 8, generator=g)
    y = torch.zeros(4)
    eps = 0.1
    fn = get_attack(name)
    kw: dict[str, Any] = {"generator": g} if name == "pgd" else {}
    out = fn(model, x, y, eps=eps, alpha=0.03, steps=10, **kw)
    corner = torch.clamp(x + eps * torch.sign(w), 0, 1)
    torch.testing.assert_close(out, corner, atol=1e-6, rtol=0)


@pytest.mark.parametrize("name", ATTACK_NAMES)
def test_targeted_single_logit_increases_logit(name: str) -> None:
    model, _ = linear_model()
    x = torch.full((4, 1, 8, 8), 0.5)
    target = torch.ones(4)
    out = run_attack(name, model, x, target, eps=0.05, targeted=True)
    with torch.no_grad():
        assert bool((model(out) > model(x)).all())


@pytest.mark.parametrize("name", ATTACK_NAMES)
def test_targeted_ce_increases_target_probability(name: str) -> None:
    model = make_model("conv", 2, 1, 4, (8, 8), seed=3)
    g = torch.Generator().manual_seed(2)
    x = torch.rand(4, 1, 8, 8, generator=g) * 0.8 + 0.1
    target = torch.tensor([0, 1, 2, 3])
    out = run_attack(name, model, x, target, eps=0.05, targeted=True)
    with torch.no_grad():
        p_clean = F.softmax(model(x), 1).gather(1, target[:, None])
        p_adv = F.softmax(model(out), 1).gather(1, target[:, None])
    assert bool((p_adv > p_clean).all())


@pytest.mark.parametrize("name", ATTACK_NAMES)
def test_single_logit_untargeted_moves_logit_down_for_label_one(name: str) -> None:
    model = make_model("conv", 3, 1, 1, (4, 6, 6), seed=5)
    g = torch.Generator().manual_seed(4)
    x = torch.rand(2, 1, 4, 6, 6, generator=g) * 0.8 + 0.1
    y = torch.ones(2)
    out = run_attack(name, model, x, y, eps=0.05)
    assert not torch.equal(out, x)
    with torch.no_grad():
        assert bool((model(out) < model(x)).all())


@pytest.mark.parametrize("name", ATTACK_NAMES)
def test_per_sample_eps(name: str) -> None:
    model = make_model("conv", 2, 2, 3, (8, 8), seed=6)
    g = torch.Generator().manual_seed(5)
    x = torch.rand(4, 2, 8, 8, generator=g)
    y = torch.tensor([0, 1, 2, 0])
    eps = torch.tensor([0.0, 0.01, 0.2, 0.05])
    out = run_attack(name, model, x, y, eps=eps)
    assert torch.equal(out[0], x[0])
    for i in range(4):
        assert float((out[i] - x[i]).abs().max()) <= float(eps[i]) + 1e-6
    assert float((out[2] - x[2]).abs().max()) > 0.05  # the large budget is used


@pytest.mark.parametrize("name", ATTACK_NAMES)
def test_eps_zero_returns_x_exactly(name: str) -> None:
    model = make_model("linear", 2, 1, 2, (8, 8), seed=7)
    x = torch.rand(4, 1, 8, 8)
    out = run_attack(name, model, x, torch.tensor([0, 1, 1, 0]), eps=0.0)
    assert torch.equal(out, x)


@pytest.mark.parametrize("name", ["bim", "pgd", "mifgsm", "apgd"])
def test_early_stop_freezes_fooled_samples_at_their_first_fooling_iterate(name: str) -> None:
    # z = w.x + b on a linear model: a sign step of alpha moves z by alpha ||w||_1, so from z(x) = 2.5 alpha ||w||_1
    # the third step fools the model; with early_stop the sample stays there, without it it walks on to the corner
    model, w = linear_model()
    x = torch.full((4, 1, 8, 8), 0.5)
    alpha, steps = 0.005, 10
    dz = alpha * float(w.abs().sum())
    with torch.no_grad():
        model[1].bias.add_(-model(x)[0, 0] + 2.5 * dz)
    y = torch.ones(4)
    kw: dict[str, Any] = {"steps": steps} if name == "apgd" else {"alpha": alpha, "steps": steps}
    if name == "pgd":
        kw["random_start"] = False
    full = get_attack(name)(model, x, y, eps=alpha * steps, **kw)
    early = get_attack(name)(model, x, y, eps=alpha * steps, early_stop=True, **kw)
    with torch.no_grad():
        z_full, z_early = model(full)[:, 0], model(early)[:, 0]
    assert bool((z_early <= 0).all()) and bool((z_full <= z_early + 1e-6).all())
    if name != "apgd":  # APGD's first step (2 eps) already reaches the corner
        torch.testing.assert_close(z_early, torch.full((4,), -0.5 * dz), atol=1e-5, rtol=0)
        assert bool((z_full < -5 * dz).all())
    with pytest.raises(MedAdvInputError, match="early_stop needs the model's logits"):
        get_attack(name)(model, x, y, eps=0.1, early_stop=True, loss_fn=lambda o, t: o[:, 0], **kw)


def test_pgd_margin_loss_is_the_survey_cw_attack() -> None:
    # on a 3-class linear model the margin loss pushes z_y - max_{j != y} z_j down to -kappa and then stops pushing
    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(64, 3))
    x = torch.rand(16, 1, 8, 8) * 0.8 + 0.1
    y = model(x).argmax(1)
    kw = dict(eps=0.2, alpha=0.01, steps=30, random_start=False)
    from medadv_monai.attacks import margin
    with torch.no_grad():
        g0 = margin(model(x), y)
        g_small = margin(model(pgd(model, x, y, loss="margin", kappa=0.05, **kw)), y)
        g_large = margin(model(pgd(model, x, y, loss="margin", kappa=50.0, **kw)), y)
    assert bool((g_large <= g_small + 1e-6).all()) and bool((g_large < g0).all())
    assert bool((g_small >= -0.05 - 0.2).all())  # the small kappa stops near its margin (one step past it at most)
    t = (y + 1) % 3
    with torch.no_grad():
        adv = pgd(model, x, t, loss="margin", kappa=1.0, targeted=True, **kw)
        assert bool((margin(model(adv), t, targeted=True) < margin(model(x), t, targeted=True)).all())
    with pytest.raises(MedAdvInputError, match="loss='margin' or a loss_fn"):
        pgd(model, x, y, loss="margin", loss_fn=lambda o, t: o[:, 0], **kw)
    with pytest.raises(MedAdvInputError, match="pgd loss"):
        pgd(model, x, y, loss="dice", **kw)


def test_runs_under_no_grad_and_inference_mode() -> None:
    model = make_model("linear", 2, 1, 2, (8, 8), seed=8)
    x = torch.rand(4, 1, 8, 8, dtype=torch.float64)
    model = model.double()
    with torch.no_grad():
        out = pgd(model, x, torch.tensor([0, 1, 1, 0]), eps=0.03, alpha=0.01, steps=2)
    assert out.dtype == torch.float64 and not out.requires_grad
    assert not torch.equal(out, x)
    with torch.inference_mode():  # even tensors made under inference_mode can be attacked
        xi, yi = torch.rand(2, 1, 8, 8, dtype=torch.float64), torch.tensor([0, 1])
        out_i = mifgsm(model, xi, yi, eps=0.03, alpha=0.01, steps=2)
    assert not out_i.is_inference() and not torch.equal(out_i, xi)


# ----------------------------------------------------------------------------------------------------------------
# textbook agreement (torchattacks-style updates, written out independently)
# ----------------------------------------------------------------------------------------------------------------
def _tb_loss(outputs: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    if outputs.shape[1] == 1:
        return nn.BCEWithLogitsLoss()(outputs[:, 0], labels.float())
    return nn.CrossEntropyLoss()(outputs, labels)


def _tb_grad(model, adv, labels, targeted):
    adv = adv.clone().detach().requires_grad_(True)
    cost = _tb_loss(model(adv), labels)
    if targeted:
        cost = -cost
    return torch.autograd.grad(cost, adv)[0]


def tb_fgsm(model, images, labels, eps, targeted=False):
    grad = _tb_grad(model, images, labels, targeted)
    return torch.clamp(images + eps * grad.sign(), min=0, max=1).detach()


def tb_pgd(model, images, labels, eps, alpha, steps, delta0, targeted=False):
    adv_images = torch.clamp(images + delta0, min=0, max=1).detach()
    for _ in range(steps):
        grad = _tb_grad(model, adv_images, labels, targeted)
        adv_images = adv_images.detach() + alpha * grad.sign()
        delta = torch.clamp(adv_images - images, min=-eps, max=eps)
        adv_images = torch.clamp(images + delta, min=0, max=1).detach()
    return adv_images


def tb_mifgsm(model, images, labels, eps, alpha, steps, decay, targeted=False):
    momentum = torch.zeros_like(images)
    adv_images = images.clone().detach()
    dims = tuple(range(1, images.ndim))
    for _ in range(steps):
        grad = _tb_grad(model, adv_images, labels, targeted)
        grad = grad / torch.mean(torch.abs(grad), dim=dims, keepdim=True)
        grad = grad + momentum * decay
        momentum = grad
        adv_images = adv_images.detach() + alpha * grad.sign()
        delta = torch.clamp(adv_images - images, min=-eps, max=eps)
        adv_images = torch.clamp(images + delta, min=0, max=1).detach()
    return adv_images


TEXTBOOK_CASES = [
    # (dims, k, dtype, targeted, seed)
    (2, 3, torch.float32, False, 0),
    (2, 1, torch.float32, True, 1),
    (3, 2, torch.float32, False, 2),
    (3, 1, torch.float64, False, 3),
    (2, 4, torch.float64, True, 4),
]


@pytest.mark.parametrize("dims,k,dtype,targeted,seed", TEXTBOOK_CASES)
def test_textbook_agreement(dims, k, dtype, targeted, seed) -> None:
    spatial = (8, 8) if dims == 2 else (4, 6, 6)
    model = make_model("conv", dims, 1, k, spatial, seed, dtype)
    g = torch.Generator().manual_seed(seed)
    x = torch.rand((4, 1, *spatial), generator=g).to(dtype)
    x[x > 0.95] = 1.0
    y = make_labels(k, 4, g)
    eps, alpha, steps = 8 / 255, 2 / 255, 7
    delta0 = ((torch.rand(x.shape, generator=g) * 2 - 1) * eps).to(dtype)

    torch.testing.assert_close(fgsm(model, x, y, eps=eps, targeted=targeted), tb_fgsm(model, x, y, eps, targeted),
                               atol=1e-6, rtol=0)
    torch.testing.assert_close(
        bim(model, x, y, eps=eps, alpha=alpha, steps=steps, targeted=targeted),
        tb_pgd(model, x, y, eps, alpha, steps, torch.zeros_like(x), targeted), atol=1e-6, rtol=0,
    )
    torch.testing.assert_close(
        pgd(model, x, y, eps=eps, alpha=alpha, steps=steps, init_delta=delta0, targeted=targeted),
        tb_pgd(model, x, y, eps, alpha, steps, delta0, targeted), atol=1e-6, rtol=0,
    )
    torch.testing.assert_close(
        pgd(model, x, y, eps=eps, alpha=alpha, steps=steps, random_start=False, targeted=targeted),
        tb_pgd(model, x, y, eps, alpha, steps, torch.zeros_like(x), targeted), atol=1e-6, rtol=0,
    )
    for decay in (1.0, 0.5):
        torch.testing.assert_close(
            mifgsm(model, x, y, eps=eps, alpha=alpha, steps=steps, decay=decay, targeted=targeted),
            tb_mifgsm(model, x, y, eps, alpha, steps, decay, targeted), atol=1e-6, rtol=0,
        )


def test_pgd_generator_reproducible_and_within_box() -> None:
    model = make_model("linear", 2, 1, 2, (8, 8), seed=9)
    x = torch.rand(4, 1, 8, 8)
    y = torch.tensor([0, 1, 0, 1])
    a = pgd(model, x, y, eps=0.03, alpha=0.01, steps=2, generator=torch.Generator().manual_seed(3))
    b = pgd(model, x, y, eps=0.03, alpha=0.01, steps=2, generator=torch.Generator().manual_seed(3))
    assert torch.equal(a, b)
    assert float((a - x).abs().max()) <= 0.03 + 1e-6


def test_custom_loss_fn() -> None:
    model = make_model("linear", 2, 1, 3, (8, 8), seed=10)
    x = torch.full((2, 1, 8, 8), 0.5)
    y = torch.tensor([0, 2])
    calls: list[tuple[int, ...]] = []

    def loss_fn(out: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        calls.append(tuple(out.shape))
        return F.cross_entropy(out, target, reduction="none")

    assert torch.equal(fgsm(model, x, y, eps=0.03, loss_fn=loss_fn), fgsm(model, x, y, eps=0.03))
    assert calls == [(2, 3)]
    with pytest.raises(MedAdvInputError, match=r"per-sample loss of shape \(2,\).*got \(\)"):
        fgsm(model, x, y, eps=0.03, loss_fn=lambda o, t: F.cross_entropy(o, t))


# ----------------------------------------------------------------------------------------------------------------
# clear errors
# ----------------------------------------------------------------------------------------------------------------
def _base() -> tuple[nn.Module, nn.Module, torch.Tensor]:
    return (
        make_model("linear", 2, 1, 2, (8, 8), seed=11),
        make_model("linear", 2, 1, 1, (8, 8), seed=12),
        torch.rand(4, 1, 8, 8) * 0.5 + 0.25,
    )


class _Flat(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.flatten(1).sum(1)


class _Map(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * 2


ERROR_CASES: list[tuple[str, Callable[[], Any], str]] = []


def _err(name: str, pattern: str):
    def deco(fn):
        ERROR_CASES.append((name, fn, pattern))
        return fn

    return deco


@_err("x above 1", r"\[0, 1\].*min 0\.25.*max 1\.5")
def _e1():
    m2, _, x = _base()
    x = x.clone()
    x[0, 0, 0, 0] = 1.5
    x[0, 0, 0, 1] = 0.25
    x[x < 0.25] = 0.25
    return fgsm(m2, x, torch.tensor([0, 1, 0, 1]), eps=0.1)


@_err("x below 0", r"min -0\.25")
def _e2():
    m2, _, x = _base()
    x = x.clone()
    x[1, 0, 3, 3] = -0.25
    return pgd(m2, x, torch.tensor([0, 1, 0, 1]), eps=0.1, alpha=0.01, steps=2)


@_err("x 3D", r"4D.*5D.*got 3D.*\(4, 8, 8\)")
def _e3():
    m2, _, x = _base()
    return fgsm(m2, x[:, 0], torch.tensor([0, 1, 0, 1]), eps=0.1)


@_err("x 6D", r"got 6D")
def _e3b():
    m2, _, x = _base()
    return fgsm(m2, x[..., None, None], torch.tensor([0, 1, 0, 1]), eps=0.1)


@_err("eps negative", r"eps must be in \[0, 1\].*-0\.1")
def _e4():
    m2, _, x = _base()
    return bim(m2, x, torch.tensor([0, 1, 0, 1]), eps=-0.1, alpha=0.01, steps=2)


@_err("eps above 1", r"eps must be in \[0, 1\].*1\.5")
def _e5():
    m2, _, x = _base()
    return fgsm(m2, x, torch.tensor([0, 1, 0, 1]), eps=1.5)


@_err("eps tensor above 1", r"eps must be in \[0, 1\].*2")
def _e5b():
    m2, _, x = _base()
    return fgsm(m2, x, torch.tensor([0, 1, 0, 1]), eps=torch.tensor([0.1, 0.1, 2.0, 0.1]))


@_err("eps tensor wrong shape", r"eps.*\(4,\).*got shape \(3,\)")
def _e5c():
    m2, _, x = _base()
    return fgsm(m2, x, torch.tensor([0, 1, 0, 1]), eps=torch.tensor([0.1, 0.1, 0.1]))


@_err("alpha zero", r"alpha must be .*> 0, got 0")
def _e6():
    m2, _, x = _base()
    return pgd(m2, x, torch.tensor([0, 1, 0, 1]), eps=0.1, alpha=0.0, steps=2)


@_err("alpha negative", r"alpha.*-0\.01")
def _e6b():
    m2, _, x = _base()
    return mifgsm(m2, x, torch.tensor([0, 1, 0, 1]), eps=0.1, alpha=-0.01, steps=2)


@_err("steps zero", r"steps must be an integer >= 1, got 0")
def _e7():
    m2, _, x = _base()
    return bim(m2, x, torch.tensor([0, 1, 0, 1]), eps=0.1, alpha=0.01, steps=0)


@_err("mask shape", r"mask of shape \(4, 1, 7, 7\) does not broadcast to x of shape \(4, 1, 8, 8\)")
def _e8():
    m2, _, x = _base()
    return fgsm(m2, x, torch.tensor([0, 1, 0, 1]), eps=0.1, mask=torch.ones(4, 1, 7, 7))


@_err("mask values", r"mask must have values in \[0, 1\].*max 2")
def _e9():
    m2, _, x = _base()
    return pgd(m2, x, torch.tensor([0, 1, 0, 1]), eps=0.1, alpha=0.01, steps=2, mask=torch.full((4, 1, 8, 8), 2.0))


@_err("label out of range", r"2-class model.*got 3")
def _e10():
    m2, _, x = _base()
    return fgsm(m2, x, torch.tensor([0, 1, 3, 1]), eps=0.1)


@_err("negative label", r"2-class model.*got -1")
def _e10b():
    m2, _, x = _base()
    return fgsm(m2, x, torch.tensor([0, -1, 1, 1]), eps=0.1)


@_err("soft label single logit", r"single-logit.*0 or 1.*0\.5")
def _e11():
    _, m1, x = _base()
    return fgsm(m1, x, torch.tensor([0.0, 0.5, 1.0, 1.0]), eps=0.1)


@_err("label 2 single logit", r"single-logit.*0 or 1.*got 2")
def _e11b():
    _, m1, x = _base()
    return bim(m1, x, torch.tensor([0, 2, 1, 1]), eps=0.1, alpha=0.01, steps=1)


@_err("label shape", r"labels must have shape.*got shape \(4, 2\)")
def _e12():
    m2, _, x = _base()
    return fgsm(m2, x, torch.zeros(4, 2, dtype=torch.long), eps=0.1)


@_err("label batch size", r"labels must have shape.*\(4,\).*got shape \(3,\)")
def _e12b():
    m2, _, x = _base()
    return fgsm(m2, x, torch.zeros(3, dtype=torch.long), eps=0.1)


@_err("output 1D", r"model output must be .*\(N, K\).*got \(4,\)")
def _e13():
    _, _, x = _base()
    return fgsm(_Flat(), x, torch.tensor([0, 1, 0, 1]), eps=0.1)


@_err("output 4D", r"model output must be .*\(N, K\).*got \(4, 1, 8, 8\)")
def _e14():
    _, _, x = _base()
    return pgd(_Map(), x, torch.tensor([0, 1, 0, 1]), eps=0.1, alpha=0.01, steps=2)


@_err("unknown attack", r"unknown attack 'carlini'")
def _e15():
    return get_attack("carlini")


@_err("bad registry kwarg", r"'fgsm' does not take \['steps'\]")
def _e16():
    m2, _, x = _base()
    return run_attack("fgsm", m2, x, torch.tensor([0, 1, 0, 1]), steps=3)


@pytest.mark.parametrize("name,fn,pattern", ERROR_CASES, ids=[c[0] for c in ERROR_CASES])
def test_clear_errors(name: str, fn: Callable[[], Any], pattern: str) -> None:
    with pytest.raises(MedAdvInputError, match=pattern) as info:
        fn()
    assert isinstance(info.value, ValueError)
