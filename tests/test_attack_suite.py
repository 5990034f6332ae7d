"""Attack suite v2 as a whole: the registry's costs and defaults, the grid's per-eps parameters, the AutoAttack-style
ensemble, and cross-checks against torchattacks (a test-only extra that scripts/bootstrap.sh installs)."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from medadv_monai.attacks import apgd, attack_cost, attack_kwargs, display_name, get_attack
from medadv_monai.errors import MedAdvInputError

pytestmark = pytest.mark.usefixtures("one_thread")  # tiny tensors: one thread (conftest)


def balanced_conv(k: int = 2, seed: int = 1) -> nn.Module:
    """A small random conv net whose logit gap is centred on the test inputs (half of them per class, small margins)."""
    torch.manual_seed(seed)
    net = nn.Sequential(nn.Conv2d(1, 8, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2), nn.Conv2d(8, 8, 3, padding=1),
                        nn.ReLU(), nn.AdaptiveAvgPool2d(2), nn.Flatten(), nn.Linear(32, k)).eval()
    with torch.no_grad():
        out = net(inputs())
        net[-1].bias.sub_(out.median(dim=0).values)
    return net


def inputs(n: int = 256) -> torch.Tensor:
    """Images with exact 0 and 1 voxels, as MRI background and saturated voxels are."""
    x = torch.rand(n, 1, 16, 16, generator=torch.Generator().manual_seed(0))
    x[x < 0.15] = 0.0
    x[x > 0.9] = 1.0
    return x


def test_registry_names_defaults_and_costs():
    assert get_attack("CW-L2") is get_attack("carlini-wagner") and display_name("cw_l2") == "CW-L2"
    with pytest.raises(MedAdvInputError, match=r"'cw' is ambiguous: 'cw_l2' is Carlini-Wagner L2.*loss: margin"):
        get_attack("cw")  # the Adv_MIA survey's "CW" is a margin-loss PGD
    assert display_name("autoattack") == "AutoAttack-style" and display_name("square") == "Square"
    # the registry fills in only what an attack needs and has no default of its own
    assert attack_kwargs("pgd")["steps"] == 10 and "steps" not in attack_kwargs("apgd")
    assert attack_kwargs("pgd")["eps"] == pytest.approx(8 / 255) and "eps" not in attack_kwargs("cw_l2")  # no cap
    assert attack_cost("fgsm") == {"grad_evals": 1, "queries": 0}
    assert attack_cost("pgd", steps=20) == {"grad_evals": 20, "queries": 0}
    assert attack_cost("apgd") == {"grad_evals": 101, "queries": 0}
    assert attack_cost("cw_l2", steps=50, binary_steps=3) == {"grad_evals": 150, "queries": 0}
    assert attack_cost("square", queries=300) == {"grad_evals": 0, "queries": 300}
    assert attack_cost("autoattack", steps=10, n_targets=2) == {"grad_evals": 33, "queries": 5000}
    with pytest.raises(MedAdvInputError, match="does not take"):
        attack_cost("square", steps=3)


def test_grid_parameters_may_depend_on_eps_and_cells_carry_their_cost():
    from medadv_monai.engines import expand_grid

    survey_alpha = lambda eps: max(eps / 4, 0.5 / 255)  # noqa: E731
    cells = expand_grid({"pgd20": {"attack": "pgd", "steps": 20, "alpha": survey_alpha}, "square": {"queries": 50}},
                        [1 / 255, 2 / 255, 4 / 255, 8 / 255], ["none"], clean=False)
    alphas = [c.params["alpha"] * 255 for c in cells if c.name == "pgd20"]
    assert alphas == pytest.approx([0.5, 0.5, 1.0, 2.0])  # the Adv_MIA step sizes
    rows = {c.label: c.row() for c in cells}
    assert rows["pgd20_eps8_none"]["grad_evals"] == 20 and rows["square_eps8_none"]["queries"] == 50


def test_apgd_ce_matches_torchattacks_apgd():
    import torchattacks  # installed by scripts/bootstrap.sh; missing, this fails rather than skips
    model, x = balanced_conv(), inputs()
    y = model(x).argmax(1)
    for eps in (0.5 / 255, 2 / 255):
        ours = (model(apgd(model, x, y, eps=eps, steps=10)).argmax(1) == y).float().mean().item()
        ref = torchattacks.APGD(model, norm="Linf", eps=eps, steps=10, n_restarts=1, loss="ce", seed=0)(x, y)
        theirs = (model(ref).argmax(1) == y).float().mean().item()
        assert 0.5 < theirs < 0.95  # a budget where robust accuracy means something
        assert abs(ours - theirs) <= 0.02, (eps, ours, theirs)


def test_fgsm_and_bim_equal_the_adversarial_robustness_toolbox():
    from art.attacks.evasion import BasicIterativeMethod, FastGradientMethod
    from art.estimators.classification import PyTorchClassifier

    from medadv_monai.attacks import bim, fgsm

    model, x = balanced_conv(), inputs(32)
    y = model(x).argmax(1)
    clf = PyTorchClassifier(model, loss=nn.CrossEntropyLoss(), input_shape=(1, 16, 16), nb_classes=2,
                            clip_values=(0.0, 1.0), device_type="cpu")
    eps = 4 / 255
    ref = FastGradientMethod(clf, norm="inf", eps=eps).generate(x.numpy(), y=y.numpy())
    torch.testing.assert_close(fgsm(model, x, y, eps=eps), torch.from_numpy(ref), atol=1e-6, rtol=0)
    ref = BasicIterativeMethod(clf, eps=eps, eps_step=1 / 255, max_iter=5, verbose=False).generate(x.numpy(),
                                                                                                   y=y.numpy())
    torch.testing.assert_close(bim(model, x, y, eps=eps, alpha=1 / 255, steps=5), torch.from_numpy(ref), atol=1e-6,
                               rtol=0)


def test_autoattack_style_runs_members_on_the_still_robust_samples():
    from medadv_monai.attacks import pgd, run_autoattack

    model, x = balanced_conv(), inputs(64)
    y = model(x).argmax(1)
    y[:4] = 1 - y[:4]  # four samples the model gets wrong already
    eps = 1 / 255
    calls: list[int] = []
    counting = lambda t: (calls.append(len(t)), model(t))[1]  # noqa: E731 - the batch size of every model call
    result = run_autoattack(counting, x, y, eps=eps, steps=10, queries=100, generator=torch.Generator().manual_seed(0))
    acc = result.robust_accuracy
    assert list(acc) == ["clean", "apgd-ce", "square"]  # no APGD-T for a 2-class model
    assert acc["clean"] == pytest.approx(60 / 64) and acc["clean"] >= acc["apgd-ce"] >= acc["square"]
    # APGD-CE sees the 60 clean-correct samples, Square only those still robust after it (never more)
    after_apgd = round(acc["apgd-ce"] * 64)
    assert calls[0] == 64 and calls[1] == 60 and 0 < after_apgd < 60
    assert after_apgd in calls[2:] and max(calls[calls.index(after_apgd, 2):]) == after_apgd
    robust = model(result.x_adv).argmax(1) == y
    assert robust.float().mean().item() == pytest.approx(acc["square"])
    assert result.fooled_by[:4] == ["clean"] * 4
    unfooled = [i for i, who in enumerate(result.fooled_by) if who == ""]
    assert torch.equal(result.x_adv[unfooled], x[unfooled]) and torch.equal(result.x_adv[:4], x[:4])
    assert ((result.x_adv - x).abs() <= eps + 1e-6).all()
    # a stronger attack may not be weaker: the ensemble fools at least what PGD-10 fools here
    by_pgd = model(pgd(model, x, y, eps=eps, alpha=eps / 4, steps=10, generator=torch.Generator().manual_seed(0)))
    assert acc["square"] <= (by_pgd.argmax(1) == y).float().mean().item()


def test_autoattack_style_adds_apgd_t_for_four_or_more_classes():
    from medadv_monai.attacks import run_autoattack

    model, x = balanced_conv(k=5), inputs(32)
    y = model(x).argmax(1)
    result = run_autoattack(model, x, y, eps=1 / 255, steps=5, n_targets=3, queries=20,
                            generator=torch.Generator().manual_seed(0))
    assert list(result.robust_accuracy) == ["clean", "apgd-ce", "apgd-t", "square"]
    assert set(result.fooled_by) <= {"", "apgd-ce", "apgd-t", "square"}
