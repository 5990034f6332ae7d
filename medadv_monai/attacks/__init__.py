"""Gradient-sign adversarial attacks with per-voxel budget masks, and their MONAI wrappers.

Attacks (one small module each, all thin loops over :mod:`medadv_monai.attacks._core`):
:func:`fgsm`, :func:`bim`, :func:`pgd` (CE or the margin loss), :func:`mifgsm`, :func:`apgd` (auto-PGD, CE or
DLR loss), :func:`cw_l2` (Carlini-Wagner L2), :func:`square` (score-based, no gradients), :func:`autoattack` (an
AutoAttack-style ensemble of them; :func:`run_autoattack` adds the robust accuracy after each member),
:func:`advgan` (a trained generator, one pass), the MRI-physics attacks :func:`bias_field` (AdvBias, a smooth
multiplicative field) and :func:`kspace` (a k-space change) with their random baselines of the same eps
(:func:`random_bias_field`, :func:`random_kspace`; as grid rows ``random_bias_field`` and ``random_kspace``) and, for
segmentation, :func:`medis` (MedIS loss fusion). Every
gradient attack above attacks a segmentation model with a :class:`~medadv_monai.losses.DenseLoss` as ``loss_fn``
(towards the target masks of :class:`SegTargetd` when targeted). Look them up by name with :func:`get_attack`,
run them with the default budget via :func:`run_attack`, and read their cost with :func:`attack_cost` and the kind
of their eps with :func:`budget_name` (``linf``, ``field`` or ``kspace``). MONAI
integration: :class:`AdversarialPerturb`, :class:`AdversarialPerturbd` (transforms), :class:`AdversarialInferer` and
:class:`PrepareAttackBatch` (engines). The benchmarks live in :mod:`medadv_monai.bench`.
"""

from __future__ import annotations

import importlib
from typing import Any

from medadv_monai.attacks.advgan import advgan, advgan_delta, apply_delta
from medadv_monai.attacks.apgd import apgd
from medadv_monai.attacks.autoattack import AutoAttackResult, autoattack, run_autoattack
from medadv_monai.attacks.bias_field import bias_field, field_range, random_bias_field
from medadv_monai.attacks.bim import bim
from medadv_monai.attacks.cw import cw_l2
from medadv_monai.attacks.fgsm import fgsm
from medadv_monai.attacks.kspace import kspace, kspace_support, random_kspace, relative_kspace_energy
from medadv_monai.attacks.margin import as_two_logits, margin
from medadv_monai.attacks.medis import MedISResult, medis
from medadv_monai.attacks.mifgsm import mifgsm
from medadv_monai.attacks.pgd import pgd
from medadv_monai.attacks.registry import (
    ATTACKS,
    attack_cost,
    attack_kwargs,
    available_attacks,
    budget_name,
    default_alpha,
    display_name,
    get_attack,
    is_random_baseline,
    run_attack,
)
from medadv_monai.attacks.square import square

# The MONAI wrappers import lazily (PEP 562), so ``import medadv_monai.attacks`` stays light.
_LAZY = {
    "AdversarialInferer": "medadv_monai.attacks.inferer",
    "PrepareAttackBatch": "medadv_monai.attacks.inferer",
    "AdversarialPerturb": "medadv_monai.attacks.transforms",
    "AdversarialPerturbd": "medadv_monai.attacks.transforms",
    "SegTargetd": "medadv_monai.attacks.seg_targets",
    "implant_bank": "medadv_monai.attacks.seg_targets",
}

__all__ = [
    "ATTACKS",
    "AdversarialInferer",
    "AutoAttackResult",
    "AdversarialPerturb",
    "AdversarialPerturbd",
    "MedISResult",
    "PrepareAttackBatch",
    "SegTargetd",
    "advgan",
    "advgan_delta",
    "apgd",
    "apply_delta",
    "attack_cost",
    "as_two_logits",
    "attack_kwargs",
    "autoattack",
    "available_attacks",
    "bias_field",
    "bim",
    "budget_name",
    "cw_l2",
    "default_alpha",
    "display_name",
    "fgsm",
    "field_range",
    "get_attack",
    "implant_bank",
    "is_random_baseline",
    "kspace",
    "kspace_support",
    "margin",
    "medis",
    "mifgsm",
    "pgd",
    "random_bias_field",
    "random_kspace",
    "relative_kspace_energy",
    "run_attack",
    "run_autoattack",
    "square",
]


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        value = getattr(importlib.import_module(_LAZY[name]), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
