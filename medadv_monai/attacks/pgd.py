"""PGD, projected gradient descent with a random start (Madry et al., 2018), with a per-voxel budget mask.

Its loss is cross-entropy (BCE for a single logit) or the margin loss of the Carlini-Wagner family that the Adv_MIA
benchmark calls "CW" (an L-inf PGD, not the Carlini-Wagner L2 attack of :mod:`~medadv_monai.attacks.cw`).
"""

from __future__ import annotations

from typing import Any, Callable

import torch

from medadv_monai.attacks._core import LossFn, grad_context, prepare, project_delta_start, run_sign_loop
from medadv_monai.attacks._core import random_start as _random_start
from medadv_monai.attacks.checks import check_alpha, check_steps
from medadv_monai.attacks.margin import margin, two_logit_model
from medadv_monai.errors import MedAdvInputError
from medadv_monai.utils.checks import check_choice, check_nonneg

__all__ = ["PGD_LOSSES", "pgd"]

PGD_LOSSES = ("ce", "margin")


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
    early_stop: bool = False,
    loss: str = "ce",
    kappa: float = 0.0,
) -> torch.Tensor:
    r""":func:`~medadv_monai.attacks.bim.bim` from a start inside the masked budget box.

    Start:

    .. math::
        d_0 \sim U(-\epsilon, \epsilon) \cdot m, \qquad x_0 = \mathrm{clip}(x + d_0, 0, 1)

    or, with ``init_delta`` :math:`\delta`, :math:`x_0 = \mathrm{clip}(x + \mathrm{clip}(\delta, -\epsilon m,
    \epsilon m), 0, 1)`. Then ``steps`` times :math:`x' \leftarrow \mathrm{clip}(x + \mathrm{clip}(x' + \alpha s\,
    \mathrm{sign}(\nabla L) - x, -\epsilon m, \epsilon m), 0, 1)`.

    ``loss="margin"`` ascends :math:`L = -\max(g + \kappa, 0)` with :math:`g` the logit
    :func:`~medadv_monai.attacks.margin.margin` (untargeted :math:`z_y - \max_{j \ne y} z_j`; targeted, where it
    descends :math:`\max(g + \kappa, 0)`, :math:`\max_{j \ne t} z_j - z_t`): it pushes the margin below
    :math:`-\kappa` and then stops pushing. The Adv_MIA benchmark's "CW" attack is this loss with
    :math:`\kappa = 50` and 30 steps.

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
        early_stop: stop moving a sample once the model is fooled on it (it keeps the first iterate that fooled
            it): fast robust accuracy, but smaller perturbations than the full run. Needs logits (no ``loss_fn``).
        loss: ``"ce"`` (cross-entropy; BCE for a single logit) or ``"margin"`` (above; single logits as
            :math:`(0, z)`).
        kappa: the margin's confidence :math:`\kappa \ge 0` (``loss="margin"`` only).

    Returns:
        The adversarial batch, detached, with ``x``'s shape, dtype and device.

    Raises:
        MedAdvInputError: for any invalid argument.

    Example:
        >>> g = torch.Generator().manual_seed(0)  # doctest: +SKIP
        >>> x_adv = pgd(model, x, y, eps=8 / 255, alpha=2 / 255, steps=10, generator=g)  # doctest: +SKIP
        >>> x_cw = pgd(model, x, y, eps=8 / 255, alpha=2 / 255, steps=30, loss="margin", kappa=50)  # doctest: +SKIP
    """
    loss = check_choice(loss, PGD_LOSSES, "pgd loss")
    kappa = check_nonneg(kappa, "kappa")
    if loss == "margin" and loss_fn is not None:
        raise MedAdvInputError("pgd takes loss='margin' or a loss_fn, not both")
    if loss == "margin":
        model = two_logit_model(model)
    setup = prepare(model, x, y, eps=eps, targeted=targeted, mask=mask, loss_fn=loss_fn, early_stop=early_stop)
    if loss == "margin":  # ascended untargeted, descended targeted (the core's sign), so the sign flips with it
        direction = 1.0 if targeted else -1.0
        setup.objective.use_loss(lambda out, labels: direction * torch.clamp(margin(out, labels, targeted) + kappa,
                                                                             min=0.0))
    a = check_alpha(alpha, setup.x)
    n = check_steps(steps)
    if init_delta is not None:
        x0 = project_delta_start(setup, init_delta)
    elif random_start:
        x0 = _random_start(setup, generator)
    else:
        x0 = setup.x
    return run_sign_loop(setup, x0, alpha=a, steps=n)

