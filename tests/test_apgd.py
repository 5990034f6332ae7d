"""APGD: budget, range and mask invariants, known answers on linear models, the DLR loss and its class limits."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from medadv_monai.attacks.apgd import apgd, apgd_checkpoints, dlr_loss
from medadv_monai.errors import MedAdvInputError

EPS = 8 / 255


class Linear(torch.nn.Module):
    def __init__(self, k: int, seed: int = 0) -> None:
        super().__init__()
        g = torch.Generator().manual_seed(seed)
        self.w = torch.nn.Parameter(torch.randn(k, 1 * 8 * 8, generator=g))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.flatten(1) @ self.w.t()


def _x(n: int = 6) -> torch.Tensor:
    return torch.rand(n, 1, 8, 8, generator=torch.Generator().manual_seed(1)) * 0.8 + 0.1


def test_checkpoints_follow_the_published_schedule():
    assert apgd_checkpoints(100) == [22, 41, 57, 70, 80, 87, 93, 99]


def test_budget_range_and_mask_hold_and_the_model_is_untouched():
    model = Linear(3)
    x, y = _x(), torch.tensor([0, 1, 2, 0, 1, 2])
    mask = torch.zeros(1, 1, 8, 8)
    mask[..., 2:5, 2:5] = 1
    for loss in ("ce", "dlr"):
        adv = apgd(model, x, y, eps=EPS, steps=12, loss=loss, mask=mask)
        assert ((adv - x).abs() <= EPS * mask + 1e-6).all() and adv.min() >= 0 and adv.max() <= 1
        assert torch.equal(adv[..., mask[0, 0] == 0], x[..., mask[0, 0] == 0])  # bit for bit outside the mask
    assert model.w.grad is None and model.training


def test_linear_single_logit_reaches_the_analytic_optimum():
    # for z = w.x the loss-maximising point in the box is x - eps sign(w) (label 1) / x + eps sign(w) (label 0)
    model = Linear(1)
    x, y = _x(4), torch.tensor([1, 0, 1, 0])
    adv = apgd(model, x, y, eps=EPS, steps=10)
    s = torch.sign(model.w.detach()).reshape(1, 1, 8, 8)
    expected = (x + EPS * s * (1 - 2 * y.view(-1, 1, 1, 1))).clamp(0, 1)
    assert torch.allclose(adv, expected, atol=1e-6)


def test_apgd_is_at_least_as_strong_as_its_first_step_and_fools_a_linear_3_class_model():
    model = Linear(3, seed=2)
    x = _x()
    y = model(x).argmax(1)
    adv = apgd(model, x, y, eps=0.3, steps=20)
    ce = F.cross_entropy(model(adv), y, reduction="none")
    assert (ce >= F.cross_entropy(model(x), y, reduction="none") - 1e-6).all()
    assert (model(adv).argmax(1) != y).float().mean() > 0.5


def test_dlr_known_value_and_class_limits():
    logits = torch.tensor([[3.0, 1.0, 0.0, -1.0]])
    assert dlr_loss(logits, torch.tensor([0])).item() == pytest.approx(-(3 - 1) / (3 - 0))
    assert dlr_loss(logits, torch.tensor([0]), torch.tensor([1])).item() == pytest.approx(-(3 - 1) / (3 + 0.5))
    with pytest.raises(MedAdvInputError, match="at least 3 classes"):
        apgd(Linear(1), _x(2), torch.tensor([0, 1]), eps=EPS, steps=2, loss="dlr")
    with pytest.raises(MedAdvInputError, match="at least 4 classes"):
        apgd(Linear(3), _x(2), torch.tensor([0, 1]), eps=EPS, steps=2, loss="dlr", targeted=True,
             targets=torch.tensor([1, 2]))


def test_apgd_through_the_registry_and_the_inferer():
    from medadv_monai.attacks import AdversarialInferer, display_name, run_attack

    model = Linear(1)
    x, y = _x(4), torch.tensor([1, 0, 1, 0])
    assert display_name("apgd") == "APGD"
    adv = run_attack("apgd", model, x, y, eps=EPS, steps=5)
    assert ((adv - x).abs() <= EPS + 1e-6).all()
    inferer = AdversarialInferer("apgd", eps=EPS, steps=5)
    torch.testing.assert_close(inferer.perturb(x, model, labels=y), adv)
    targeted = AdversarialInferer("apgd", targeted=True, eps=EPS, steps=5).perturb(x, model, targets=1 - y)
    assert ((targeted - x).abs() <= EPS + 1e-6).all()


class Recording(torch.nn.Module):
    """A small nonlinear 2-class model that records every input it is called with."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(3)
        self.net = torch.nn.Sequential(torch.nn.Conv2d(1, 4, 3, padding=1), torch.nn.Tanh(), torch.nn.Flatten(),
                                       torch.nn.Linear(4 * 8 * 8, 2))
        self.seen: list[torch.Tensor] = []

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.seen.append(x.detach().clone())
        return self.net(x)


def test_early_stop_freezes_each_sample_at_its_first_fooling_iterate():
    model = Recording()
    x = torch.rand(32, 1, 8, 8, generator=torch.Generator().manual_seed(4))
    with torch.no_grad():
        model.net[0].weight.mul_(20.0)  # a sharp nonlinearity: some samples need more than APGD's first step
        model.net[-1].bias.sub_(model.net(x).median(dim=0).values)  # centre the logit gap: small margins
        y = model.net(x).argmax(1)
    frozen_late = 0
    for early in (True, False):
        model.seen.clear()
        adv = apgd(model, x, y, eps=0.05, steps=20, early_stop=early)
        with torch.no_grad():
            fooled = torch.stack([model.net(s).argmax(1) != y for s in model.seen])  # (calls, N)
        moved_after = 0
        for i in torch.nonzero(fooled.any(0)).reshape(-1).tolist():
            first = int(fooled[:, i].nonzero()[0, 0])
            later = torch.stack([s[i] for s in model.seen[first:]])
            if early:
                assert (later == model.seen[first][i]).all(), i  # frozen from its first fooling iterate on
                assert torch.equal(adv[i], model.seen[first][i])
                frozen_late += first >= 2
            else:
                moved_after += not bool((later == model.seen[first][i]).all())
        if not early:
            assert moved_after > 0  # without early_stop the fooled samples move on: the check above can fail
    assert frozen_late > 0  # some samples were fooled only after the first steps
