"""An AutoAttack-style ensemble: APGD-CE, then APGD-T (``K >= 4``), then Square, each on the still-robust samples.

This is *not* the standard AutoAttack of Croce & Hein (ICML 2020), which runs APGD-CE, APGD-T (9 target classes),
FAB-T and Square (5,000 queries) with its own fixed settings; it is an ensemble in its spirit, under this project's
conventions (per-voxel budget masks, single-logit models, per-sample ``eps``):

1. APGD with the cross-entropy loss (:func:`~medadv_monai.attacks.apgd.apgd`, ``steps`` iterations) on every
   sample the model classifies correctly;
2. where the model has ``K >= 4`` classes, APGD with the targeted DLR loss towards each of the ``n_targets``
   most likely wrong classes in turn (by the clean logits), on the samples still robust;
3. Square (:func:`~medadv_monai.attacks.square.square`, ``queries`` queries) on the samples still robust.

A sample leaves the ensemble as soon as a member fools it, with that member's point; a sample that nobody fools is
returned unchanged (as AutoAttack does), and so is one the model misclassifies already. Targeted
(``targeted=True``, ``y`` the targets): APGD-CE towards the targets, then Square towards them; APGD-T is skipped.
:func:`run_autoattack` also reports the robust accuracy after each member.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable

import torch

from medadv_monai.attacks._core import grad_context, prepare
from medadv_monai.attacks.apgd import apgd
from medadv_monai.attacks.checks import check_generator, check_steps
from medadv_monai.attacks.margin import as_two_logits, margin, two_logit_model
from medadv_monai.attacks.square import square
from medadv_monai.utils.checks import check_int

__all__ = ["AutoAttackResult", "autoattack", "run_autoattack"]


@dataclass
class AutoAttackResult:
    """What :func:`run_autoattack` found.

    Attributes:
        x_adv: the adversarial batch (detached).
        robust_accuracy: member name -> fraction of all samples still classified correctly (untargeted) or not
            yet at their target (targeted) after that member, in run order, starting with ``"clean"``.
        fooled_by: per sample, the member that fooled it (``"clean"``: already wrong on clean input; ``""``: none).
    """

    x_adv: torch.Tensor
    robust_accuracy: dict[str, float] = field(default_factory=dict)
    fooled_by: list[str] = field(default_factory=list)


def _rows(value: Any, idx: torch.Tensor, n: int) -> Any:
    """Rows ``idx`` of a per-sample value (a tensor or array whose first dim is ``n > 1``); shared values (floats,
    ``(1, ...)`` masks) as they are."""
    if value is None or isinstance(value, (int, float)):
        return value
    t = torch.as_tensor(value)
    return t[idx.to(t.device)] if t.ndim > 0 and t.shape[0] == n and n > 1 else t


@grad_context()
def run_autoattack(
    model: Callable[[torch.Tensor], Any],
    x: torch.Tensor,
    y: Any,
    *,
    eps: float | torch.Tensor,
    steps: int = 100,
    n_targets: int = 9,
    queries: int = 5000,
    targeted: bool = False,
    mask: torch.Tensor | None = None,
    generator: torch.Generator | None = None,
) -> AutoAttackResult:
    """The ensemble of the module docstring, with the robust accuracy after each member.

    Args:
        model: ``(N, C, *S) -> (N, K)`` logits (``K = 1``: a single logit, run as :math:`(0, z)`); used as given.
        x: inputs in ``[0, 1]``, ``(N, C, H, W)`` or ``(N, C, D, H, W)``. Not modified.
        y: labels ``(N,)``; with ``targeted``, the targets.
        eps: budget in ``[0, 1]``, float or per-sample ``(N,)``.
        steps: APGD iterations per run (AutoAttack: 100).
        n_targets: target classes of APGD-T (AutoAttack: 9; at most ``K - 1``).
        queries: Square's query budget (AutoAttack: 5,000).
        targeted: towards ``y`` instead of away from it.
        mask: per-voxel budget weights in ``[0, 1]`` broadcastable to ``x``.
        generator: the ``torch.Generator`` of Square's random draws.

    Raises:
        MedAdvInputError: a bad argument (checked before any member runs).

    Example:
        >>> g = torch.Generator().manual_seed(0)  # doctest: +SKIP
        >>> result = run_autoattack(model, x, y, eps=8 / 255, generator=g)  # doctest: +SKIP
        >>> result.robust_accuracy  # {"clean": ..., "apgd-ce": ..., "square": ...}  # doctest: +SKIP
    """
    n_steps, n_queries = check_steps(steps), check_int(queries, "queries", 1)
    n_tgt = check_int(n_targets, "n_targets", 1)
    check_generator(generator)  # Square's, checked before any member runs
    setup = prepare(two_logit_model(model), x, y, eps=eps, targeted=targeted, mask=mask, loss_fn=None)
    x, n, objective = setup.x, setup.x.shape[0], setup.objective
    logits = objective.output(x)  # checks the output and labels as every attack does
    labels = objective.y.reshape(n).long()
    x_adv = x.clone()
    robust = ~objective.fooled(logits, bool(targeted))
    fooled_by = ["" if r else "clean" for r in robust.tolist()]
    accuracy = {"clean": robust.float().mean().item()}

    def run(member: str, attack: Callable[[torch.Tensor], torch.Tensor]) -> None:
        """Attack the still-robust samples ``idx`` with ``attack(idx)``; keep those it fools."""
        nonlocal robust
        idx = torch.nonzero(robust).reshape(-1)
        if len(idx):
            sub = attack(idx)
            with torch.no_grad():
                fooled = margin(as_two_logits(model(sub)), labels[idx], bool(targeted)) < 0
            x_adv[idx[fooled]] = sub[fooled]
            robust = robust.clone()
            robust[idx[fooled]] = False
            for i in idx[fooled].tolist():
                fooled_by[i] = member
        accuracy[member] = robust.float().mean().item()

    def common(idx: torch.Tensor) -> dict[str, Any]:
        return {"eps": _rows(eps, idx, n), "mask": _rows(mask, idx, n)}

    run("apgd-ce", lambda idx: apgd(model, x[idx], labels[idx], steps=n_steps, targeted=bool(targeted), **common(idx)))
    k = logits.shape[1]
    if not targeted and k >= 4:
        # the classes by clean logit, most likely first, with the true class moved last
        order = logits.scatter(1, labels[:, None], float("-inf")).argsort(dim=1, descending=True)
        for j in range(min(n_tgt, k - 1)):
            run("apgd-t", lambda idx, j=j: apgd(model, x[idx], labels[idx], steps=n_steps, loss="dlr", targeted=True,
                                                targets=order[idx, j], **common(idx)))
    run("square", lambda idx: square(model, x[idx], labels[idx], queries=n_queries, targeted=bool(targeted),
                                     generator=generator, **common(idx)))
    return AutoAttackResult(x_adv.detach(), accuracy, fooled_by)


def autoattack(
    model: Callable[[torch.Tensor], Any],
    x: torch.Tensor,
    y: Any,
    *,
    eps: float | torch.Tensor,
    steps: int = 100,
    n_targets: int = 9,
    queries: int = 5000,
    targeted: bool = False,
    mask: torch.Tensor | None = None,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """The AutoAttack-style ensemble's adversarial batch (:func:`run_autoattack`; module docstring)."""
    return run_autoattack(model, x, y, eps=eps, steps=steps, n_targets=n_targets, queries=queries, targeted=targeted,
                          mask=mask, generator=generator).x_adv

