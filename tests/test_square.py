"""Square (score-based, L-inf): invariants, known answers on linear models, the mask-position rule, query counts,
agreement with torchattacks' Square in robust accuracy, and clear errors."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from medadv_monai.attacks.margin import margin
from medadv_monai.attacks.square import square, square_p, square_side
from medadv_monai.errors import MedAdvInputError

EPS = 8 / 255


pytestmark = pytest.mark.usefixtures("one_thread")  # tiny tensors: one thread (conftest)


def conv_model(dims: int, c: int, k: int, seed: int, dtype=torch.float32) -> nn.Module:
    torch.manual_seed(seed)
    conv = nn.Conv2d if dims == 2 else nn.Conv3d
    pool = nn.AdaptiveAvgPool2d if dims == 2 else nn.AdaptiveAvgPool3d
    model = nn.Sequential(conv(c, 3, 3, padding=1), nn.Tanh(), pool(2), nn.Flatten(), nn.Linear(3 * 2**dims, k))
    return model.to(dtype)


def linear_model(numel: int, seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Flatten(), nn.Linear(numel, 1))


class Counting(nn.Module):
    """Wraps a model and records the batch size of every call."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model
        self.calls: list[int] = []

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.calls.append(x.shape[0])
        return self.model(x)


def gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


# ----------------------------------------------------------------------------------------------------------------
# the schedule
# ----------------------------------------------------------------------------------------------------------------
def test_schedule_follows_the_reference():
    # p_selection of the reference at 10,000 queries, and rescaled
    assert [square_p(i, 10000) for i in (0, 10, 11, 50, 51, 200, 201, 8000, 8001, 9999)] == pytest.approx(
        [0.8, 0.8, 0.4, 0.4, 0.2, 0.2, 0.1, 0.8 / 256, 0.8 / 512, 0.8 / 512])
    assert square_p(2, 100) == pytest.approx(0.2) and square_p(3, 100) == pytest.approx(0.1)  # 200 and 300 of 10k
    assert square_side(0.8, (16, 16)) == (14, 14)  # round(sqrt(0.8 * 256))
    assert square_side(0.8, (4, 64)) == (4, 14)  # at most the axis' size
    assert square_side(0.8 / 512, (4, 6, 6)) == (1, 1, 1)
    assert square_side(0.8, (4, 6, 6)) == (4, 5, 5)  # a cube: round((0.8 * 144) ** (1/3)) = 5, clipped to 4


# ----------------------------------------------------------------------------------------------------------------
# invariants
# ----------------------------------------------------------------------------------------------------------------
CASES = [
    # (dims, channels, k, targeted, mask kind, per-sample eps, dtype)
    (2, 1, 3, False, "per_sample", False, torch.float32),
    (2, 2, 1, True, "shared", True, torch.float32),
    (3, 1, 1, False, None, False, torch.float64),
    (3, 2, 2, True, "per_channel", True, torch.float32),
    (2, 1, 2, False, None, True, torch.float64),
]


@pytest.mark.parametrize("dims,c,k,targeted,mask_kind,per_eps,dtype", CASES)
def test_invariants(dims, c, k, targeted, mask_kind, per_eps, dtype):
    spatial = (8, 8) if dims == 2 else (4, 6, 6)
    n = 4
    g = gen(dims * 10 + k)
    model = conv_model(dims, c, k, seed=k, dtype=dtype)
    model.train()
    for p in model[-1].parameters():  # a frozen head: flags must stay as they are
        p.requires_grad_(False)
    flags = [p.requires_grad for p in model.parameters()]
    x = torch.rand((n, c, *spatial), generator=g).to(dtype)
    x[x < 0.1] = 0.0  # values on the bounds exercise the clip
    x[x > 0.9] = 1.0
    y = torch.randint(0, max(k, 2), (n,), generator=g)
    eps = torch.tensor([0.3, 0.0, 0.05, 0.1], dtype=dtype) if per_eps else 0.1
    eps_b = eps.view(n, *[1] * (x.ndim - 1)) if per_eps else torch.tensor(eps, dtype=dtype)
    shape = {None: None, "per_sample": (n, 1, *spatial), "shared": (1, 1, *spatial),
             "per_channel": (n, c, *spatial)}[mask_kind]
    mask = None
    if shape is not None:  # soft values with exact zeros
        mask = (torch.rand(shape, generator=g) < 0.5).to(dtype) * torch.rand(shape, generator=g).to(dtype)
    x0, y0, m0 = x.clone(), y.clone(), None if mask is None else mask.clone()

    out = square(model, x, y, eps=eps, queries=40, targeted=targeted, mask=mask, generator=gen(7))

    m_full = torch.ones_like(x) if mask is None else mask.expand_as(x)
    assert out.shape == x.shape and out.dtype == x.dtype and out.device == x.device and not out.requires_grad
    assert bool(((out - x).abs() <= eps_b * m_full + 1e-6).all())
    assert bool((out >= 0).all()) and bool((out <= 1).all())
    assert torch.equal(out[m_full == 0], x[m_full == 0])  # bit for bit where m == 0
    if per_eps:
        assert torch.equal(out[1], x[1])  # eps 0
    assert torch.equal(x, x0) and torch.equal(y, y0) and (mask is None or torch.equal(mask, m0))
    assert all(p.grad is None for p in model.parameters())
    assert [p.requires_grad for p in model.parameters()] == flags and model.training
    # reproducible with the same seed
    again = square(model, x, y, eps=eps, queries=40, targeted=targeted, mask=mask, generator=gen(7))
    assert torch.equal(again, out)
    # batch independence: each sample attacked alone (same seed) gives the same result
    model.eval()  # (the tiny model has no batch statistics; eval only to be sure)
    out = square(model, x, y, eps=eps, queries=40, targeted=targeted, mask=mask, generator=gen(7))
    for i in range(n):
        mi = None if mask is None else mask if mask.shape[0] == 1 else mask[i : i + 1]
        ei = eps[i : i + 1] if per_eps else eps
        oi = square(model, x[i : i + 1], y[i : i + 1], eps=ei, queries=40, targeted=targeted, mask=mi, generator=gen(7))
        torch.testing.assert_close(oi[0], out[i], atol=1e-6, rtol=0)


def test_eps_zero_returns_x_exactly_and_the_large_budget_is_used():
    model = conv_model(2, 1, 2, seed=1)
    x = torch.rand(4, 1, 8, 8, generator=gen(1))
    y = torch.tensor([0, 1, 1, 0])
    assert torch.equal(square(model, x, y, eps=0.0, queries=20, generator=gen()), x)
    eps = torch.tensor([0.0, 0.01, 0.2, 0.05])
    out = square(model, x, y, eps=eps, queries=20, generator=gen())
    assert torch.equal(out[0], x[0])
    for i in range(4):
        assert float((out[i] - x[i]).abs().max()) <= float(eps[i]) + 1e-6


def test_runs_under_no_grad_and_inference_mode():
    model = conv_model(2, 1, 2, seed=2).double()
    x, y = torch.rand(3, 1, 8, 8, dtype=torch.float64, generator=gen(2)), torch.tensor([0, 1, 0])
    ref = square(model, x, y, eps=0.05, queries=10, generator=gen())
    with torch.no_grad():
        assert torch.equal(square(model, x, y, eps=0.05, queries=10, generator=gen()), ref)
    with torch.inference_mode():
        out = square(model, x.clone(), y.clone(), eps=0.05, queries=10, generator=gen())
    assert not out.is_inference() and torch.equal(out, ref) and not torch.equal(ref, x)


# ----------------------------------------------------------------------------------------------------------------
# the published algorithm: fooled samples are done, the query budget, loss_fn mode
# ----------------------------------------------------------------------------------------------------------------
def test_fooled_samples_are_left_alone_and_stay_fooled():
    torch.manual_seed(3)
    model = Counting(nn.Sequential(nn.Flatten(), nn.Linear(64, 3)))
    x = torch.rand(16, 1, 8, 8, generator=gen(3))
    with torch.no_grad():
        pred = model.model(x).argmax(1)
    y = pred.clone()
    y[:4] = (pred[:4] + 1) % 3  # fooled from the start
    out = square(model, x, y, eps=0.2, queries=50, generator=gen())
    assert torch.equal(out[:4], x[:4])  # returned unchanged, as the reference does
    with torch.no_grad():
        m = margin(model.model(out), y)
    assert bool((m[:4] < 0).all())
    fooled_now = m[4:] < 0
    assert fooled_now.any() and not fooled_now.all()  # eps 0.2 fools some
    # the clean check, then at most 50 queries of the 12 samples not fooled from the start
    assert model.calls[0] == 16 and max(model.calls[1:]) <= 12 and len(model.calls) <= 1 + 50
    assert sum(model.calls[1:]) < 12 * 50  # fooled samples are no longer queried


def test_targeted_reaches_the_target():
    model = conv_model(2, 1, 4, seed=4)
    x = torch.rand(8, 1, 8, 8, generator=gen(4))
    target = torch.tensor([0, 1, 2, 3, 0, 1, 2, 3])
    out = square(model, x, target, eps=0.5, queries=200, targeted=True, generator=gen())
    with torch.no_grad():
        before, after = margin(model(x), target, True), margin(model(out), target, True)
    assert bool((after <= before).all()) and bool((after < 0).float().mean() > 0.5)


def test_loss_fn_runs_the_whole_budget_and_maximises_the_loss():
    model = Counting(conv_model(2, 1, 3, seed=5))
    x = torch.rand(5, 1, 8, 8, generator=gen(5))
    y = torch.tensor([0, 1, 2, 0, 1])

    def ce(out: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        return F.cross_entropy(out, t, reduction="none")

    up = square(model, x, y, eps=0.1, queries=30, loss_fn=ce, generator=gen())
    assert model.calls == [5] * 30  # the stripes and 29 searches, whole batch, no clean check, no early stop
    model.calls.clear()
    down = square(model, x, y, eps=0.1, queries=30, loss_fn=ce, targeted=True, generator=gen())
    assert model.calls == [5] * 30
    # the stripes (query 1) are the same for both directions: the search moves away from them both ways
    model.calls.clear()
    stripes = square(model, x, y, eps=0.1, queries=1, loss_fn=ce, generator=gen())
    with torch.no_grad():
        l_up, l_down, l_0 = (ce(model.model(t), y) for t in (up, down, stripes))
    assert bool((l_up >= l_0).all()) and bool((l_down <= l_0).all()) and bool((l_up > l_down).all())
    with pytest.raises(MedAdvInputError, match=r"per-sample loss of shape \(5,\)"):
        square(model, x, y, eps=0.1, queries=3, loss_fn=lambda o, t: F.cross_entropy(o, t))


# ----------------------------------------------------------------------------------------------------------------
# known answers on a linear single-logit model z = w.x + b
# ----------------------------------------------------------------------------------------------------------------
def test_linear_single_logit_known_answer():
    model = linear_model(64)
    w = model[1].weight.detach()
    x = 0.5 + 0.2 * (torch.rand(4, 1, 8, 8, generator=gen(6)) - 0.5)  # eps < 0.3: no [0, 1] clipping
    with torch.no_grad():
        z = model(x)[:, 0]
    y = (z > 0).float()  # correctly classified, margin |z|
    l1 = w.abs().sum()
    # the lowest margin in the box is |z| - eps ||w||_1: reachable iff eps ||w||_1 > |z|
    for factor in (2.0, 1.2):
        eps = factor * z.abs() / l1
        out = square(model, x, y, eps=eps, queries=1000, generator=gen())
        with torch.no_grad():
            assert bool((margin(model(out), y) < 0).all()), factor
    eps = 0.5 * z.abs() / l1
    out = square(model, x, y, eps=eps, queries=1000, generator=gen())
    with torch.no_grad():
        m = margin(model(out), y)
    assert bool((m > 0).all())  # no L-inf perturbation can succeed ...
    torch.testing.assert_close(m, z.abs() - eps * l1, atol=1e-5, rtol=0)  # ... and Square finds the best corner


# ----------------------------------------------------------------------------------------------------------------
# squares inside the mask
# ----------------------------------------------------------------------------------------------------------------
def test_only_the_mask_patch_changes():
    model = conv_model(2, 1, 2, seed=8)
    x = torch.rand(4, 1, 16, 16, generator=gen(8)) * 0.8 + 0.1
    y = torch.tensor([0, 1, 0, 1])
    mask = torch.zeros(4, 1, 16, 16)
    mask[:, :, 5:8, 9:12] = 1.0
    mask[3] = 0.0  # an empty mask: returned unchanged, never queried
    counting = Counting(model)
    out = square(counting, x, y, eps=0.1, queries=60, mask=mask, generator=gen())
    changed = out != x
    assert not changed[mask == 0].any() and changed[:3].any()
    assert torch.equal(out[3], x[3]) and max(counting.calls[1:]) <= 3


def test_windows_are_drawn_where_the_mask_is():
    # one editable voxel in a 16x16 image; a loss that never improves keeps the stripes as the current point, so
    # each query differs from the stripes exactly when its window covers the voxel and its sign differs there. With
    # positions drawn among the windows overlapping the mask, every window covers it: about half the queries change
    # it. Positions drawn over the whole image would mostly miss it once the windows shrink (side 1 after 80 queries).
    inputs: list[torch.Tensor] = []

    def model(t: torch.Tensor) -> torch.Tensor:
        inputs.append(t.clone())
        return torch.zeros(t.shape[0], 2)

    x = torch.full((2, 1, 16, 16), 0.5)
    mask = torch.zeros(1, 1, 16, 16)
    mask[..., 13, 2] = 1.0
    square(model, x, torch.tensor([0, 1]), eps=0.1, queries=400, mask=mask, generator=gen(),
           loss_fn=lambda o, t: torch.zeros(o.shape[0]))
    stripes, queries = inputs[0], torch.stack(inputs[1:])
    assert torch.equal(queries[..., mask[0, 0] == 0], stripes[None][..., mask[0, 0] == 0].expand_as(
        queries[..., mask[0, 0] == 0]))
    flipped = (queries[:, :, 0, 13, 2] != stripes[:, 0, 13, 2]).float().mean()
    assert 0.35 < float(flipped) < 0.65


# ----------------------------------------------------------------------------------------------------------------
# agreement with torchattacks' Square
# ----------------------------------------------------------------------------------------------------------------
def test_robust_accuracy_matches_torchattacks_square():
    import torchattacks

    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.ReLU(), nn.AvgPool2d(4), nn.Flatten(),
                          nn.Linear(4 * 16, 2)).eval()
    x = torch.rand(64, 1, 16, 16, generator=gen(1))
    with torch.no_grad():
        y = model(x).argmax(1)
    ours = square(model, x, y, eps=EPS, queries=300, generator=gen())
    with torch.random.fork_rng():  # torchattacks seeds the global generator
        ref = torchattacks.Square(model, norm="Linf", eps=EPS, n_queries=300, n_restarts=1, p_init=0.8,
                                  loss="margin", resc_schedule=True, seed=0, verbose=False)(x, y)
    with torch.no_grad():
        acc_ours = (model(ours).argmax(1) == y).float().mean().item()
        acc_ref = (model(ref).argmax(1) == y).float().mean().item()
    assert 0.2 < acc_ref < 0.8, acc_ref  # a comparison that means something
    assert abs(acc_ours - acc_ref) <= 0.05, (acc_ours, acc_ref)
    assert float((ours - x).abs().max()) <= EPS + 1e-6


# ----------------------------------------------------------------------------------------------------------------
# clear errors
# ----------------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("kw,match", [
    (dict(queries=0), r"queries must be an integer >= 1, got 0"),
    (dict(queries=2.5), r"queries must be an integer >= 1, got 2.5"),
    (dict(queries=True), r"queries must be an integer >= 1"),
    (dict(p_init=0.0), r"p_init must be a number in \(0, 1\].*got 0"),
    (dict(p_init=1.5), r"p_init must be a number in \(0, 1\].*got 1.5"),
    (dict(p_init=math.nan), r"p_init must be a number in \(0, 1\]"),
    (dict(p_init="0.8"), r"p_init must be a number in \(0, 1\].*got '0.8'"),
    (dict(generator=42), r"generator must be a torch.Generator or None, got int"),
    (dict(eps=2.0), r"eps must be in \[0, 1\]"),
])
def test_clear_errors(kw, match):
    model = conv_model(2, 1, 2, seed=9)
    x, y = torch.rand(2, 1, 8, 8), torch.tensor([0, 1])
    args = dict(eps=EPS, queries=5) | kw
    with pytest.raises(MedAdvInputError, match=match):
        square(model, x, y, **args)


def test_bad_labels_and_outputs_are_named():
    x = torch.rand(2, 1, 8, 8)
    with pytest.raises(MedAdvInputError, match=r"labels for a 3-class model"):
        square(conv_model(2, 1, 3, seed=9), x, torch.tensor([0, 5]), eps=EPS, queries=5)
    with pytest.raises(MedAdvInputError, match=r"model output must be a tensor of shape \(N, K\)"):
        square(lambda t: t.flatten(1)[:, 0], x, torch.tensor([0, 1]), eps=EPS, queries=5)
