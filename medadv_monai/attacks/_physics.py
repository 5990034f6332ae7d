r"""The parameter-space optimisation the MRI-physics attacks share (:mod:`~medadv_monai.attacks.bias_field` and
:mod:`~medadv_monai.attacks.kspace`): each renders :math:`x' = \mathrm{render}(p)` from parameters :math:`p` of a
physical change (a bias field's control points, a k-space perturbation) and ascends the loss in :math:`p`.

- :func:`sample_norm`: per-sample L2 norm :math:`\lVert t_n \rVert_2` over all non-batch dims;
- :func:`l2_normalise`: :math:`g_n / \lVert g_n \rVert_2` (an all-zero sample stays zero);
- :func:`ascend`: ``steps`` normalised gradient steps :math:`p \leftarrow \Pi(p + s\, \mathrm{step}(i)\, g /
  \lVert g \rVert_2)`, :math:`g = \nabla_p \sum_n L_n(f(\mathrm{render}(p)), y)`;
- :func:`check_rel_eps`: a relative budget in :math:`(0, hi)` or :math:`(0, hi]`, float or per sample;
- :func:`draw`: uniform or normal draws on a ``torch.Generator`` of any device;
- :func:`mask_of`: the attack mask of a setup made with ``eps=1``.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Callable

import torch

from medadv_monai.attacks._core import AttackSetup
from medadv_monai.attacks.checks import check_generator, fmt, per_sample
from medadv_monai.errors import MedAdvInputError

__all__ = ["ascend", "check_rel_eps", "draw", "l2_normalise", "mask_of", "sample_norm"]


def sample_norm(t: torch.Tensor) -> torch.Tensor:
    """Per-sample L2 norm over all non-batch dims, shaped ``(N, 1, ..., 1)``."""
    return torch.linalg.vector_norm(t, dim=tuple(range(1, t.ndim)), keepdim=True)


def l2_normalise(g: torch.Tensor) -> torch.Tensor:
    """``g / ||g||_2`` per sample; an all-zero sample stays zero (no 0/0)."""
    return g / sample_norm(g).clamp_min(torch.finfo(g.dtype).tiny)


def draw(shape: Sequence[int], generator: torch.Generator | None, like: torch.Tensor, normal: bool = False
         ) -> torch.Tensor:
    """``U(0, 1)`` (or ``N(0, 1)``) draws of ``like``'s dtype, drawn on the generator's device and moved."""
    check_generator(generator)
    dev = generator.device if generator is not None else like.device
    fn = torch.randn if normal else torch.rand
    return fn(tuple(shape), generator=generator, device=dev, dtype=like.dtype).to(like.device)


def check_rel_eps(eps: Any, x: torch.Tensor, hi: float, hi_closed: bool, what: str) -> float | torch.Tensor:
    """``eps`` (float or per-sample ``(N,)``) in ``(0, hi)`` or ``(0, hi]``; a float or an ``(N, 1, ..., 1)`` tensor."""
    e, lo_v, hi_v = per_sample(eps, "eps", x.shape[0], x.ndim, x)
    if not (lo_v > 0) or not (hi_v <= hi if hi_closed else hi_v < hi):
        bad = lo_v if not (lo_v > 0) else hi_v
        rng = f"(0, {fmt(hi)}{']' if hi_closed else ')'}"
        raise MedAdvInputError(f"eps must be in {rng} ({what}), got {fmt(bad)}")
    return e


def ascend(setup: AttackSetup, params: torch.Tensor, render: Callable[[torch.Tensor], torch.Tensor], *, steps: int,
           step: Callable[[int], float | torch.Tensor],
           project: Callable[[torch.Tensor], torch.Tensor] | None = None) -> torch.Tensor:
    """``steps`` per-sample L2-normalised gradient steps on ``params`` of :math:`x' = \\mathrm{render}(p)`:
    :math:`p \\leftarrow \\Pi(p + s\\,\\mathrm{step}(i)\\, g / \\lVert g \\rVert_2)`, with :math:`g = \\nabla_p \\sum_n
    L_n` chained from the core objective's input gradient. Returns the final ``params`` (detached)."""
    p = params.detach()
    for i in range(steps):
        pv = p.requires_grad_(True)
        x_adv = render(pv)
        (g,) = torch.autograd.grad(x_adv, pv, grad_outputs=setup.objective(x_adv))
        with torch.no_grad():
            p = pv.detach() + l2_normalise(g) * (step(i) * setup.sign)
            if project is not None:
                p = project(p)
    return p


def mask_of(setup_budget: float | torch.Tensor) -> torch.Tensor | None:
    """The validated attack mask from a setup made with ``eps=1`` (budget :math:`1 \\cdot m`), or ``None``."""
    return setup_budget if isinstance(setup_budget, torch.Tensor) else None
