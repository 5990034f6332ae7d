"""APGD, auto-PGD with a step-size schedule (Croce & Hein, ICML 2020), L-inf, with a per-voxel budget mask.

For ``steps`` iterations :math:`N`, with checkpoints at :math:`\\lceil p_j N \\rceil`, :math:`p_0 = 0`,
:math:`p_1 = 0.22`, :math:`p_{j+1} = p_j + \\max(p_j - p_{j-1} - 0.03, 0.06)`:

.. math::
    z = \\Pi(x_k + \\eta\\, s\\, \\mathrm{sign}(\\nabla L(x_k))), \\qquad
    x_{k+1} = \\Pi(x_k + 0.75 (z - x_k) + 0.25 (x_k - x_{k-1}))

(:math:`x_1 = z`), :math:`\\Pi` the projection onto the masked budget box, :math:`\\eta = 2\\epsilon` at the start.
At a checkpoint a sample's :math:`\\eta` is halved and it restarts from its best point when fewer than
:math:`\\rho = 0.75` of the steps since the last checkpoint increased its loss, or when its :math:`\\eta` and best
loss did not change since the last checkpoint. The result is each sample's best point (highest :math:`sL`).

Losses: ``ce`` (cross-entropy; a single-logit ``(N, 1)`` model runs as the two logits :math:`[0, z]`, on which CE
equals BCE) or ``dlr``, the difference of logits ratio :math:`-(z_y - \\max_{j \\ne y} z_j) / (z_{\\pi_1} -
z_{\\pi_3})` (:math:`\\pi` sorts the logits in decreasing order), which needs :math:`K \\ge 3`; targeted DLR,
:math:`-(z_y - z_t) / (z_{\\pi_1} - (z_{\\pi_3} + z_{\\pi_4}) / 2)` with ``y`` the true labels and ``targets`` the
targets, needs :math:`K \\ge 4`.
"""

from __future__ import annotations

import math
from typing import Any, Callable

import torch
import torch.nn.functional as F

from medadv_monai.attacks._core import LossFn, grad_context, prepare
from medadv_monai.attacks.checks import check_steps
from medadv_monai.attacks.margin import margin, two_logit_model
from medadv_monai.errors import MedAdvInputError

__all__ = ["APGD_LOSSES", "apgd", "apgd_checkpoints", "dlr_loss"]

APGD_LOSSES = ("ce", "dlr")
MOMENTUM = 0.75
RHO = 0.75


def apgd_checkpoints(steps: int) -> list[int]:
    """The iterations at which APGD may halve its step: :math:`\\lceil p_j N \\rceil` for :math:`p_j \\le 1`,
    :math:`j \\ge 1`."""
    p = [0.0, 0.22]
    while p[-1] < 1:
        p.append(p[-1] + max(p[-1] - p[-2] - 0.03, 0.06))
    return sorted({math.ceil(round(q * steps, 9)) for q in p[1:] if q <= 1 + 1e-9})


def dlr_loss(logits: torch.Tensor, y: torch.Tensor, targets: torch.Tensor | None = None) -> torch.Tensor:
    """DLR per sample (``targets``: targeted DLR); see the module docstring. ``(N, K)`` logits, ``(N,)`` labels."""
    k = logits.shape[1]
    need = 3 if targets is None else 4
    if k < need:
        what = "2 (a single-logit model runs as the two logits (0, z))" if k == 2 else str(k)
        raise MedAdvInputError(f"the {'targeted ' if targets is not None else ''}DLR loss needs at least {need} "
                               f"classes, the model has {what}; use loss='ce'")
    srt = logits.sort(dim=1, descending=True).values
    z_y = logits.gather(1, y.reshape(-1, 1))[:, 0]
    if targets is None:
        others = logits.masked_fill(F.one_hot(y, k).bool(), float("-inf")).amax(1)
        return -(z_y - others) / (srt[:, 0] - srt[:, 2] + 1e-12)
    z_t = logits.gather(1, targets.reshape(-1, 1))[:, 0]
    return -(z_y - z_t) / (srt[:, 0] - (srt[:, 2] + srt[:, 3]) / 2 + 1e-12)


@grad_context()
def apgd(
    model: Callable[[torch.Tensor], Any],
    x: torch.Tensor,
    y: Any,
    *,
    eps: float | torch.Tensor,
    steps: int = 100,
    loss: str = "ce",
    targeted: bool = False,
    targets: Any = None,
    mask: torch.Tensor | None = None,
    loss_fn: LossFn | None = None,
    early_stop: bool = False,
) -> torch.Tensor:
    """APGD (module docstring) under the budget :math:`|x' - x| \\le \\epsilon m`; deterministic (no random start).

    Args:
        model: ``(N, C, *S) -> (N, K)`` logits (``K = 1``: one logit); used as given (mode kept, no parameter
            ``.grad``).
        x: inputs in ``[0, 1]``, ``(N, C, H, W)`` or ``(N, C, D, H, W)``. Not modified.
        y: labels ``(N,)``; with ``targeted`` and ``loss="ce"``, the targets.
        eps: budget in ``[0, 1]``, float or per-sample ``(N,)``.
        steps: iterations ``>= 1``.
        loss: ``"ce"`` or ``"dlr"`` (``K >= 3``; targeted ``K >= 4`` with ``targets``).
        targeted: descend towards ``y`` (CE) or, with DLR, towards ``targets``.
        targets: the targets of targeted DLR (``y`` then holds the true labels).
        mask: per-voxel budget weights in ``[0, 1]`` broadcastable to ``x``.
        loss_fn: a per-sample loss ``(output, y) -> (N,)`` replacing ``loss``.
        early_stop: stop moving a sample once the model is fooled on it (fast robust accuracy; smaller
            perturbations than the full run). Needs logits (no ``loss_fn``).

    Returns:
        Per sample, the highest-loss iterate among those that fooled the model, or the highest-loss iterate when
        none did (with ``loss_fn``, where fooling cannot be told, always the highest-loss iterate). A loss may
        peak past the point where the decision flips back (DLR, a targeted loss on another class): this keeps a
        success found on the way.

    Raises:
        MedAdvInputError: a bad argument, or DLR on a model with too few classes.

    Example:
        >>> model.eval()  # doctest: +SKIP
        >>> x_adv = apgd(model, x, y, eps=8 / 255, steps=100)  # doctest: +SKIP
        >>> x_fast = apgd(model, x, y, eps=8 / 255, steps=100, early_stop=True)  # doctest: +SKIP
    """
    if loss not in APGD_LOSSES:
        raise MedAdvInputError(f"loss must be one of {list(APGD_LOSSES)}, got {loss!r}")
    n_steps = check_steps(steps)
    dlr_targeted = loss == "dlr" and targeted
    if dlr_targeted and targets is None:
        raise MedAdvInputError("targeted DLR needs targets (y holds the true labels)")
    if targets is not None and not dlr_targeted:
        raise MedAdvInputError("targets are for targeted DLR (loss='dlr', targeted=True); with loss='ce' and "
                               "targeted=True, y holds the targets")
    # targeted DLR is maximised (it rises as z_t overtakes z_y), so it runs as an ascent
    setup = prepare(two_logit_model(model), x, y, eps=eps, targeted=targeted and not dlr_targeted, mask=mask,
                    loss_fn=loss_fn, early_stop=early_stop)
    objective = setup.objective
    t = None if targets is None else _check_targets(targets, setup.x)
    if loss == "dlr" and loss_fn is None:
        objective.use_loss(lambda out, labels: dlr_loss(out, labels, t))
    sign = setup.sign
    n = setup.x.shape[0]
    view = (n,) + (1,) * (setup.x.ndim - 1)
    budget = torch.as_tensor(setup.budget, dtype=setup.x.dtype, device=setup.x.device).expand(setup.x.shape)
    eta = 2.0 * budget.amax(dim=tuple(range(1, setup.x.ndim)), keepdim=True)  # per sample: 2 eps (its largest m)

    def project(t: torch.Tensor) -> torch.Tensor:
        return torch.clamp(t, setup.lo, setup.hi)

    x_k = setup.x.clone()
    g, l_k, out = objective.evaluate(x_k)
    if t is not None:  # once, outside the loop: the class count is known now
        k, bad = out.shape[1], (t < 0) | (t >= out.shape[1]) | (t == objective.y.reshape(-1))
        if bool(bad.any()):
            i = int(bad.nonzero()[0, 0])
            raise MedAdvInputError(f"targets must be class ids in [0, {k - 1}] that differ from the true labels y, "
                                   f"got target {int(t[i])} for sample {i} (label {int(objective.y.reshape(-1)[i])})")
    l_k = sign * l_k
    x_best, l_best, g_best = x_k.clone(), l_k.clone(), g
    # the best fooling iterate (judged on the model's decision, so only without loss_fn)
    judge = None
    if loss_fn is None:  # targeted DLR: y holds the true labels, success is the target's win
        judge = (lambda o: margin(o, t, True) < 0) if dlr_targeted else (lambda o: objective.fooled(o, bool(targeted)))
    l_fooled = torch.full_like(l_k, float("-inf"))
    x_fooled, l_fooled = _keep_fooled(judge, out, x_k, l_k, x_k.clone(), l_fooled)
    x_prev = x_k
    checkpoints = apgd_checkpoints(n_steps)
    last_check, increases = 0, torch.zeros(n, device=setup.x.device)
    eta_at_check, best_at_check = eta.clone(), l_best.clone()
    for k in range(n_steps):
        with torch.no_grad():
            z = project(x_k + eta * sign * torch.sign(g))
            x_next = z if k == 0 else project(x_k + MOMENTUM * (z - x_k) + (1 - MOMENTUM) * (x_k - x_prev))
            if setup.early_stop:  # a sample fooled at x_k stays there
                x_next = torch.where(torch.isfinite(l_fooled).view(view), x_k, x_next)
        g_next, l_next, out = objective.evaluate(x_next)
        l_next = sign * l_next
        with torch.no_grad():
            x_fooled, l_fooled = _keep_fooled(judge, out, x_next, l_next, x_fooled, l_fooled)
            increases += (l_next > l_k).float()
            better = l_next > l_best
            x_best = torch.where(better.view(view), x_next, x_best)
            g_best = torch.where(better.view(view), g_next, g_best)
            l_best = torch.where(better, l_next, l_best)
            x_prev, x_k, g, l_k = x_k, x_next, g_next, l_next
            if k + 1 in checkpoints:
                window = k + 1 - last_check
                few = increases < RHO * window
                # as the paper states it (torchattacks instead never counts the first checkpoint as "stuck")
                stuck = (eta == eta_at_check).view(-1) & (l_best == best_at_check)
                halve = few | stuck
                eta = torch.where(halve.view(view), eta / 2, eta)
                x_k = torch.where(halve.view(view), x_best, x_k)
                g = torch.where(halve.view(view), g_best, g)
                l_k = torch.where(halve, l_best, l_k)
                last_check, increases = k + 1, torch.zeros_like(increases)
                eta_at_check, best_at_check = eta.clone(), l_best.clone()
    return torch.where(torch.isfinite(l_fooled).view(view), x_fooled, x_best).detach()


def _check_targets(targets: Any, x: torch.Tensor) -> torch.Tensor:
    """Targets of targeted DLR as ``(N,)`` long class ids (their range is checked against the model's output)."""
    n = x.shape[0]
    t = torch.as_tensor(targets)
    if t.numel() != n or t.is_complex() or t.dtype == torch.bool:
        raise MedAdvInputError(f"targets must be {n} integer class ids (one per sample), got shape {tuple(t.shape)} "
                               f"and dtype {t.dtype}")
    t = t.reshape(n).to(x.device)
    if t.is_floating_point() and bool((t != t.round()).any()):
        raise MedAdvInputError("targets must be integer class ids, got non-integer values")
    return t.long()


def _keep_fooled(judge: Callable[[Any], torch.Tensor] | None, out: Any, x: torch.Tensor, loss: torch.Tensor,
                 x_fooled: torch.Tensor, l_fooled: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Keep ``x`` for the samples it fools at a higher loss than their kept fooling point (none without ``judge``)."""
    if judge is None:
        return x_fooled, l_fooled
    take = judge(out) & (loss > l_fooled)
    view = (-1,) + (1,) * (x.ndim - 1)
    return torch.where(take.view(view), x, x_fooled), torch.where(take, loss, l_fooled)
