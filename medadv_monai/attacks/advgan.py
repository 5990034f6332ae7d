"""The AdvGAN attack: a generator proposes the perturbation in one forward pass (Xiao et al., 2018).

The perturbation is formed the same way in training and at attack time (one function, :func:`advgan_delta`):

.. math::
    d = \\epsilon\\, m \\tanh(G(x)), \\qquad x' = \\mathrm{clip}(x + d, 0, 1)

so :math:`|x' - x| \\le \\epsilon m` by construction and :math:`x' = x` exactly where :math:`m = 0`.
"""

from __future__ import annotations

from typing import Any, Callable

import torch

from medadv_monai.attacks._core import check_budget

__all__ = ["advgan", "advgan_delta", "apply_delta"]


def advgan_delta(raw: torch.Tensor, budget: float | torch.Tensor) -> torch.Tensor:
    """:math:`d = \\epsilon m \\tanh(G(x))` from the generator's raw output and the budget :math:`\\epsilon m`.

    Differentiable (the AdvGAN trainer back-propagates through it).
    """
    return torch.tanh(raw) * budget


def apply_delta(x: torch.Tensor, delta: torch.Tensor) -> torch.Tensor:
    """:math:`x' = \\mathrm{clip}(x + d, 0, 1)` (differentiable)."""
    return torch.clamp(x + delta, 0.0, 1.0)


@torch.no_grad()
def advgan(
    model: Callable[[torch.Tensor], Any] | None,
    x: torch.Tensor,
    y: Any = None,
    *,
    eps: float | torch.Tensor,
    generator: torch.nn.Module,
    mask: torch.Tensor | None = None,
    targeted: bool = False,
) -> torch.Tensor:
    """Perturb ``x`` with a trained AdvGAN generator within the budget ``eps * mask``.

    ``model`` and ``y`` are not used (the generator was trained against the model); they keep the signature of
    the gradient attacks so the registry and the evaluation grid treat every attack alike.

    Args:
        model: ignored.
        x: inputs in [0, 1], ``(N, C, *spatial)``.
        y: ignored.
        eps: L-inf budget in [0, 1], a float or a per-sample ``(N,)`` tensor.
        generator: maps ``x`` to a raw perturbation of ``x``'s shape.
        mask: per-voxel budget weights in [0, 1] broadcastable to ``x``.
        targeted: accepted for the common attack signature; whether the attack is targeted was decided when the
            generator was trained (its checkpoint records it).

    Returns:
        The adversarial batch, detached, with ``x``'s dtype and device.
    """
    x, budget = check_budget(x, eps, mask)
    return apply_delta(x, advgan_delta(generator(x), budget)).to(x.dtype)
