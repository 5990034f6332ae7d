"""Adversarial-training losses (PGD-AT, TRADES, MART): known values, the reference code's gradients, the inner
attack's budget / modes / batch-norm statistics / gradients, a few training steps, and the errors."""

from __future__ import annotations

import copy
import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from medadv_monai.errors import MedAdvInputError
from medadv_monai.losses.robust import (
    AT_METHODS,
    AdversarialTrainingLoss,
    eval_mode,
    mart_loss,
    mart_wrong_class,
    pgd_at_loss,
    trades_kl,
    trades_loss,
    training_alpha,
)

pytestmark = pytest.mark.usefixtures("one_thread")  # tiny tensors: one thread (conftest)

# Fixed logits, K = 3: row 0's most likely adversarial class is not y (y' = it), row 1's is y (y' = the runner-up).
CLEAN = [[2.0, 0.5, -1.0], [0.1, 0.2, 0.3], [-1.0, 3.0, 0.0]]
ADV = [[1.0, 1.5, -0.5], [0.5, -0.2, 0.9], [0.0, 0.5, 2.0]]
Y = [0, 2, 1]
# Single logit z: the two-class model (0, z).
Z_CLEAN, Z_ADV, Y1 = [0.7, -1.2, 2.0], [-0.3, 0.4, 1.0], [1, 0, 1]


def _softmax(row):
    e = [math.exp(v) for v in row]
    return [v / sum(e) for v in e]


def _rows(logits):
    """Rows of class logits; a single logit z as (0, z)."""
    return [[0.0, r[0]] if len(r) == 1 else r for r in logits]


def _direct(clean, adv, y, beta, guards=True):
    """PGD-AT, TRADES and MART from their formulas, one sample at a time in plain Python."""
    at = tr = ma = 0.0
    for c, a, t in zip(_rows(clean), _rows(adv), y):
        pc, pa = _softmax(c), _softmax(a)
        kl = sum(p * math.log(p / q) for p, q in zip(pc, pa))
        wrong = max((k for k in range(len(pa)) if k != t), key=lambda k: pa[k])
        at += -math.log(pa[t])
        tr += -math.log(pc[t]) + beta * kl
        if guards:  # the reference's numerical guards
            kl_g = sum(p * (math.log(p) - math.log(q + 1e-12)) for p, q in zip(pc, pa))
            ma += -math.log(pa[t]) - math.log(1.0001 - pa[wrong] + 1e-12) + beta * kl_g * (1.0000001 - pc[t])
        else:
            ma += -math.log(pa[t]) - math.log(1 - pa[wrong]) + beta * kl * (1 - pc[t])
    n = len(y)
    return at / n, tr / n, ma / n


def _t(v):
    return torch.tensor(v, dtype=torch.float64)


def _single(v):
    return _t(v)[:, None]


# ------------------------------------------------------------------------------------------------ the formulas
@pytest.mark.parametrize("case", ["k3", "single", "single_n1_labels"])
def test_known_values(case):
    if case == "k3":
        clean, adv, y, raw = _t(CLEAN), _t(ADV), torch.tensor(Y), (CLEAN, ADV, Y)
    else:
        clean, adv, raw = _single(Z_CLEAN), _single(Z_ADV), ([[v] for v in Z_CLEAN], [[v] for v in Z_ADV], Y1)
        y = torch.tensor(Y1) if case == "single" else torch.tensor(Y1, dtype=torch.float32)[:, None]
    at, tr, ma = _direct(*raw, beta=6.0)
    assert pgd_at_loss(adv, y).item() == pytest.approx(at, rel=1e-6)
    assert trades_loss(clean, adv, y, 6.0).item() == pytest.approx(tr, rel=1e-6)
    assert mart_loss(clean, adv, y, 6.0).item() == pytest.approx(ma, rel=1e-6)
    assert mart_loss(clean, adv, y, 6.0).item() == pytest.approx(_direct(*raw, beta=6.0, guards=False)[2], abs=1e-3)
    assert trades_loss(clean, adv, y, 0.0).item() == pytest.approx(_direct(*raw, beta=0.0)[1], rel=1e-6)


def test_single_logit_is_two_class_with_zero_logit():
    z, za, y = _single(Z_CLEAN), _single(Z_ADV), torch.tensor(Y1)
    two, two_a = torch.cat([torch.zeros_like(z), z], 1), torch.cat([torch.zeros_like(za), za], 1)
    assert torch.allclose(pgd_at_loss(za, y), F.binary_cross_entropy_with_logits(za[:, 0].float(), y.float()))
    for fn in (trades_loss, mart_loss):
        assert torch.allclose(fn(z, za, y, 6.0), fn(two, two_a, y, 6.0))
    assert torch.equal(mart_wrong_class(za, y), 1 - y)


def test_trades_with_x_adv_equal_x_is_ce():
    clean, y = _t(CLEAN), torch.tensor(Y)
    assert torch.allclose(trades_loss(clean, clean, y, 6.0), F.cross_entropy(clean.float(), y))
    assert torch.allclose(trades_kl(clean, clean), torch.zeros(3), atol=1e-7)


def test_trades_kl_per_sample():
    pc, pa = F.softmax(_t(CLEAN), 1), F.softmax(_t(ADV), 1)
    assert torch.allclose(trades_kl(_t(ADV), _t(CLEAN)).double(), (pc * (pc / pa).log()).sum(1), atol=1e-6)


def test_mart_wrong_class_is_most_likely_wrong_class():
    adv, y = _t(ADV), torch.tensor(Y)
    assert mart_wrong_class(adv, y).tolist() == [1, 0, 2]  # row 1: argmax is y = 2, so its runner-up 0
    assert mart_wrong_class(adv, torch.tensor([1, 0, 2])).tolist() == [0, 2, 1]
    negative = torch.tensor([[-1.0, -2.0, 3.0], [-5.0, 4.0, -0.5]])  # the wrong classes' logits are all < 0
    assert mart_wrong_class(negative, torch.tensor([2, 1])).tolist() == [0, 2]


def test_gradients_match_the_reference_code():
    """Nothing is detached, as in trades.py and mart.py: gradients w.r.t. both logits equal those of the reference
    code (ported line by line, ``argsort`` included)."""
    y = torch.tensor(Y)

    def ref_trades(lc, la):
        kl = nn.KLDivLoss(reduction="sum")(F.log_softmax(la, dim=1), F.softmax(lc, dim=1)) / len(y)
        return F.cross_entropy(lc, y) + 6.0 * kl

    def ref_mart(lc, la):
        adv_probs = F.softmax(la, dim=1)
        tmp1 = torch.argsort(adv_probs, dim=1)[:, -2:]
        new_y = torch.where(tmp1[:, -1] == y, tmp1[:, -2], tmp1[:, -1])
        loss_adv = F.cross_entropy(la, y) + F.nll_loss(torch.log(1.0001 - adv_probs + 1e-12), new_y)
        nat_probs = F.softmax(lc, dim=1)
        true_probs = torch.gather(nat_probs, 1, (y.unsqueeze(1)).long()).squeeze()
        kl = nn.KLDivLoss(reduction="none")(torch.log(adv_probs + 1e-12), nat_probs)
        return loss_adv + 6.0 * (1.0 / len(y)) * torch.sum(torch.sum(kl, dim=1) * (1.0000001 - true_probs))

    for ours, ref in ((trades_loss, ref_trades), (mart_loss, ref_mart)):
        grads = []
        for fn in (lambda a, b: ours(a, b, y, 6.0), ref):
            lc, la = torch.tensor(CLEAN, requires_grad=True), torch.tensor(ADV, requires_grad=True)
            value = fn(lc, la)
            value.backward()
            grads.append((value.detach(), lc.grad, la.grad))
        for a, b in zip(*grads):
            torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)
        assert grads[0][1].abs().sum() > 0  # the clean logits get a gradient (KL target, MART's weight)


# ------------------------------------------------------------------------------------- the callable on models
class Recorder(nn.Module):
    """Identity that records the mode of every forward."""

    def __init__(self) -> None:
        super().__init__()
        self.seen: list[bool] = []

    def forward(self, x):
        self.seen.append(self.training)
        return x


def _model(k=2, seed=0, dropout=0.0):
    torch.manual_seed(seed)
    return nn.Sequential(Recorder(), nn.Conv2d(1, 3, 3, padding=1), nn.BatchNorm2d(3), nn.ReLU(), nn.Flatten(),
                         nn.Dropout(dropout), nn.Linear(3 * 6 * 6, k)).train()


def _batch(n=8, seed=1):
    g = torch.Generator().manual_seed(seed)
    x = torch.rand(n, 1, 6, 6, generator=g)
    x[:, :, 0] = 0.0  # on the box's edges
    x[:, :, -1] = 1.0
    return x, torch.arange(n) % 2


def _gen(seed=0):
    return torch.Generator().manual_seed(seed)


@pytest.mark.parametrize("method", AT_METHODS)
def test_inner_attack_respects_the_budget(method):
    model, (x, y) = _model(), _batch()
    eps = 4 / 255
    for fn in (AdversarialTrainingLoss(method, eps, steps=3, generator=_gen()).attack,
               lambda *a: AdversarialTrainingLoss(method, eps, steps=3, generator=_gen())(*a)[1]):
        x_adv = fn(model, x, y)
        assert x_adv.shape == x.shape and not x_adv.requires_grad
        assert (x_adv - x).abs().max() <= eps + 1e-6
        assert x_adv.min() >= 0 and x_adv.max() <= 1
        assert (x_adv != x).any()


@pytest.mark.parametrize("method", AT_METHODS)
def test_modes_batch_norm_statistics_and_grads(method):
    model, (x, y) = _model(), _batch()
    model[6].eval()  # a submodule kept in eval mode on purpose must stay so
    loss_fn = AdversarialTrainingLoss(method, 8 / 255, steps=3, generator=_gen())
    before = copy.deepcopy(model.state_dict())

    x_adv = loss_fn.attack(model, x, y)  # the inner attack alone changes nothing
    for key, value in model.state_dict().items():
        assert torch.equal(value, before[key]), key
    assert all(p.grad is None for p in model.parameters())
    assert model.training and not model[6].training and model[2].training
    assert model[0].seen and not any(model[0].seen)  # eval mode throughout

    model[0].seen.clear()
    twin = copy.deepcopy(model)
    loss, x_adv = loss_fn(model, x, y)
    outer = 1 if method == "pgd_at" else 2
    seen = model[0].seen
    assert seen == [False] * (len(seen) - outer) + [True] * outer and len(seen) - outer >= 3
    assert model.training and not model[6].training and model[2].training
    # the running statistics are those of the outer training-mode forwards only
    for batch in ([x_adv] if method == "pgd_at" else [x, x_adv]):
        twin(batch)
    for key, value in twin.state_dict().items():
        torch.testing.assert_close(model.state_dict()[key], value, msg=key)
    assert int(model[2].num_batches_tracked) == outer
    # no .grad from the inner loop; the returned loss reaches every parameter
    assert all(p.grad is None for p in model.parameters())
    loss.backward()
    grads = [p.grad for p in model.parameters()]
    assert all(g is not None and torch.isfinite(g).all() for g in grads)
    assert sum(float(g.abs().sum()) for g in grads) > 0


def test_eval_mode_restores_on_error():
    model = _model()
    model[2].eval()
    with pytest.raises(RuntimeError), eval_mode(model):
        assert not model.training
        raise RuntimeError("boom")
    assert model.training and not model[2].training


@pytest.mark.parametrize("method", ["pgd_at", "trades"])
def test_eps_zero_is_plain_ce(method):
    model, (x, y) = _model(dropout=0.5), _batch()
    twin = copy.deepcopy(model)
    torch.manual_seed(5)  # same dropout mask: one training-mode forward of x on each side
    expected = F.cross_entropy(twin(x), y)
    torch.manual_seed(5)
    loss, x_adv = AdversarialTrainingLoss(method, 0.0)(model, x, y)
    assert torch.equal(x_adv, x)
    torch.testing.assert_close(loss, expected)


def test_mart_eps_zero_has_no_kl():
    model, (x, y) = _model(), _batch()
    logits = copy.deepcopy(model)(x)
    loss, _ = AdversarialTrainingLoss("mart", 0.0, beta=100.0)(model, x, y)
    torch.testing.assert_close(loss, mart_loss(logits, logits, y, 0.0))


def test_trades_start_and_objective():
    model, (x, y) = _model(), _batch()
    runs = [AdversarialTrainingLoss("trades", 8 / 255, steps=3, generator=_gen(7)).attack(model, x, y)
            for _ in range(2)]
    assert torch.equal(runs[0], runs[1])  # the Gaussian start is drawn from the generator
    other = AdversarialTrainingLoss("trades", 8 / 255, steps=3, generator=_gen(8)).attack(model, x, y)
    assert not torch.equal(runs[0], other)
    with torch.no_grad(), eval_mode(model):
        assert trades_kl(model(runs[0]), model(x)).sum() > 1e-4  # the KL grew from ~0 at x + 0.001 N(0, 1)


def test_pgd_at_and_mart_ascend_ce_single_logit():
    model, (x, y) = _model(k=1), _batch()
    for method in ("pgd_at", "mart"):
        x_adv = AdversarialTrainingLoss(method, 8 / 255, steps=5, generator=_gen()).attack(model, x, y[:, None])
        with torch.no_grad(), eval_mode(model):
            assert pgd_at_loss(model(x_adv), y) > pgd_at_loss(model(x), y)


def test_eps_warm_up_and_step_size():
    loss_fn = AdversarialTrainingLoss("pgd_at", 1 / 255)
    for e, a in ((1, 0.5), (2, 0.5), (4, 1.0), (8, 2.0)):  # the survey's training budgets and steps
        loss_fn.eps = e / 255
        assert loss_fn.step_size == pytest.approx(a / 255) == pytest.approx(training_alpha(e / 255))
    model, (x, y) = _model(), _batch()
    loss_fn.eps = 2 / 255
    assert (loss_fn.attack(model, x, y) - x).abs().max() <= 2 / 255 + 1e-6
    with pytest.raises(MedAdvInputError, match="eps must be a number in"):
        loss_fn.eps = 1.5
    assert loss_fn.eps == 2 / 255
    loss_fn.alpha = 0.01
    assert loss_fn.step_size == 0.01
    assert "pgd_at" in repr(loss_fn)


@pytest.mark.parametrize("k", [1, 2])
@pytest.mark.parametrize("method", AT_METHODS)
def test_training_lowers_the_adversarial_loss(method, k):
    g = torch.Generator().manual_seed(0)
    y = torch.arange(32) % 2
    x = (0.3 + 0.4 * y.float()[:, None, None, None] + 0.05 * torch.randn(32, 1, 4, 4, generator=g)).clamp(0, 1)
    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(16, 8), nn.BatchNorm1d(8), nn.ReLU(), nn.Linear(8, k))
    opt = torch.optim.Adam(model.parameters(), lr=0.05)
    loss_fn = AdversarialTrainingLoss(method, 8 / 255, steps=3, generator=_gen())
    losses = []
    for _ in range(30):
        opt.zero_grad()
        loss, _ = loss_fn(model, x, y)
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert sum(losses[-5:]) < 0.5 * sum(losses[:5]), losses


# -------------------------------------------------------------------------------------------------- errors
@pytest.mark.parametrize("kwargs, match", [
    (dict(method="fgsm_at", eps=0.1), "adversarial training method: expected one of"),
    (dict(method="trades", eps=-0.1), "eps must be a number in \\[0, 1\\]"),
    (dict(method="trades", eps=2.0), "eps must be a number in \\[0, 1\\]"),
    (dict(method="trades", eps="8/255"), "eps must be a number in \\[0, 1\\]"),
    (dict(method="mart", eps=0.1, alpha=0.0), "alpha must be a finite number > 0"),
    (dict(method="mart", eps=0.1, alpha=-1.0), "alpha must be a finite number > 0"),
    (dict(method="mart", eps=0.1, steps=0), "steps must be an integer >= 1"),
    (dict(method="mart", eps=0.1, steps=2.5), "steps must be an integer >= 1"),
    (dict(method="mart", eps=0.1, beta=-1.0), "beta must be a finite number >= 0"),
    (dict(method="mart", eps=0.1, generator=0), "generator must be a torch.Generator"),
])
def test_bad_settings(kwargs, match):
    with pytest.raises(MedAdvInputError, match=match):
        AdversarialTrainingLoss(**kwargs)


@pytest.mark.parametrize("method", AT_METHODS)
def test_bad_call_arguments(method):
    loss_fn = AdversarialTrainingLoss(method, 4 / 255, steps=1)
    model, (x, y) = _model(k=1), _batch()
    with pytest.raises(MedAdvInputError, match="model must be a torch.nn.Module"):
        loss_fn(lambda t: t, x, y)
    with pytest.raises(MedAdvInputError, match="x must have values in \\[0, 1\\]"):
        loss_fn(model, x * 2, y)
    with pytest.raises(MedAdvInputError, match="labels"):
        loss_fn(model, x, y + 1)  # 2 is no class of a single-logit model
    assert model.training  # restored after the failed inner attack


def test_bad_logits_and_labels():
    with pytest.raises(MedAdvInputError, match="logits_adv must be \\(N, 1\\)"):
        pgd_at_loss(torch.zeros(3), torch.zeros(3))
    with pytest.raises(MedAdvInputError, match="same shape"):
        trades_loss(torch.zeros(3, 2), torch.zeros(3, 3), torch.zeros(3), 6.0)
    with pytest.raises(MedAdvInputError, match="labels must be class ids in \\[0, 2\\]"):
        mart_loss(_t(CLEAN), _t(ADV), torch.tensor([0, 1, 3]), 6.0)
    with pytest.raises(MedAdvInputError, match="one value per sample"):
        trades_loss(_t(CLEAN), _t(ADV), torch.tensor([0, 1]), 6.0)
    with pytest.raises(MedAdvInputError, match="beta must be a finite number >= 0"):
        trades_loss(_t(CLEAN), _t(ADV), torch.tensor(Y), -1.0)
