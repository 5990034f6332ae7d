"""The MRI-physics attacks in the registry, the metrics, the grid, the report and the figures: names, defaults,
costs and budgets; the random baselines as attacks; field range and k-space energy against a hand computation;
per-row eps; and configs/physics.yaml end to end through ``monai.bundle run``."""

from __future__ import annotations

import csv
import inspect
import json
import math
import shutil

import numpy as np
import pytest
import torch
from torch import nn

from medadv_monai.attacks import (
    AdversarialInferer,
    attack_cost,
    attack_kwargs,
    available_attacks,
    bias_field,
    budget_name,
    display_name,
    get_attack,
    is_random_baseline,
    kspace,
    random_bias_field,
    random_kspace,
    relative_kspace_energy,
    run_attack,
)
from medadv_monai.attacks.physics_baselines import random_bias_field_attack, random_kspace_attack
from medadv_monai.attacks.registry import random_baseline
from medadv_monai.engines import expand_grid
from medadv_monai.engines.grid_report import eps_text, eps_value, physics_section, summary_table
from medadv_monai.errors import MedAdvInputError
from medadv_monai.metrics import SUMMARY_COLUMNS, perturbation_metrics, summarize
from medadv_monai.visualize import markdown_table, physics_change, physics_examples, plot_physics_accuracy
from tests.helpers import ATTACK_EVAL_BUNDLE, brain, gen, run_cli, workflow

pytestmark = pytest.mark.usefixtures("one_thread")  # tiny tensors: one thread (conftest)

PHYSICS = {"biasfield": "field", "randombiasfield": "field", "kspace": "kspace", "randomkspace": "kspace"}


def tiny_model(c: int = 1) -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(c, 2, 3, padding=1), nn.Tanh(), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
                         nn.Linear(2, 1)).eval()


# ------------------------------------------------------------------------------------------------ registry
def test_registry_names_defaults_cost_and_budgets():
    assert get_attack("bias_field") is get_attack("AdvBias") is bias_field
    assert get_attack("kspace") is get_attack("k_space") is get_attack("kspace-attack") is kspace
    assert get_attack("random_bias_field") is random_bias_field_attack
    assert get_attack("random_kspace") is random_kspace_attack
    assert [display_name(n) for n in ("bias_field", "kspace", "random_bias_field", "random_kspace")] == [
        "Bias field", "k-space", "Random bias field", "Random k-space"]
    # the attacks' own eps defaults: the registry fills in no L-inf 8/255
    assert attack_kwargs("kspace") == {} and attack_kwargs("random_kspace") == {} and attack_kwargs("bias_field") == {}
    defaults = {n: {k: p.default for k, p in inspect.signature(get_attack(n)).parameters.items()}
                for n in ("bias_field", "kspace", "random_bias_field", "random_kspace")}
    assert (defaults["kspace"]["eps"], defaults["kspace"]["steps"], defaults["bias_field"]["eps"]) == (0.05, 10, 0.3)
    assert defaults["random_kspace"]["eps"] == 0.05 and defaults["random_bias_field"]["eps"] == 0.3
    assert attack_cost("bias_field") == {"grad_evals": 10, "queries": 0}
    assert attack_cost("kspace", steps=7) == {"grad_evals": 7, "queries": 0}
    assert attack_cost("random_bias_field") == attack_cost("random_kspace", eps=0.1) == {"grad_evals": 0, "queries": 0}
    assert {n: budget_name(n) for n in available_attacks()} == {n: PHYSICS.get(n, "linf") for n in available_attacks()}
    assert budget_name("AdvBias") == "field" and budget_name("pgd") == budget_name("cw_l2") == "linf"
    assert is_random_baseline("random_kspace") and not is_random_baseline("kspace")
    assert random_baseline("advbias") == "randombiasfield" and random_baseline("pgd") is None
    with pytest.raises(MedAdvInputError, match=r"unknown attack 'fieldbias'"):
        budget_name("fieldbias")


def test_random_baselines_as_attacks_ignore_the_model_and_refuse_targets():
    x, y = brain((2, 1, 16, 16)), torch.tensor([0, 1])
    m = torch.zeros(1, 1, 16, 16)
    m[..., 4:12, 4:12] = 1.0
    out = run_attack("random_bias_field", tiny_model(), x, y, eps=0.2, spacing=8, generator=gen(1), mask=m)
    assert torch.equal(out, random_bias_field(x, eps=0.2, spacing=8, generator=gen(1), mask=m))
    assert torch.equal(random_kspace_attack(None, x, None, eps=0.1, band=(0, 0.5), generator=gen(2)),
                       random_kspace(x, eps=0.1, band=(0, 0.5), generator=gen(2)))
    model = tiny_model()
    torch.manual_seed(3)  # no generator: torch's global one, as the grid seeds it per batch
    inferred = AdversarialInferer("random_kspace", eps=0.05).perturb(x, model, labels=y, mask=m)
    torch.manual_seed(3)
    assert torch.equal(inferred, random_kspace(x, eps=0.05, mask=m))
    for call in (lambda: random_bias_field_attack(None, x, y, targeted=True),
                 lambda: AdversarialInferer("random_kspace", targeted=True).perturb(x, tiny_model(), labels=y)):
        with pytest.raises(MedAdvInputError, match=r"random_\w+ is a random draw .* no target: got targeted=True"):
            call()


# ------------------------------------------------------------------------------------------------ metrics
def test_field_range_of_a_known_field_and_where_it_is_observable():
    x = brain((3, 2, 12, 12))  # intensities <= 0.8: a field of 1.2 clips nothing
    x[1, 0, 3, 3], x[1, 0, 4, 4], x[1, 1, 5, 5] = 0.9, 0.005, 0.02  # clipped, background (< 0.01), just inside
    x[2] = 0.0  # all background
    m = perturbation_metrics(x, torch.clamp(1.2 * x, 0, 1))
    assert m["field_lo"][:2].tolist() == pytest.approx([1.2, 1.2], abs=1e-6)
    assert m["field_hi"][:2].tolist() == pytest.approx([1.2, 1.2], abs=1e-6)
    assert math.isnan(m["field_lo"][2]) and math.isnan(m["field_hi"][2])
    clean = perturbation_metrics(x, x)
    assert clean["field_lo"][:2].tolist() == clean["field_hi"][:2].tolist() == [1.0, 1.0]
    # a real AdvBias field: the realised range lies within [1 - eps, 1 + eps]
    x = brain((2, 1, 32, 32))
    x_adv = bias_field(tiny_model(), x, torch.tensor([0, 1]), eps=0.25, steps=3, spacing=8, generator=gen())
    m = perturbation_metrics(x, x_adv)
    assert (m["field_lo"] >= 0.75 - 1e-5).all() and (m["field_hi"] <= 1.25 + 1e-5).all()
    assert ((m["field_lo"] < 0.99) | (m["field_hi"] > 1.01)).all()  # and it changed every slice


def test_kspace_energy_is_the_relative_energy_of_the_realised_kspace_change():
    x = brain((3, 2, 16, 20))
    x[2] = 0.0
    x_adv = random_kspace(x, eps=0.08, generator=gen())
    energy = perturbation_metrics(x, x_adv)["kspace_energy"]
    fx, fa = (torch.fft.fftn(t.double(), dim=(-2, -1), norm="ortho") for t in (x, x_adv))
    by_hand = (fa - fx).abs().flatten(1).norm(dim=1) / fx.abs().flatten(1).norm(dim=1)
    assert energy[:2].tolist() == pytest.approx(by_hand[:2].tolist(), rel=1e-5)
    assert energy[:2].tolist() == pytest.approx(relative_kspace_energy(x, x_adv)[:2].tolist(), rel=1e-5)
    assert (energy[:2] <= 0.08 + 1e-6).all() and math.isnan(energy[2])  # realised <= nominal; zero image: NaN
    assert perturbation_metrics(x, 1.1 * x)["kspace_energy"][:2].tolist() == pytest.approx([0.1, 0.1], rel=1e-5)


def test_summary_columns_and_means_of_the_new_metrics():
    per = {"clean_correct": [True, True], "adv_correct": [True, False], "attackable": [True, True],
           "success": [False, True], "kspace_energy": [0.02, math.nan], "field_lo": [0.8, 0.9], "field_hi": [1.1, 1.3]}
    s = summarize(per)
    assert (s["mean_kspace_energy"], s["mean_field_lo"], s["mean_field_hi"]) == pytest.approx((0.02, 0.85, 1.2))
    cols = list(SUMMARY_COLUMNS)
    assert cols[cols.index("attack"):cols.index("eps_255") + 1] == ["attack", "budget", "eps", "eps_255"]
    assert {"mean_kspace_energy", "mean_field_lo", "mean_field_hi"} <= set(cols)


# ------------------------------------------------------------------------------------------------ the grid
def test_expand_grid_takes_a_rows_own_eps():
    cells = expand_grid({"bias_field": {"steps": 10, "eps": [0.1, 0.2, 0.3]}, "random_kspace": {"eps": 0.05},
                         "pgd": {"steps": 10}}, [2 / 255, 8 / 255], ["none", "seg"])
    assert [c.label for c in cells] == [
        "clean_none", "clean_seg", *(f"bias_field_eps{e}_{m}" for e in ("0p1", "0p2", "0p3") for m in ("none", "seg")),
        "random_kspace_eps0p05_none", "random_kspace_eps0p05_seg", "pgd_eps2_none", "pgd_eps2_seg", "pgd_eps8_none",
        "pgd_eps8_seg"]
    rows = {c.label: c.row() for c in cells}
    assert rows["clean_none"]["budget"] == "none" and rows["pgd_eps8_seg"]["budget"] == "linf"
    assert {k: rows["bias_field_eps0p3_none"][k] for k in ("attack", "budget", "eps", "grad_evals")} == {
        "attack": "bias_field", "budget": "field", "eps": 0.3, "grad_evals": 10}
    assert rows["random_kspace_eps0p05_seg"]["budget"] == "kspace" and rows["random_kspace_eps0p05_seg"]["eps"] == 0.05
    assert "eps" not in cells[2].params and cells[2].inferer().attack_kwargs["eps"] == 0.1
    assert len(expand_grid({"kspace": {"eps": [0.02]}}, [], ["none"], clean=False)) == 1  # grid eps unused
    bad = [({"bias_field": {"eps": [0.1, 1.5]}}, r"eps of grid row 'bias_field' must be a number in \[0, 1\].*1.5"),
           ({"kspace": {"eps": "0.05"}}, r"eps of grid row 'kspace' must be a non-empty list .*got '0.05'"),
           ({"kspace": {"eps": []}}, r"eps of grid row 'kspace' must be a non-empty list"),
           ({"bias_field": {"eps": [0.3, 1.0]}}, r"grid row 'bias_field' \(bias_field\): a field eps must be in "
                                                r"\(0, 1\), got 1"),
           ({"kspace": {"eps": [0.0]}}, r"grid row 'kspace' \(kspace\): a kspace eps must be in \(0, 1\], got 0")]
    for attacks, pattern in bad:
        with pytest.raises(MedAdvInputError, match=pattern):
            expand_grid(attacks, [8 / 255], ["none"])
    with pytest.raises(MedAdvInputError, match=r"grid row 'rk' \(random_kspace\) is a random draw, .* no target"):
        expand_grid({"rk": {"attack": "random_kspace"}}, [0.05], ["none"], [False, True])
    with pytest.raises(MedAdvInputError, match=r"eps in the grid must be a number in \[0, 1\]"):
        expand_grid({"pgd": {}}, [2.0], ["none"])


def test_report_writes_physics_eps_with_its_budget_and_pairs_the_random_baseline():
    assert [eps_text("linf", 8 / 255), eps_text("field", 0.3), eps_text("kspace", 0.05)] == [
        "eps 8/255", "field eps 0.3", "k-space eps 0.05"]
    assert eps_value("none", 0.0) == "-"
    cells = expand_grid({"bias_field": {"eps": [0.3]}, "random_bias_field": {"eps": [0.3]}, "pgd": {}}, [8 / 255],
                        ["none"])
    base = {"n": 10, "targeted": False, "asr": 0.5, "mean_ssim": 0.9, "mean_field_lo": 0.7, "mean_field_hi": 1.3}
    summary = [{**c.row(), **base, "clean_acc": 0.9, "robust_acc": r}
               for c, r in zip(cells, (0.9, 0.2, 0.7, 0.4))]
    text = "\n".join(physics_section(summary, cells))
    assert "### bias field" in text
    assert "| none | 0.3 | Bias field | 10 | 0.200 | 0.500 | 0.700 | 0.500 | 0.700 |" in text  # gain 0.7 - 0.2
    assert "| none | 0.3 | Random bias field | 10 | 0.700 | 0.500 | – | – |" in text and "PGD" not in text
    table = summary_table(summary, ["attack", "eps_255", "mask", "robust_acc"])
    assert "| Bias field | bias field | 0.3 | none |" in table and "| PGD | L-inf | 8/255 | none |" in table
    assert "76.5" not in table and "eps_255" not in table
    linf = [s for s in summary if s["budget"] in ("linf", "none")]
    assert summary_table(linf, ["attack", "eps_255"]) == markdown_table(linf, ["attack", "eps_255"])  # unchanged
    assert physics_section(linf, cells) == []


def test_field_figures(tmp_path):
    x = brain((2, 1, 16, 16))
    x_adv = random_bias_field(x, eps=0.3, spacing=8, generator=gen())
    field = physics_change(x[0, 0].numpy(), x_adv[0, 0].numpy(), "field")
    inside = x[0, 0].numpy() > 0.01
    assert np.isnan(field[~inside]).all() and np.allclose(field[inside], (x_adv[0, 0] / x[0, 0]).numpy()[inside])
    k = physics_change(x[0, 0].numpy(), random_kspace(x, eps=0.05, generator=gen())[0, 0].numpy(), "kspace")
    assert k.shape == (16, 16) and np.isfinite(k).any()
    with pytest.raises(MedAdvInputError, match=r"budget must be 'field' or 'kspace'.*got 'linf'"):
        physics_change(x[0, 0].numpy(), x[0, 0].numpy(), "linf")
    rows = [{"subject": "s0", "slice_index": 3, "label": 1, "clean_pred": 1, "clean_prob": 0.9, "adv_pred": 0,
             "adv_prob": 0.2}] * 2
    samples = {"image": x[:, 0].numpy(), "adv": x_adv[:, 0].numpy(), "mask": None, "rows": rows}
    for budget in ("field", "kspace"):
        assert physics_examples(samples, tmp_path / f"{budget}.png", budget, 0.3, title="t").is_file()
    summary = [{"attack": a, "budget": b, "eps": e, "mask": "none", "targeted": False, "robust_acc": 0.5,
                "clean_acc": 0.9} for a, b, e in (("clean", "none", 0.0), ("bias_field", "field", 0.1),
                                                  ("bias_field", "field", 0.3), ("random_bias_field", "field", 0.3))]
    assert plot_physics_accuracy(summary, tmp_path / "acc.png", random_rows={"random_bias_field"}).is_file()
    with pytest.raises(MedAdvInputError, match="needs rows of a 'field' or 'kspace' budget"):
        plot_physics_accuracy(summary[:1], tmp_path / "none.png")


# ------------------------------------------------------------------------------------------------ end to end
@pytest.mark.slow
def test_physics_config_end_to_end(trained_classifier, synth_dir, tmp_path):
    bundle = tmp_path / "brats_attack_eval"
    shutil.copytree(ATTACK_EVAL_BUNDLE, bundle, ignore=shutil.ignore_patterns("eval"))
    ids = {"classifier_bundle": str(trained_classifier), "dataset_dir": str(synth_dir),
           "classifier_overrides": {"image_size": [32, 32]}, "split": "training", "max_slices": 32}
    wf = workflow(bundle, ["evaluate.yaml", "physics.yaml"], "infer", **ids)
    wf.initialize()
    assert wf.check_properties() == []
    files = f"['{bundle / 'configs' / 'evaluate.yaml'}','{bundle / 'configs' / 'physics.yaml'}']"
    run_cli(["monai.bundle", "run", "--config_file", files, "--bundle_root", str(bundle),
             *(a for k, v in ids.items() for a in (f"--{k}", str(v)))], cwd=tmp_path)
    out = bundle / "eval" / "physics"
    with open(out / "summary.csv") as f:
        summary = {r["cell"]: r for r in csv.DictReader(f)}
    eps = {"bias_field": ("0p1", "0p2", "0p3"), "kspace": ("0p02", "0p05", "0p1")}
    eps.update({f"random_{a}": e for a, e in eps.items()})
    assert set(summary) == {"clean_none", "clean_seg"} | {f"{a}_eps{e}_{m}" for a, es in eps.items() for e in es
                                                          for m in ("none", "seg")}
    assert {r["budget"] for r in summary.values()} == {"none", "field", "kspace"}
    assert summary["kspace_eps0p05_seg"]["grad_evals"] == "10"
    assert summary["random_kspace_eps0p1_none"]["grad_evals"] == "0"
    with open(out / "per_sample.csv") as f:
        rows = list(csv.DictReader(f))
    assert {r["cell"] for r in rows} == set(summary) and len(rows) == 32 * len(summary)
    for r in rows:
        e, budget = float(r["eps"]), r["budget"]
        lo, hi, energy = (float(r[k]) for k in ("field_lo", "field_hi", "kspace_energy"))
        if budget == "field" and not math.isnan(lo):  # the realised field lies within [1 - eps, 1 + eps]
            assert 1 - e - 1e-5 <= lo <= hi <= 1 + e + 1e-5, r["cell"]
        if budget == "kspace":  # the realised k-space change is within the budget
            assert energy <= e + 1e-5, r["cell"]
        if r["attackable"] == "False":  # seg mask, no tumour: untouched
            assert float(r["l0"]) == 0.0 and r["adv_pred"] == r["clean_pred"]
    assert any(r["attackable"] == "False" for r in rows if r["mask"] == "seg")
    report = (out / "report.md").read_text()
    assert "## MRI-physics attacks against random draws of the same eps" in report
    tables = [line for line in report.split("## Reproduce")[0].splitlines() if line.startswith("|")]
    assert "| Bias field | bias field | 0.3 | none |" in report and "| none | 0.1 | Random k-space |" in report
    assert not [line for line in tables if "/255" in line or "76.5" in line]  # a physics eps is never x/255
    for name in ("physics_robust_accuracy.png", "fields_bias_field_eps0p3_none.png",
                 "fields_random_kspace_eps0p1_seg.png", "grid_kspace_eps0p1_none.png"):
        assert (out / "figures" / name).is_file() and f"figures/{name}" in report, name
    assert not (out / "figures" / "robust_accuracy.png").exists()  # no L-inf rows: no 1/255 axis
    assert all(s["budget"] != "linf" for s in json.loads((out / "summary.json").read_text()))
