"""BIM / I-FGSM, the basic iterative method (Kurakin et al., 2017), with a per-voxel budget mask."""

from __future__ import annotations

from typing import Any, Callable

import torch

from medadv_monai.attacks._core import LossFn, grad_context, prepare, run_sign_loop
from medadv_monai.attacks.checks import check_alpha, check_steps

__all__ = ["bim"]


@grad_context()
def bim(
    model: Callable[[torch.Tensor], Any],
    x: torch.Tensor,
    y: Any,
    *,
    eps: float | torch.Tensor,
    alpha: float | torch.Tensor,
    steps: int,
    targeted: bool = False,
    mask: torch.Tensor | None = None,
    loss_fn: LossFn | None = None,
    early_stop: bool = False,
) -> torch.Tensor:
    r"""Iterated signed-gradient steps projected onto the masked :math:`L_\infty` box.

    Starting from :math:`x' = x`, repeat ``steps`` times:

    .. math::
        x' &\leftarrow x' + \alpha\, s\, \mathrm{sign}(\nabla_{x'} \textstyle\sum_n L_n(f(x'), y)) \\
        d &= \mathrm{clip}(x' - x, -\epsilon m, \epsilon m) \\
        x' &\leftarrow \mathrm{clip}(x + d, 0, 1)

    (computed as one clamp to :math:`[\max(x - \epsilon m, 0), \min(x + \epsilon m, 1)]`, equal up to one
    rounding and exactly ``x`` where ``m == 0``).

    Args:
        model: maps ``(N, C, *S)`` to ``(N, K)`` logits; used as given (mode kept, no parameter ``.grad``).
        x: inputs in ``[0, 1]``, shape ``(N, C, H, W)`` or ``(N, C, D, H, W)``. Not modified.
        y: labels ``(N,)`` or, when ``targeted``, targets.
        eps: budget in ``[0, 1]``, float or per-sample ``(N,)`` tensor.
        alpha: step size ``> 0``, float or per-sample ``(N,)`` tensor.
        steps: number of iterations ``>= 1``.
        targeted: descend the loss towards ``y`` (:math:`s = -1`) instead of ascending it (:math:`s = +1`).
        mask: per-voxel budget weights in ``[0, 1]`` broadcastable to ``x``; ``None`` means all ones.
        loss_fn: optional ``loss_fn(output, y) -> (N,)`` per-sample loss.
        early_stop: stop moving a sample once the model is fooled on it (it keeps the first iterate that fooled
            it): fast robust accuracy, but smaller perturbations than the full run. Needs logits (no ``loss_fn``).

    Returns:
        The adversarial batch, detached, with ``x``'s shape, dtype and device.

    Raises:
        MedAdvInputError: for any invalid argument.

    Example:
        >>> model.eval()  # doctest: +SKIP
        >>> x_adv = bim(model, x, y, eps=8 / 255, alpha=2 / 255, steps=10)  # doctest: +SKIP
        >>> x_t = bim(model, x, 1 - y, eps=8 / 255, alpha=2 / 255, steps=10, targeted=True)  # doctest: +SKIP
    """
    setup = prepare(model, x, y, eps=eps, targeted=targeted, mask=mask, loss_fn=loss_fn,
                    early_stop=early_stop)
    a = check_alpha(alpha, setup.x)
    n = check_steps(steps)
    return run_sign_loop(setup, setup.x, alpha=a, steps=n)
