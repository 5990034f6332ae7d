"""MI-FGSM, the momentum iterative fast gradient sign method (Dong et al., 2018), with a per-voxel budget mask."""

from __future__ import annotations

from typing import Any, Callable

import torch

from medadv_monai.attacks._core import LossFn, grad_context, prepare, run_sign_loop
from medadv_monai.attacks.checks import check_alpha, check_decay, check_steps

__all__ = ["mifgsm"]


@grad_context()
def mifgsm(
    model: Callable[[torch.Tensor], Any],
    x: torch.Tensor,
    y: Any,
    *,
    eps: float | torch.Tensor,
    alpha: float | torch.Tensor,
    steps: int,
    decay: float = 1.0,
    targeted: bool = False,
    mask: torch.Tensor | None = None,
    loss_fn: LossFn | None = None,
    early_stop: bool = False,
) -> torch.Tensor:
    r"""BIM with an L1-normalised gradient momentum (as torchattacks ``MIFGSM``).

    Starting from :math:`x' = x` and :math:`g_0 = 0`, repeat ``steps`` times:

    .. math::
        \nabla &= \nabla_{x'} \textstyle\sum_n L_n(f(x'), y) \\
        g_t &= \mu\, g_{t-1} + \nabla / \mathrm{mean}(|\nabla|) \\
        x' &\leftarrow \mathrm{clip}\big(x + \mathrm{clip}(x' + \alpha s\, \mathrm{sign}(g_t) - x,
            -\epsilon m, \epsilon m), 0, 1\big)

    (the mean is per sample over all non-batch dims).

    A sample whose gradient is all zero contributes zero (instead of torchattacks' 0/0 = NaN).

    Args:
        model: maps ``(N, C, *S)`` to ``(N, K)`` logits; used as given (mode kept, no parameter ``.grad``).
        x: inputs in ``[0, 1]``, shape ``(N, C, H, W)`` or ``(N, C, D, H, W)``. Not modified.
        y: labels ``(N,)`` or, when ``targeted``, targets.
        eps: budget in ``[0, 1]``, float or per-sample ``(N,)`` tensor.
        alpha: step size ``> 0``, float or per-sample ``(N,)`` tensor.
        steps: number of iterations ``>= 1``.
        decay: momentum factor :math:`\mu \ge 0` (default 1.0).
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
        >>> x_adv = mifgsm(model, x, y, eps=8 / 255, alpha=2 / 255, steps=10, decay=1.0)  # doctest: +SKIP
        >>> x_ring = mifgsm(model, x, y, eps=8 / 255, alpha=2 / 255, steps=10, mask=ring)  # doctest: +SKIP
    """
    setup = prepare(model, x, y, eps=eps, targeted=targeted, mask=mask, loss_fn=loss_fn,
                    early_stop=early_stop)
    a = check_alpha(alpha, setup.x)
    n = check_steps(steps)
    mu = check_decay(decay)
    return run_sign_loop(setup, setup.x, alpha=a, steps=n, decay=mu)
