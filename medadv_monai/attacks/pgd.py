"""PGD, projected gradient descent with a random start (Madry et al., 2018), with a per-voxel budget mask."""

from __future__ import annotations

from typing import Any, Callable

import torch

from medadv_monai.attacks._core import LossFn, grad_context, prepare, project_delta_start, run_sign_loop
from medadv_monai.attacks._core import random_start as _random_start
from medadv_monai.attacks.checks import check_alpha, check_steps

__all__ = ["pgd"]


@grad_context()
def pgd(
    model: Callable[[torch.Tensor], Any],
    x: torch.Tensor,
    y: Any,
    *,
    eps: float | torch.Tensor,
    alpha: float | torch.Tensor,
    steps: int,
    random_start: bool = True,
    generator: torch.Generator | None = None,
    init_delta: torch.Tensor | None = None,
    targeted: bool = False,
    mask: torch.Tensor | None = None,
    loss_fn: LossFn | None = None,
) -> torch.Tensor:
    r""":func:`~medadv_monai.attacks.bim.bim` from a start inside the masked budget box.

    Start:

    .. math::
        d_0 \sim U(-\epsilon, \epsilon) \cdot m, \qquad x_0 = \mathrm{clip}(x + d_0, 0, 1)

    or, with ``init_delta`` :math:`\delta`, :math:`x_0 = \mathrm{clip}(x + \mathrm{clip}(\delta, -\epsilon m,
    \epsilon m), 0, 1)`. Then ``steps`` times :math:`x' \leftarrow \mathrm{clip}(x + \mathrm{clip}(x' + \alpha s\,
    \mathrm{sign}(\nabla L) - x, -\epsilon m, \epsilon m), 0, 1)`.

    Args:
        model: maps ``(N, C, *S)`` to ``(N, K)`` logits; used as given (mode kept, no parameter ``.grad``).
        x: inputs in ``[0, 1]``, shape ``(N, C, H, W)`` or ``(N, C, D, H, W)``. Not modified.
        y: labels ``(N,)`` or, when ``targeted``, targets.
        eps: budget in ``[0, 1]``, float or per-sample ``(N,)`` tensor.
        alpha: step size ``> 0``, float or per-sample ``(N,)`` tensor.
        steps: number of iterations ``>= 1``.
        random_start: draw :math:`d_0` uniformly; ``False`` starts at ``x`` (then this is BIM).
        generator: ``torch.Generator`` for the random start (may live on another device than ``x``).
        init_delta: explicit start perturbation broadcastable to ``x``; takes precedence over ``random_start``.
            It is projected into the budget box and clipped to ``[0, 1]`` like the random start.
        targeted: descend the loss towards ``y`` (:math:`s = -1`) instead of ascending it (:math:`s = +1`).
        mask: per-voxel budget weights in ``[0, 1]`` broadcastable to ``x``; ``None`` means all ones.
        loss_fn: optional ``loss_fn(output, y) -> (N,)`` per-sample loss.

    Returns:
        The adversarial batch, detached, with ``x``'s shape, dtype and device.

    Raises:
        MedAdvInputError: for any invalid argument.
    """
    setup = prepare(model, x, y, eps=eps, targeted=targeted, mask=mask, loss_fn=loss_fn)
    a = check_alpha(alpha, setup.x)
    n = check_steps(steps)
    if init_delta is not None:
        x0 = project_delta_start(setup, init_delta)
    elif random_start:
        x0 = _random_start(setup, generator)
    else:
        x0 = setup.x
    return run_sign_loop(setup, x0, alpha=a, steps=n)

