"""FGSM, the fast gradient sign method (Goodfellow et al., 2015), with a per-voxel budget mask."""

from __future__ import annotations

from typing import Any, Callable

import torch

from medadv_monai.attacks._core import LossFn, grad_context, prepare

__all__ = ["fgsm"]


@grad_context()
def fgsm(
    model: Callable[[torch.Tensor], Any],
    x: torch.Tensor,
    y: Any,
    *,
    eps: float | torch.Tensor,
    targeted: bool = False,
    mask: torch.Tensor | None = None,
    loss_fn: LossFn | None = None,
) -> torch.Tensor:
    r"""One signed-gradient step of size :math:`\epsilon m`.

    .. math::
        x' = \mathrm{clip}\big(x + \epsilon\, m\, s\, \mathrm{sign}(\nabla_x \textstyle\sum_n L_n(f(x), y)),\ 0,\ 1\big)

    with :math:`s = +1` (untargeted) or :math:`-1` (targeted; ``y`` holds the targets).

    Args:
        model: maps ``(N, C, *S)`` to ``(N, K)`` logits (``K >= 2``: cross-entropy; ``K == 1``: BCE-with-logits).
            Used as given: its train/eval mode is kept and its parameters get no ``.grad``.
        x: inputs in ``[0, 1]``, shape ``(N, C, H, W)`` or ``(N, C, D, H, W)``. Not modified.
        y: labels ``(N,)`` (class ids, or 0/1 for a single logit; ``(N, 1)`` also accepted), or targets.
        eps: budget in ``[0, 1]``, a float or a per-sample ``(N,)`` tensor.
        targeted: descend the loss towards ``y`` instead of ascending it.
        mask: per-voxel budget weights in ``[0, 1]`` broadcastable to ``x``; ``None`` means all ones.
            Where ``mask == 0`` the output equals ``x`` bit for bit.
        loss_fn: optional ``loss_fn(output, y) -> (N,)`` per-sample loss replacing the default.

    Returns:
        The adversarial batch, detached, with ``x``'s shape, dtype and device.

    Raises:
        MedAdvInputError: for invalid ``x``, ``y``, ``eps``, ``mask`` or model output.

    Example:
        >>> model.eval()  # doctest: +SKIP
        >>> x_adv = fgsm(model, x, y, eps=4 / 255, mask=tumour_mask)  # doctest: +SKIP
        >>> (x_adv - x).abs().max() <= 4 / 255  # doctest: +SKIP
    """
    setup = prepare(model, x, y, eps=eps, targeted=targeted, mask=mask, loss_fn=loss_fn)
    g = setup.objective(setup.x)
    with torch.no_grad():
        step = g.sign_().mul_(setup.budget * setup.sign)
        return torch.clamp(setup.x + step, 0.0, 1.0)
