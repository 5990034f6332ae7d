"""MedIS: I-FGSM on several surrogate segmentation losses, per image the one that succeeds in the fewest steps.

For each surrogate loss (the dense losses of :func:`medadv_monai.losses.medis_losses`) an I-FGSM run of at most
``steps`` signed steps of ``alpha`` inside the masked :math:`L_\\infty` box; after every step the image is judged
(:func:`~medadv_monai.metrics.segmentation.seg_success` on the first region channel, WT by default: untargeted
IoU(prediction, ground truth) <= 0.5, targeted IoU(prediction, target) >= 0.45) and a successful image stops moving.
Parallel fusion keeps, per image, the successful loss with the fewest steps; ties go to the lower IoU with the
ground truth (untargeted) or the higher IoU with the target (targeted). An image no loss fools keeps the loss that
came closest (the same IoU order).

Step counts are the number of gradient steps taken: the clean image is step 0 (an image already judged a success
before any step counts 0 steps). The published reference code scores the clean image as step 1, so its step
counts are one higher and an image fooled by the last step is never counted; this implementation does not.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Callable

import torch

from medadv_monai.attacks._core import LossFn, grad_context, prepare, step_project
from medadv_monai.attacks.checks import check_alpha, check_steps
from medadv_monai.errors import MedAdvInputError
from medadv_monai.metrics.segmentation import hard_masks, region_iou, seg_success

__all__ = ["MedISResult", "medis"]


@dataclass
class MedISResult:
    """What :func:`medis` found.

    Attributes:
        x_adv: the fused adversarial batch (each image from its chosen loss).
        losses: the surrogate names, in the order of the rows below.
        steps: ``(L, N)`` steps to success per loss and image, -1 where the loss did not succeed.
        iou: ``(L, N)`` IoU of the first region channel with the ground truth (untargeted) or the target (targeted)
            where each loss's run stopped.
        chosen: ``(N,)`` index of the fused loss per image.
        success: ``(N,)`` whether the fused result succeeds (some loss succeeded).
        fused_steps: ``(N,)`` steps of the chosen loss, -1 where none succeeded.
    """

    x_adv: torch.Tensor
    losses: tuple[str, ...]
    steps: torch.Tensor
    iou: torch.Tensor
    chosen: torch.Tensor
    success: torch.Tensor
    fused_steps: torch.Tensor


def _check_masks(y: Any, x: torch.Tensor, what: str) -> torch.Tensor:
    if not isinstance(y, torch.Tensor) or y.ndim != x.ndim or y.shape[0] != x.shape[0] or y.shape[2:] != x.shape[2:]:
        shape = tuple(y.shape) if isinstance(y, torch.Tensor) else type(y).__name__
        raise MedAdvInputError(f"{what} must be region masks (N, R, *spatial) = ({x.shape[0]}, R, "
                               f"{', '.join(map(str, x.shape[2:]))}) with values 0 or 1, got {shape}")
    y = y.detach().to(device=x.device, dtype=x.dtype)
    if not bool(((y == 0) | (y == 1)).all()):
        raise MedAdvInputError(f"{what} must hold only 0 and 1 (hard region masks)")
    return y


@grad_context()
def medis(
    model: Callable[[torch.Tensor], torch.Tensor],
    x: torch.Tensor,
    y: torch.Tensor,
    *,
    eps: float | torch.Tensor,
    losses: Mapping[str, LossFn],
    alpha: float = 1 / 255,
    steps: int = 10,
    targeted: bool = False,
    mask: torch.Tensor | None = None,
) -> MedISResult:
    """MedIS parallel fusion of I-FGSM runs on surrogate losses (see the module docstring).

    Args:
        model: maps ``(N, C, *S)`` to multi-label region logits ``(N, R, *S)``; used as given.
        x: inputs in ``[0, 1]``, ``(N, C, H, W)`` or ``(N, C, D, H, W)``. Not modified.
        y: ground-truth region masks ``(N, R, *S)`` or, when ``targeted``, the target masks.
        eps: L-inf budget in ``[0, 1]`` (float or per-sample tensor).
        losses: name -> per-sample loss ``(logits, masks) -> (N,)``; the MedIS set is
            :func:`medadv_monai.losses.medis_losses` (BCE, soft Dice, log-cosh Dice, BCE + Dice, Lovasz hinge and
            their weighted sum).
        alpha: I-FGSM step (default 1/255).
        steps: at most this many steps per loss (default 10).
        targeted: move the prediction towards ``y`` instead of away from it.
        mask: per-voxel budget weights in ``[0, 1]`` broadcastable to ``x``.

    Returns:
        A :class:`MedISResult`.

    Example:
        >>> res = medis(seg_net, x, gt_masks, eps=8 / 255, losses=medis_losses())  # doctest: +SKIP
        >>> res.success.float().mean(), res.fused_steps  # doctest: +SKIP
        >>> gone = medis(seg_net, x, 0 * gt_masks, eps=8 / 255, losses=medis_losses(), targeted=True)  # doctest: +SKIP
    """
    if not isinstance(losses, Mapping) or not losses or not all(callable(f) for f in losses.values()):
        raise MedAdvInputError(f"losses must be a non-empty mapping of name -> loss_fn(logits, masks), got "
                               f"{losses!r}")
    n_steps = check_steps(steps)
    runs = []
    for fn in losses.values():
        setup = prepare(model, x, None, eps=eps, targeted=targeted, mask=mask, loss_fn=fn)
        if not runs:
            y = _check_masks(y, setup.x, "targets" if targeted else "labels")
            a = check_alpha(alpha, setup.x)
        setup.objective.y = y
        runs.append(_run(setup, y, a, n_steps, bool(targeted)))
    x_all = torch.stack([r[0] for r in runs])  # (L, N, C, *S)
    step_all = torch.stack([r[1] for r in runs])  # (L, N)
    iou_all = torch.stack([r[2] for r in runs])
    # fusion: successful first, then the fewest steps, then the better IoU
    never = n_steps + 1
    order = torch.where(step_all >= 0, step_all, torch.full_like(step_all, never)).double()
    closeness = -iou_all.double() if targeted else iou_all.double()  # in [-1, 1]: lower is better
    chosen = (order * 4 + closeness).argmin(0)
    idx = torch.arange(x.shape[0], device=chosen.device)
    fused_steps = step_all[chosen, idx]
    return MedISResult(x_adv=x_all[chosen, idx], losses=tuple(losses), steps=step_all, iou=iou_all, chosen=chosen,
                       success=fused_steps >= 0, fused_steps=fused_steps)


def _run(setup: Any, y: torch.Tensor, alpha: float, steps: int, targeted: bool) \
        -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """One I-FGSM run with a success check after every step; returns ``(x_adv, steps to success, IoU)``."""
    x_adv = setup.x
    n = x_adv.shape[0]
    view = (n,) + (1,) * (x_adv.ndim - 1)
    found = torch.full((n,), -1, dtype=torch.long, device=x_adv.device)
    step = alpha * setup.sign
    for t in range(steps + 1):
        if t < steps:
            g, _, out = setup.objective.evaluate(x_adv)
        else:
            with torch.no_grad():
                out = setup.objective.model(x_adv)
        iou = region_iou(hard_masks(out.detach()), y)  # the rule reads IoU only
        new = seg_success(iou, targeted) & (found < 0)
        found = torch.where(new, torch.full_like(found, t), found)
        if t == steps:
            break
        with torch.no_grad():
            direction = g.sign_().mul_((found < 0).view(view).to(g.dtype))  # a successful image stops moving
            x_adv = step_project(x_adv, direction, step, setup)
    return x_adv, found, iou[:, 0]
