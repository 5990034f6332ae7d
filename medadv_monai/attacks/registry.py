r"""Attack lookup by name, a one-call runner with the project's default budget, and each attack's cost.

Defaults, filled in only for the parameters an attack takes and has no default of its own: ``eps = 8/255``,
``alpha = max(eps / 4, 1/255)`` (element-wise for a per-sample ``eps``), ``steps = 10``. (APGD, CW-L2 and the
AutoAttack-style ensemble keep their published iteration counts unless given ``steps``; the MRI-physics attacks
have their own eps defaults: a bias field 0.3, k-space 0.05.)

Each attack's eps is a budget of one kind, :func:`budget_name`: ``linf`` (:math:`\lVert x' - x \rVert_\infty \le
\epsilon`, every gradient-sign attack, CW-L2 capped, Square, AdvGAN), ``field`` (a multiplicative bias field in
:math:`[1 - \epsilon, 1 + \epsilon]`: ``bias_field`` and ``random_bias_field``) or ``kspace`` (a k-space change of
L2 norm at most :math:`\epsilon \lVert \mathcal{F}(x) \rVert_2`: ``kspace`` and ``random_kspace``). Budgets of
different kinds are not comparable. ``random_bias_field`` and ``random_kspace`` are random draws of the same family
and eps (:mod:`~medadv_monai.attacks.physics_baselines`; :data:`RANDOM_BASELINES`), untargeted only.
"""

from __future__ import annotations

import inspect
from typing import Any, Callable, Mapping

import torch

from medadv_monai.attacks.advgan import advgan
from medadv_monai.attacks.apgd import apgd
from medadv_monai.attacks.autoattack import autoattack
from medadv_monai.attacks.bias_field import bias_field
from medadv_monai.attacks.bim import bim
from medadv_monai.attacks.cw import cw_l2
from medadv_monai.attacks.fgsm import fgsm
from medadv_monai.attacks.kspace import kspace
from medadv_monai.attacks.mifgsm import mifgsm
from medadv_monai.attacks.pgd import pgd
from medadv_monai.attacks.physics_baselines import random_bias_field_attack, random_kspace_attack
from medadv_monai.attacks.square import square
from medadv_monai.errors import MedAdvInputError

__all__ = [
    "ATTACKS",
    "BUDGETS",
    "DEFAULT_EPS",
    "RANDOM_BASELINES",
    "DEFAULT_STEPS",
    "available_attacks",
    "default_alpha",
    "display_name",
    "get_attack",
    "attack_kwargs",
    "attack_cost",
    "budget_name",
    "is_random_baseline",
    "random_baseline",
    "run_attack",
]

AttackFn = Callable[..., torch.Tensor]

ATTACKS: Mapping[str, AttackFn] = {"fgsm": fgsm, "bim": bim, "pgd": pgd, "mifgsm": mifgsm, "apgd": apgd,
                                   "cwl2": cw_l2, "square": square, "autoattack": autoattack, "advgan": advgan,
                                   "biasfield": bias_field, "kspace": kspace,
                                   "randombiasfield": random_bias_field_attack, "randomkspace": random_kspace_attack}
"""Canonical name -> attack function (canonical names have no ``-`` or ``_``: ``bias_field`` is ``biasfield``)."""

_ALIASES = {"ifgsm": "bim", "mi": "mifgsm", "mim": "mifgsm", "carliniwagner": "cwl2", "aa": "autoattack",
            "advbias": "biasfield", "kspaceattack": "kspace"}

DISPLAY_NAMES: Mapping[str, str] = {"fgsm": "FGSM", "bim": "BIM", "pgd": "PGD", "mifgsm": "MI-FGSM", "apgd": "APGD",
                                    "cwl2": "CW-L2", "square": "Square", "autoattack": "AutoAttack-style",
                                    "advgan": "AdvGAN", "biasfield": "Bias field", "kspace": "k-space",
                                    "randombiasfield": "Random bias field", "randomkspace": "Random k-space"}
"""Canonical name -> the name tables, plots and reports show."""

BUDGETS: Mapping[str, str] = {"biasfield": "field", "randombiasfield": "field", "kspace": "kspace",
                              "randomkspace": "kspace"}
"""Canonical name -> the kind of its eps where it is not ``linf`` (:func:`budget_name`)."""

RANDOM_BASELINES: Mapping[str, str] = {"biasfield": "randombiasfield", "kspace": "randomkspace"}
"""Canonical name of an attack -> its random baseline: a random draw of the same family and eps (untargeted only)."""

DEFAULT_EPS = 8 / 255
DEFAULT_STEPS = 10


def available_attacks() -> list[str]:
    """The canonical attack names, sorted."""
    return sorted(ATTACKS)


def _canonical(name: str) -> str:
    if not isinstance(name, str):
        raise MedAdvInputError(f"attack name must be a string, one of {available_attacks()}, got {name!r}")
    key = name.strip().lower().replace("-", "").replace("_", "")
    key = _ALIASES.get(key, key)
    if key == "cw":
        raise MedAdvInputError("attack 'cw' is ambiguous: 'cw_l2' is Carlini-Wagner L2; the Adv_MIA survey's \"CW\" is "
                               "PGD on the margin loss: {attack: pgd, loss: margin, kappa: 50, steps: 30}")
    if key not in ATTACKS:
        raise MedAdvInputError(f"unknown attack {name!r}; expected one of {available_attacks()}")
    return key


def display_name(name: str) -> str:
    """How tables, plots and reports name an attack: ``mifgsm`` -> ``MI-FGSM``, ``pgd`` -> ``PGD``, ...

    A name that is no registry attack (a grid row such as ``pgd40``, or ``clean``) is shown as it is.
    """
    key = str(name).strip().lower().replace("-", "").replace("_", "")
    return DISPLAY_NAMES.get(_ALIASES.get(key, key), str(name))


def get_attack(name: str) -> AttackFn:
    """Return the attack function for ``name`` (case-insensitive; ``-``/``_`` ignored; ``i-fgsm`` = ``bim``).

    Raises:
        MedAdvInputError: for an unknown name.
    """
    return ATTACKS[_canonical(name)]


def default_alpha(eps: float | torch.Tensor) -> float | torch.Tensor:
    r"""Default step size :math:`\alpha = \max(\epsilon / 4, 1/255)` (element-wise for a tensor ``eps``)."""
    if isinstance(eps, torch.Tensor):
        return torch.clamp(eps / 4, min=1 / 255)
    return max(float(eps) / 4, 1 / 255)


def attack_kwargs(name: str, **kwargs: Any) -> dict[str, Any]:
    """Check ``kwargs`` against attack ``name``'s signature and fill in the defaults it takes.

    Raises:
        MedAdvInputError: for an unknown attack or a keyword the attack does not take.
    """
    key = _canonical(name)
    params = inspect.signature(ATTACKS[key]).parameters
    accepted = [p for p, v in params.items() if v.kind is inspect.Parameter.KEYWORD_ONLY]
    unknown = sorted(set(kwargs) - set(accepted))
    if unknown:
        raise MedAdvInputError(f"attack {key!r} does not take {unknown}; it accepts {accepted}")
    out = dict(kwargs)
    required = {p for p, v in params.items() if v.default is inspect.Parameter.empty}
    if "eps" in required:
        out.setdefault("eps", DEFAULT_EPS)
    if "alpha" in required:
        out.setdefault("alpha", default_alpha(out["eps"]))
    if "steps" in required:
        out.setdefault("steps", DEFAULT_STEPS)
    return out


def _cost_of(key: str, kw: Mapping[str, Any]) -> tuple[int, int]:
    if key in ("bim", "pgd", "mifgsm", "biasfield", "kspace"):
        return int(kw["steps"]), 0
    if key == "apgd":
        return int(kw["steps"]) + 1, 0
    if key == "cwl2":
        return int(kw["steps"]) * int(kw["binary_steps"]), 0
    if key == "square":
        return 0, int(kw["queries"])
    if key == "autoattack":  # APGD-CE, then up to n_targets APGD-T runs (only for models with >= 4 classes)
        return (int(kw["steps"]) + 1) * (1 + int(kw["n_targets"])), int(kw["queries"])
    return (1 if key == "fgsm" else 0), 0  # FGSM: one gradient; AdvGAN: one generator pass; random baselines: none


def attack_cost(name: str, **kwargs: Any) -> dict[str, int]:
    """The budget of model evaluations an attack may spend per sample with ``kwargs`` (the attack's own defaults
    for the rest), an upper bound: ``grad_evals``, forward and backward passes (FGSM 1, BIM/PGD/MI-FGSM, the bias
    field and k-space ``steps``,
    APGD ``steps + 1``, CW-L2 ``steps * binary_steps``, the AutoAttack-style ensemble its APGD-CE run and
    ``n_targets`` APGD-T runs, which happen only for models with 4 or more classes), and ``queries``, forward passes
    alone (Square, and the ensemble's Square). The one forward pass per attack (or ensemble member) that checks the
    clean or final decision is not counted. Samples that stop early on success (Square, ``early_stop``, the
    ensemble's later members) spend less. AdvGAN and the random baselines of the physics attacks cost 0.
    """
    key = _canonical(name)
    params = inspect.signature(ATTACKS[key]).parameters
    kw = {p: v.default for p, v in params.items() if v.default is not inspect.Parameter.empty}
    kw.update(attack_kwargs(key, **kwargs))
    grads, queries = _cost_of(key, kw)
    return {"grad_evals": grads, "queries": queries}


def budget_name(name: str) -> str:
    """The kind of attack ``name``'s eps (module docstring): ``"linf"``, ``"field"`` (``bias_field``,
    ``random_bias_field``) or ``"kspace"`` (``kspace``, ``random_kspace``).

    Raises:
        MedAdvInputError: for an unknown name.
    """
    return BUDGETS.get(_canonical(name), "linf")


def is_random_baseline(name: str) -> bool:
    """Whether attack ``name`` is a random draw (``random_bias_field``, ``random_kspace``; :data:`RANDOM_BASELINES`),
    which takes no target.

    Raises:
        MedAdvInputError: for an unknown name.
    """
    return _canonical(name) in RANDOM_BASELINES.values()


def random_baseline(name: str) -> str | None:
    """The canonical name of attack ``name``'s random baseline (``bias_field`` -> ``randombiasfield``,
    ``kspace`` -> ``randomkspace``; :data:`RANDOM_BASELINES`), ``None`` for an attack without one.

    Raises:
        MedAdvInputError: for an unknown name.
    """
    return RANDOM_BASELINES.get(_canonical(name))


def run_attack(name: str, model: Callable[[torch.Tensor], Any], x: torch.Tensor, y: Any, **kwargs: Any) -> torch.Tensor:
    """Run attack ``name`` on ``(x, y)`` with the registry defaults for anything not given.

    Example:
        >>> x_adv = run_attack("pgd", model, x, y, eps=4 / 255, mask=tumour_mask)  # doctest: +SKIP

    Args:
        name: a registry name (:func:`available_attacks`; see :func:`get_attack`).
        model: the model to attack (used as given).
        x: inputs in ``[0, 1]``, ``(N, C, *spatial)``.
        y: labels, or targets with ``targeted=True``.
        kwargs: keyword arguments of the attack; ``eps``, ``alpha`` and ``steps`` default as described above.

    Returns:
        The adversarial batch (detached, ``x``'s dtype and device).
    """
    return ATTACKS[_canonical(name)](model, x, y, **attack_kwargs(name, **kwargs))
