"""Carlini-Wagner L2 (Carlini & Wagner, IEEE S&P 2017) with a per-voxel budget mask and an optional L-inf cap.

Per sample :math:`n`, for a constant :math:`c_n > 0`, CW-L2 solves

.. math::
    \\min_{x'} \\ \\lVert x' - x \\rVert_2^2 + c_n\\, \\max(g(x'), -\\kappa), \\qquad
    g = z_y - \\max_{j \\ne y} z_j \\ \\text{(untargeted)}, \\quad g = \\max_{j \\ne t} z_j - z_t \\ \\text{(targeted)}

(:func:`~medadv_monai.attacks.margin.margin`; a single-logit ``(N, 1)`` model runs as the two logits :math:`(0, z)`),
by ``steps`` Adam steps (:math:`\\beta = (0.9, 0.999)`, ``lr``) on an unconstrained variable :math:`w`, with a binary
search over :math:`c_n` in ``binary_steps`` rounds. Each round restarts Adam from the clean start :math:`w_0`.

**Change of variables.** With the feasible box of :func:`~medadv_monai.attacks._core.prepare`,
:math:`lo = \\max(x - \\epsilon m, 0)`, :math:`hi = \\min(x + \\epsilon m, 1)` (``eps = 1`` means no L-inf cap),

.. math::
    x' = lo + (hi - lo)\\, u(w), \\qquad u(w) = \\tfrac{1}{2}(1 - \\cos w) \\in [0, 1],

started at :math:`w_0 = \\arccos(1 - 2 u_0)`, :math:`u_0 = \\mathrm{clip}((x - lo) / (hi - lo), 10^{-6}, 1 - 10^{-6})`,
so the start is within :math:`10^{-6} (hi - lo)` of :math:`x` (plus a rounding). Thus :math:`x'` is always in
:math:`[0, 1]` and in the box, and where :math:`m = 0` (:math:`lo = hi = x`), :math:`x' = x` bit for bit.

Why not the paper's :math:`u = (\\tanh w + 1) / 2` (torchattacks, ART): a voxel at exactly 0 or 1 (all of an MRI's
background, and every voxel whose eps-box touches 0 or 1) starts at :math:`w = \\mp\\infty` and can never move.
Shrinking the start to :math:`[10^{-6}, 1 - 10^{-6}]` does not help in practice: :math:`w_0 = \\pm 7.25`, where
:math:`u'(w) \\approx 2 \\cdot 10^{-6}`; Adam moves :math:`w` by about ``lr`` per step whatever the gradient's scale, so
the voxel needs some 600 steps at ``lr = 0.01`` before :math:`u` changes by 0.1 (frozen in practice). With the cosine
map the boundary is at a finite :math:`w` (0 or :math:`\\pi`), the start is :math:`w_0 \\approx 2 \\cdot 10^{-3}` from
it, and :math:`u(w_0 + k \\cdot lr) \\approx (k \\cdot lr)^2 / 4`: the voxel moves by 0.06 of its box within 50 steps.
The derivative :math:`u' = \\tfrac{1}{2} \\sin w` is bounded, and :math:`u` is smooth and onto :math:`[0, 1]`
(periodic: a :math:`w` past a bound folds back into the box instead of sticking to it). In the interior both maps
behave alike. (tests/test_cw.py: on a model that needs background voxels to move, this attack succeeds where
torchattacks' CW cannot.)

**Success and the binary search.** A step succeeds for sample :math:`n` when :math:`g < -\\kappa` at its current
:math:`x'`, as the original code's ``compare()`` judges it (the argmax of the logits with :math:`z_y` raised by
:math:`\\kappa` is not :math:`y`; targeted: with :math:`z_t` lowered by :math:`\\kappa` it is :math:`t`): with
:math:`\\kappa = 0` the decision flipped, with :math:`\\kappa > 0` it flipped with a margin of :math:`\\kappa` logits.
After a round in which sample :math:`n` succeeded at least once, :math:`\\mathrm{up}_n \\leftarrow \\min(\\mathrm{up}_n,
c_n)` and :math:`c_n \\leftarrow (\\mathrm{lo}_n + \\mathrm{up}_n) / 2`; otherwise :math:`\\mathrm{lo}_n \\leftarrow
\\max(\\mathrm{lo}_n, c_n)` and :math:`c_n \\leftarrow 10 c_n` while no upper bound is known, else the midpoint
(:math:`c_n = c` at the start, :math:`\\mathrm{lo}_n = 0`, :math:`\\mathrm{up}_n = \\infty`). The result is, per sample,
the successful :math:`x'` with the smallest :math:`\\lVert x' - x \\rVert_2` over all rounds and steps; **a sample that
never succeeded is returned as** :math:`x` **unchanged** (as the original code does; compare the result's decision with
the label to tell them apart).

With ``loss_fn(output, y) -> (N,)``, it replaces :math:`\\max(g, -\\kappa)` (``kappa`` is then unused), it sees the
model's raw output, and a step succeeds when ``loss_fn <= 0``.

Differences from the original: no early abort (it would couple a batch's samples, or save nothing when vectorised)
and no final repeat at the upper bound. Everything is per sample (Adam is element-wise, the loss a per-sample sum, the
search per sample), so a sample's result does not depend on its batch-mates; no host sync happens in the loop.
"""

from __future__ import annotations

import math
from typing import Any, Callable

import torch

from medadv_monai.attacks._core import LossFn, grad_context, prepare
from medadv_monai.attacks.checks import check_steps
from medadv_monai.attacks.margin import margin
from medadv_monai.utils.checks import check_int, check_nonneg, check_positive

__all__ = ["cw_l2"]

BETA1, BETA2, ADAM_EPS = 0.9, 0.999, 1e-8
START_CLIP = 1e-6  # the start u0 stays this far from the box bounds, so the gradient there is non-zero


@grad_context()
def cw_l2(
    model: Callable[[torch.Tensor], Any],
    x: torch.Tensor,
    y: Any,
    *,
    eps: float | torch.Tensor = 1.0,
    c: float = 1e-2,
    kappa: float = 0.0,
    steps: int = 100,
    lr: float = 0.01,
    binary_steps: int = 9,
    targeted: bool = False,
    mask: torch.Tensor | None = None,
    loss_fn: LossFn | None = None,
) -> torch.Tensor:
    """Carlini-Wagner L2 (module docstring) inside the box :math:`|x' - x| \\le \\epsilon m`, :math:`x' \\in [0, 1]`.

    Deterministic. Costs ``binary_steps * steps`` forward and backward passes.

    Args:
        model: ``(N, C, *S) -> (N, K)`` logits (``K = 1``: one logit, run as :math:`(0, z)`); used as given (mode
            kept, no parameter ``.grad``, ``requires_grad`` flags unchanged).
        x: inputs in ``[0, 1]``, ``(N, C, H, W)`` or ``(N, C, D, H, W)``. Not modified.
        y: labels ``(N,)`` (0/1 for a single logit); with ``targeted``, the targets.
        eps: an optional L-inf cap in ``[0, 1]``, float or per-sample ``(N,)``; ``1`` (default) is no cap.
        c: the starting constant :math:`c > 0` of every sample's binary search.
        kappa: the confidence :math:`\\kappa \\ge 0`: success needs :math:`g < -\\kappa`.
        steps: Adam steps per binary-search round, ``>= 1``.
        lr: Adam's learning rate on :math:`w`, ``> 0``.
        binary_steps: binary-search rounds, ``>= 1``.
        targeted: make the model predict ``y`` instead of moving it away from ``y``.
        mask: per-voxel budget weights in ``[0, 1]`` broadcastable to ``x``; voxels with ``m == 0`` never change.
        loss_fn: ``(output, y) -> (N,)`` replacing :math:`\\max(g, -\\kappa)`; success when it is ``<= 0``.

    Returns:
        The adversarial batch (detached, same shape, dtype and device as ``x``): per sample the successful point of
        smallest L2 distance, or ``x`` itself for a sample that never succeeded.

    Raises:
        MedAdvInputError: a bad argument (the message names it and what was expected).

    Example:
        >>> model.eval()  # doctest: +SKIP
        >>> x_adv = cw_l2(model, x, y, steps=100, binary_steps=9)  # doctest: +SKIP
        >>> l2 = (x_adv - x).flatten(1).norm(dim=1)  # 0 where the attack failed  # doctest: +SKIP
    """
    n_steps = check_steps(steps)
    n_rounds = check_int(binary_steps, "binary_steps", 1)
    c0 = check_positive(c, "c")
    kap = check_nonneg(kappa, "kappa")
    rate = check_positive(lr, "lr")
    setup = prepare(model, x, y, eps=eps, targeted=targeted, mask=mask, loss_fn=loss_fn)
    tgt = bool(targeted)  # validated by prepare()
    objective = setup.objective
    if loss_fn is None:
        objective.use_loss(lambda out, labels: margin(out, labels, tgt).clamp_min(-kap))

    x0, lo, hi = setup.x, setup.lo, setup.hi
    n, dev, dt = x0.shape[0], x0.device, x0.dtype
    view = (n,) + (1,) * (x0.ndim - 1)
    dims = tuple(range(1, x0.ndim))
    with torch.no_grad():
        half = (hi - lo).mul_(0.5)  # x' = mid - half cos(w): lo + (hi - lo)(1 - cos w) / 2
        mid = lo + half  # where m == 0: half == 0 and mid == lo == x, so x' == x exactly
        u0 = torch.where(half > 0, (x0 - lo) / (2 * half).clamp_min(torch.finfo(dt).tiny), 0.5)
        w0 = torch.acos(u0.clamp_(START_CLIP, 1 - START_CLIP).mul_(-2.0).add_(1.0))

        cdt = torch.float64 if dt == torch.float64 else torch.float32
        const = torch.full((n,), c0, dtype=cdt, device=dev)
        lower = torch.zeros_like(const)
        upper = torch.full_like(const, math.inf)
        best_l2 = torch.full((n,), math.inf, dtype=cdt, device=dev)
        best = x0.clone()

    for _ in range(n_rounds):
        c_x = const.to(dt).view(view)
        w = w0.clone()
        m1 = torch.zeros_like(w)
        m2 = torch.zeros_like(w)
        hit = torch.zeros(n, dtype=torch.bool, device=dev)
        for t in range(1, n_steps + 1):
            with torch.no_grad():
                xa = torch.addcmul(mid, half, torch.cos(w), value=-1.0).clamp_(lo, hi)
            g_x, loss, out = objective.evaluate(xa)  # d/dx' sum_n f_n, f_n (N,), the model output
            with torch.no_grad():
                d = xa - x0
                l2 = (d * d).sum(dim=dims).to(cdt)
                ok = loss <= 0 if loss_fn is not None else margin(out, objective.y, tgt) < -kap
                hit |= ok
                better = ok & (l2 < best_l2)
                best_l2 = torch.where(better, l2, best_l2)
                best = torch.where(better.view(view), xa, best)
                # dE/dw = (2 (x' - x) + c df/dx') * half * sin(w), E the per-sample objective
                grad = d.mul_(2.0).addcmul_(g_x, c_x).mul_(half).mul_(torch.sin(w))
                m1.lerp_(grad, 1 - BETA1)
                m2.mul_(BETA2).addcmul_(grad, grad, value=1 - BETA2)
                denom = m2.sqrt().div_(math.sqrt(1 - BETA2**t)).add_(ADAM_EPS)
                w.addcdiv_(m1, denom, value=-rate / (1 - BETA1**t))
        with torch.no_grad():
            upper = torch.where(hit, torch.minimum(upper, const), upper)
            lower = torch.where(hit, lower, torch.maximum(lower, const))
            bounded = torch.isfinite(upper)
            const = torch.where(bounded, (lower + upper) / 2, const * 10)
    return best.detach()
