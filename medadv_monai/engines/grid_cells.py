"""The cells of an attack grid: one attack at one budget with one mask, untargeted or targeted.

:func:`expand_grid` makes the cells of a config's ``attacks x eps x masks x targeted`` (a row may bring its own eps
list: the MRI-physics attacks, whose eps is no L-inf budget); :func:`advgan_cells` adds the AdvGAN rows of a trained
generator; :func:`patch_sweep_masks` makes the masks of a patch sweep.
"""

from __future__ import annotations

import itertools
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch

from medadv_monai.attacks import AdversarialInferer
from medadv_monai.attacks.registry import attack_cost, attack_kwargs, budget_name, is_random_baseline
from medadv_monai.errors import MedAdvInputError
from medadv_monai.masks import AttackMaskd, PatchSpec
from medadv_monai.networks import AdvGANSettings, freeze, load_generator_checkpoint
from medadv_monai.utils.checks import check_bool, check_eps
from medadv_monai.utils.fingerprint import describe, file_digest, fingerprint

__all__ = ["CLEAN", "AttackCell", "advgan_cells", "expand_grid", "patch_sweep_masks"]

CLEAN = "clean"
PER_EPS = ("alpha",)  # grid keywords that may be given as a function of the cell's eps


@dataclass(frozen=True)
class AttackCell:
    """One cell of the grid.

    Attributes:
        name: row label of the attack (a key of the config's ``attacks``, e.g. ``pgd``), or ``clean``.
        attack: registry name of the attack (:func:`~medadv_monai.attacks.available_attacks`) or ``clean``.
        eps: the attack's budget (0 for ``clean``): L-inf in [0, 1], or for an MRI-physics attack its own kind
            (:attr:`budget`: a bias field's range, a relative k-space energy).
        mask: name of the mask transform (a key of the config's ``masks``).
        targeted: targeted attack towards the other class (``1 - label``).
        params: further attack keywords (``steps``, ``alpha``, ``decay``, ``generator``, ...).
        digests: for a parameter that is an object (a generator network), the digest of what it was loaded from
            (its checkpoint's :func:`~medadv_monai.utils.fingerprint.file_digest`), used in :meth:`description`.
    """

    name: str
    attack: str
    eps: float
    mask: str
    targeted: bool = False
    params: Mapping[str, Any] = field(default_factory=dict, hash=False, compare=False)
    digests: Mapping[str, str] = field(default_factory=dict, hash=False, compare=False)

    @property
    def budget(self) -> str:
        """The kind of :attr:`eps` (:func:`~medadv_monai.attacks.registry.budget_name`): ``linf``, ``field`` or
        ``kspace``; ``none`` for ``clean``."""
        return "none" if self.attack == CLEAN else budget_name(self.attack)

    @property
    def label(self) -> str:
        """A unique, file-name-safe label, e.g. ``pgd_eps8_seg`` or ``fgsm_eps4_ring_targeted`` (L-inf eps in units
        of 1/255), ``bias_field_eps0p3_none`` (any other budget as it is)."""
        if self.attack == CLEAN:
            return f"{CLEAN}_{self.mask}"
        eps = (f"{self.eps * 255:.4g}" if self.budget == "linf" else f"{self.eps:.4g}").replace(".", "p")
        return f"{self.name}_eps{eps}_{self.mask}" + ("_targeted" if self.targeted else "")

    def inferer(self) -> AdversarialInferer | None:
        """The cell's attack as an :class:`~medadv_monai.attacks.AdversarialInferer` (``None`` for ``clean``)."""
        if self.attack == CLEAN:
            return None
        return AdversarialInferer(attack=self.attack, targeted=self.targeted, eps=self.eps, **self.params)

    def description(self) -> dict[str, Any]:
        """What the cell computes, for its resume stamp: attack, eps, mask, targeted and params, a network parameter
        by the digest of its checkpoint (``digests``) or else of its weights, never by the object."""
        params = {}
        for key, value in sorted(self.params.items()):
            if key in self.digests:
                params[key] = {"checkpoint": self.digests[key]}
            elif isinstance(value, torch.nn.Module):
                params[key] = {"weights": fingerprint(value.state_dict())[:16]}
            else:
                params[key] = describe(value)
        return {"name": self.name, "attack": self.attack, "eps": self.eps, "mask": self.mask,
                "targeted": self.targeted, "params": params}

    def row(self) -> dict[str, Any]:
        """The cell's columns in the summary and per-sample tables: the kind of its eps (:attr:`budget`), eps and
        ``eps_255`` (eps x 255, the L-inf budget in units of 1/255; for another budget only eps means something), and
        its budget of model evaluations per slice (:func:`~medadv_monai.attacks.registry.attack_cost`:
        ``grad_evals`` and ``queries``)."""
        cost = {"grad_evals": 0, "queries": 0} if self.attack == CLEAN else attack_cost(
            self.attack, eps=self.eps, **{k: v for k, v in self.params.items() if not isinstance(v, torch.nn.Module)})
        return {"cell": self.label, "attack": self.name, "budget": self.budget, "eps": self.eps,
                "eps_255": round(self.eps * 255, 4), "mask": self.mask, "targeted": self.targeted, **cost}


def expand_grid(
    attacks: Mapping[str, Mapping[str, Any]],
    eps: Sequence[float],
    masks: Sequence[str],
    targeted: Sequence[bool] = (False,),
    clean: bool = True,
) -> list[AttackCell]:
    """All cells ``attacks x eps x masks x targeted``, after one ``clean`` cell per mask when ``clean``.

    Args:
        attacks: row name -> attack keywords with ``attack`` naming the registry attack (defaults to the row name),
            e.g. ``{"pgd": {"steps": 10}, "pgd40": {"attack": "pgd", "steps": 40}}``. An ``alpha`` that is callable
            is called with each cell's eps, e.g. ``alpha: "$lambda eps: max(eps / 4, 0.5 / 255)"`` in a config (the
            survey's step sizes); the cell keeps the value. A row's ``eps`` (a list of budgets in [0, 1], or one)
            replaces ``eps`` for that row: ``{"bias_field": {"steps": 10, "eps": [0.1, 0.2, 0.3]}}`` (an MRI-physics
            attack's eps is of another kind, :func:`~medadv_monai.attacks.budget_name`).
        eps: budgets in [0, 1], for every row without its own.
        masks: mask names.
        targeted: which of untargeted (False) / targeted (True) to run (a single value, or booleans written as
            true/false/yes/no/1/0, as ``--targeted false`` arrives, are accepted).

    Raises:
        MedAdvInputError: an unknown attack, a keyword it does not take, eps outside [0, 1] (the grid's or a row's),
            or a targeted cell of a random baseline (``random_bias_field``, ``random_kspace``: no target).
    """
    grid_eps = _eps_list(eps, "eps in the grid", empty=True)
    targeted = [targeted] if isinstance(targeted, (str, bool, int)) else targeted
    targeted = list(dict.fromkeys(check_bool(t, "targeted") for t in targeted))
    cells = [AttackCell(CLEAN, CLEAN, 0.0, m) for m in masks] if clean else []
    for name, spec in attacks.items():
        spec = dict(spec)
        row_eps = _eps_list(spec.pop("eps"), f"eps of grid row {name!r}") if "eps" in spec else grid_eps
        attack = spec.get("attack", name)
        if True in targeted and is_random_baseline(attack):
            raise MedAdvInputError(f"grid row {name!r} ({attack}) is a random draw, which has no target, but targeted "
                                   f"is {targeted}; run the grid with targeted: [false] or leave the row out")
        budget = budget_name(attack)
        for e in row_eps if budget != "linf" else ():  # a field in [1 - eps, 1 + eps], a k-space change <= eps ||F(x)||
            if not (0 < e < 1 or (budget == "kspace" and e == 1)):
                raise MedAdvInputError(f"grid row {name!r} ({attack}): a {budget} eps must be in (0, 1"
                                       f"{']' if budget == 'kspace' else ')'}, got {e:g}")
        for e, m, t in itertools.product(row_eps, masks, targeted):
            params = {k: v(e) if k in PER_EPS and callable(v) else v for k, v in spec.items()}
            params.pop("attack", None)
            attack_kwargs(attack, eps=e, **params)  # validate names and keywords now, not mid-grid
            cells.append(AttackCell(name, attack, e, m, t, params))
    return cells


def _eps_list(eps: Any, what: str, empty: bool = False) -> list[float]:
    """Budgets in [0, 1] as floats: a list of them (non-empty unless ``empty``), or one number."""
    values = [eps] if isinstance(eps, (int, float)) and not isinstance(eps, bool) else eps
    if isinstance(values, (str, bytes)) or not isinstance(values, Sequence) or not (values or empty):
        raise MedAdvInputError(f"{what} must be a non-empty list of budgets in [0, 1] (or one budget), got {eps!r}")
    return [check_eps(e, what) for e in values]


def advgan_cells(
    checkpoint: str | None,
    generator: torch.nn.Module,
    masks: Sequence[str],
    modalities: Sequence[str] | None = None,
    device: torch.device | str = "cpu",
) -> list[AttackCell]:
    """The AdvGAN rows of a grid: one cell per mask at the eps the generator was trained for (none without a
    checkpoint).

    Args:
        checkpoint: a ``brats_advgan`` generator checkpoint (``models/generator.pt``), or ``None``.
        generator: the generator network the checkpoint's weights go into (the bundle's ``generator_def``).
        masks: mask names; each gets a cell (the mask scales the generator's budget).
        modalities: the classifier's input channels, checked against the generator's.
        device: where the generator runs.

    Raises:
        MedAdvInputError: an unreadable or unsafe checkpoint, not a generator, or other modalities.
    """
    if not checkpoint:
        return []
    config = load_generator_checkpoint(checkpoint, generator)  # checks it is a generator checkpoint, loads weights
    AdvGANSettings(eps=config["eps"], mask_kind=config.get("mask_kind", "none"),
                   targeted=bool(config.get("targeted", False)), modalities=modalities).check(
        config, source=f"generator checkpoint {str(checkpoint)!r}")  # the classifier's modalities must match
    net = freeze(generator.to(device))
    digest = file_digest(checkpoint)
    return [AttackCell("advgan", "advgan", float(config["eps"]), m, bool(config.get("targeted", False)),
                       {"generator": net}, {"generator": digest}) for m in masks]


def patch_sweep_masks(
    shapes: Sequence[str] = ("rect",),
    sizes: Sequence[float] = (0.05, 0.1, 0.2, 0.3),
    anchors: Sequence[str] = ("centroid",),
    combine: Sequence[str] = ("none",),
    replicates: int = 1,
    tumour_key: str = "mask",
    output_key: str = "attack_mask",
    **patch: Any,
) -> dict[str, Any]:
    """The masks of a patch sweep: one ``AttackMaskd`` per shape x (w, h) in ``sizes`` squared x anchor x combine
    mode x replicate, named by the patch spec (``rect_0.10x0.20_centroid``, ``..._r1`` for further replicates).

    The defaults are the reference sweep's 16 rectangles (relative sizes {0.05, 0.1, 0.2, 0.3} squared) at the
    tumour centroid. Replicates matter for random anchors and jitter: each has its own random stream.
    """
    masks = {}
    for shape, w, h, anchor, mode in itertools.product(shapes, sizes, sizes, anchors, combine):
        spec = PatchSpec(shape=shape, size=(w, h), anchor=anchor, combine=mode, **patch)
        for r in range(replicates):
            name = spec.name + (f"_r{r}" if r else "")
            masks[name] = AttackMaskd(keys=tumour_key, output_key=output_key, kind="patch", patch=spec)
    return masks
