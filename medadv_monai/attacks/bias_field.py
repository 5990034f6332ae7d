r"""AdvBias: an adversarial smooth multiplicative bias field (Chen et al., "Realistic Adversarial Data Augmentation for
MR Image Segmentation", MICCAI 2020) and its random baseline of the same size. The parameter-space optimisation it
shares with :mod:`~medadv_monai.attacks.kspace` lives in :mod:`~medadv_monai.attacks._physics`.

**The field.** Per sample (and per modality with ``shared_across_channels=False``) a grid of control points
:math:`P` defines the log-field :math:`s = \mathrm{spline}(P)` (uniform cubic B-spline, below) and

.. math::
    B = \mathrm{clip}(e^{s}, 1 - \epsilon, 1 + \epsilon), \qquad B_\mathrm{eff} = 1 + m\,(B - 1), \qquad
    x' = \mathrm{clip}(B_\mathrm{eff}\, x, 0, 1)

with :math:`m \in [0, 1]` the attack mask (``None``: all ones); where :math:`m = 0`, :math:`B_\mathrm{eff} = 1` and
:math:`x' = x` bit for bit. The field is multiplicative, so a zero background stays zero.

**The spline.** Per spatial axis of :math:`S` voxels: :math:`S_d = \lceil S / \mathrm{downsample} \rceil`,
:math:`K = \lceil S_d / \mathrm{spacing} \rceil` spans and :math:`n = K + 3` control points (one span needs 4 points:
at least 4 control points even for images smaller than the spacing). The spans cover the image exactly, so the knot
spacing is :math:`h = S / K \le \mathrm{spacing} \cdot \mathrm{downsample}` voxels (128 for the defaults; equal when
:math:`S` is a multiple of it). Control point :math:`k` sits at voxel coordinate :math:`(k - 1) h` (equally spaced,
one outside each side of the image), voxel :math:`i` at :math:`t_i = (i + 1/2) / h \in (0, K)`, and the per-axis basis
matrix is :math:`\mathbf{B}_{ik} = \beta_3(t_i - k + 1)` with the cubic B-spline kernel :math:`\beta_3(u) = 2/3 - u^2 +
|u|^3/2` for :math:`|u| < 1`, :math:`(2 - |u|)^3 / 6` for :math:`1 \le |u| < 2`, else 0. Then :math:`s = \mathbf{B}_H
P \mathbf{B}_W^\top` in 2D and :math:`s_{dhw} = \sum_{jkl} \mathbf{B}_{D,dj} \mathbf{B}_{H,hk} \mathbf{B}_{W,wl}
P_{jkl}` in 3D (one matrix product per axis). Every row of :math:`\mathbf{B}` sums to 1 (a constant grid gives a
constant field) and :math:`|\Delta^2 s| \le 4 \max|P| / h^2`. The paper evaluates the spline on the 2x-downsampled
grid and upsamples it; here it is evaluated at every full-resolution voxel (the smooth limit of that upsampling), so
``downsample`` only sets the knot spacing in voxels.

**The attack.** :math:`P_0 \sim U(-\epsilon/10, \epsilon/10)` (``random_start``, drawn from ``generator``) or
:math:`P_0 = 0`; then for :math:`i = 0 .. \mathrm{steps} - 1`: :math:`P \leftarrow P + s\,\frac{\alpha}{\sqrt{i + 1}}
\, g / \lVert g \rVert_2`, :math:`g = \nabla_P \sum_n L_n(f(x'(P)), y)`, the norm per sample over all its control
points, :math:`\alpha = 1` as in AdvBias (:math:`s = +1` untargeted, :math:`-1` targeted: descend towards the
target). With few control points (a 64 x 64 slice has 16 to 25) a unit step moves each by about
:math:`\log(1 + 0.3)`, so the field often reaches its bounds within a step or two; a smaller ``alpha`` explores
more shapes. The loss is the core's
(:func:`~medadv_monai.attacks._core.prepare`): cross-entropy, BCE for a single logit, or ``loss_fn`` (dense
segmentation losses included). A sample's result never depends on its batch-mates (apart from where its random start
is drawn from the generator's stream).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any, Callable

import torch

from medadv_monai.attacks._core import LossFn, check_budget, grad_context, prepare
from medadv_monai.attacks._physics import ascend, check_rel_eps, draw, mask_of
from medadv_monai.attacks.checks import check_steps
from medadv_monai.errors import MedAdvInputError
from medadv_monai.utils.checks import check_bool, check_int, check_positive

__all__ = ["bias_field", "bspline_basis", "field_range", "n_control_points", "random_bias_field", "spline_field"]


# ------------------------------------------------------------------ the B-spline
def n_control_points(size: int, spacing: int = 64, downsample: int = 2) -> int:
    """Control points along an axis of ``size`` voxels: :math:`\\lceil \\lceil size / downsample \\rceil / spacing
    \\rceil + 3` (at least 4)."""
    size, spacing, downsample = check_int(size, "size", 1), check_int(spacing, "spacing", 1), \
        check_int(downsample, "downsample", 1)
    size_down = -(-size // downsample)  # integer ceil
    return -(-size_down // spacing) + 3


def bspline_basis(size: int, spacing: int = 64, downsample: int = 2, *, dtype: torch.dtype = torch.float64,
                  device: torch.device | str | None = None) -> torch.Tensor:
    """The ``(size, n_control_points(size, spacing, downsample))`` uniform cubic B-spline basis matrix of one axis
    (module docstring); its rows sum to 1."""
    n = n_control_points(size, spacing, downsample)
    h = size / (n - 3)
    t = (torch.arange(size, dtype=torch.float64) + 0.5) / h
    u = (t[:, None] - torch.arange(n, dtype=torch.float64)[None, :] + 1.0).abs()
    b = torch.where(u < 1, 2.0 / 3.0 - u**2 + u**3 / 2, torch.where(u < 2, (2 - u).clamp_min(0) ** 3 / 6, 0.0))
    return b.to(dtype=dtype, device=device)


def _evaluate(ctrl: torch.Tensor, bases: Sequence[torch.Tensor]) -> torch.Tensor:
    """``s = spline(ctrl)``: one matrix product per spatial axis (``ctrl`` is ``(N, C, *n)``)."""
    s = ctrl
    for axis, b in enumerate(bases, start=2):
        s = torch.movedim(torch.movedim(s, axis, -1) @ b.T, -1, axis)
    return s


def spline_field(ctrl: torch.Tensor, shape: Sequence[int], *, spacing: int = 64, downsample: int = 2) -> torch.Tensor:
    """The cubic B-spline :math:`s` of control points ``ctrl`` ``(N, C, *n)`` on a ``shape`` image: ``(N, C, *shape)``.

    ``ctrl.shape[2:]`` must be ``n_control_points`` of each axis of ``shape``.
    """
    bases = [bspline_basis(int(s), spacing, downsample, dtype=ctrl.dtype, device=ctrl.device) for s in shape]
    expected = tuple(b.shape[1] for b in bases)
    if ctrl.ndim != len(shape) + 2 or tuple(ctrl.shape[2:]) != expected:
        raise MedAdvInputError(f"control points for a {tuple(shape)} image (spacing {spacing}, downsample "
                               f"{downsample}) must have shape (N, C, *{expected}), got {tuple(ctrl.shape)}")
    return _evaluate(ctrl, bases)


def _field_setup(x: torch.Tensor, eps: Any, spacing: Any, downsample: Any, shared: Any
                 ) -> tuple[float | torch.Tensor, list[torch.Tensor], tuple[int, ...]]:
    """Validated eps, the per-axis bases and the control-grid shape ``(N, C or 1, *n)``."""
    e = check_rel_eps(eps, x, 1.0, False, "the field lies in [1 - eps, 1 + eps]")
    spacing, downsample = check_int(spacing, "spacing", 1), check_int(downsample, "downsample", 1)
    c = 1 if check_bool(shared, "shared_across_channels") else x.shape[1]
    bases = [bspline_basis(s, spacing, downsample, dtype=x.dtype, device=x.device) for s in x.shape[2:]]
    return e, bases, (x.shape[0], c, *(b.shape[1] for b in bases))


def _apply(x: torch.Tensor, field: torch.Tensor, m: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor]:
    """:math:`B_\\mathrm{eff} = 1 + m (B - 1)` and :math:`x' = \\mathrm{clip}(B_\\mathrm{eff} x, 0, 1)`."""
    if m is not None:
        field = 1.0 + m * (field - 1.0)
    return torch.clamp(field * x, 0.0, 1.0), field


def _result(x_adv: torch.Tensor, field: torch.Tensor, return_field: bool) -> Any:
    return (x_adv.detach(), field.detach()) if return_field else x_adv.detach()


@grad_context()
def bias_field(
    model: Callable[[torch.Tensor], Any],
    x: torch.Tensor,
    y: Any,
    *,
    eps: float | torch.Tensor = 0.3,
    steps: int = 10,
    alpha: float = 1.0,
    spacing: int = 64,
    downsample: int = 2,
    shared_across_channels: bool = True,
    random_start: bool = True,
    generator: torch.Generator | None = None,
    targeted: bool = False,
    mask: torch.Tensor | None = None,
    loss_fn: LossFn | None = None,
    return_field: bool = False,
) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
    r"""AdvBias (Chen et al., MICCAI 2020): the smooth bias field :math:`x' = \mathrm{clip}((1 + m(B - 1))\, x, 0, 1)`,
    :math:`B = \mathrm{clip}(e^{\mathrm{spline}(P)}, 1 - \epsilon, 1 + \epsilon)`, whose control points :math:`P`
    ascend the loss (module docstring for the spline and the update).

    Args:
        model: maps ``(N, C, *S)`` to ``(N, K)`` logits (or whatever ``loss_fn`` takes); used as given.
        x: inputs in ``[0, 1]``, ``(N, C, H, W)`` or ``(N, C, D, H, W)``. Not modified.
        y: labels ``(N,)`` or, when ``targeted``, targets (or ``loss_fn``'s target, e.g. masks).
        eps: field range :math:`B \in [1 - \epsilon, 1 + \epsilon]`, ``0 < eps < 1``; float or per-sample ``(N,)``.
        steps: gradient steps ``>= 1``.
        alpha: step size ``> 0``: step :math:`i` moves the control points by :math:`\alpha / \sqrt{i + 1}` in L2.
        spacing: control-point spacing ``>= 1`` on the downsampled grid.
        downsample: factor ``>= 1`` of that grid (knot spacing ``spacing * downsample`` voxels, at most).
        shared_across_channels: one field for all modalities (a coil's field); ``False``: one per modality.
        random_start: :math:`P_0 \sim U(-\epsilon/10, \epsilon/10)`; ``False``: :math:`P_0 = 0` (:math:`B = 1`).
        generator: ``torch.Generator`` for the random start (any device).
        targeted: descend the loss towards ``y`` instead of ascending it.
        mask: weights :math:`m \in [0, 1]` broadcastable to ``x``; the field is 1 where ``m == 0``.
        loss_fn: optional ``loss_fn(output, y) -> (N,)`` per-sample loss.
        return_field: also return the applied field :math:`B_\mathrm{eff}` (``(N, 1 or C, *S)``, or the mask's
            broadcast shape).

    Returns:
        ``x_adv`` (detached, ``x``'s shape, dtype and device), or ``(x_adv, field)`` with ``return_field``.

    Raises:
        MedAdvInputError: for any invalid argument (the message names it).

    Example:
        >>> x_adv, field = bias_field(model, x, y, eps=0.3, steps=10, return_field=True)  # doctest: +SKIP
    """
    setup = prepare(model, x, y, eps=1.0, targeted=targeted, mask=mask, loss_fn=loss_fn)
    x, m = setup.x, mask_of(setup.budget)
    e, bases, shape = _field_setup(x, eps, spacing, downsample, shared_across_channels)
    n, a = check_steps(steps), check_positive(alpha, "alpha")
    return_field = check_bool(return_field, "return_field")

    def field(p: torch.Tensor) -> torch.Tensor:
        return torch.clamp(torch.exp(_evaluate(p, bases)), 1.0 - e, 1.0 + e)

    p0 = (draw(shape, generator, x) * 2 - 1) * (e / 10) if check_bool(random_start, "random_start") \
        else x.new_zeros(shape)
    p = ascend(setup, p0, lambda q: _apply(x, field(q), m)[0], steps=n, step=lambda i: a / math.sqrt(i + 1))
    with torch.no_grad():
        return _result(*_apply(x, field(p), m), return_field)


def random_bias_field(
    x: torch.Tensor,
    *,
    eps: float | torch.Tensor = 0.3,
    spacing: int = 64,
    downsample: int = 2,
    shared_across_channels: bool = True,
    generator: torch.Generator | None = None,
    mask: torch.Tensor | None = None,
    return_field: bool = False,
) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
    r"""A random field of :func:`bias_field`'s family that spans the whole eps range: the baseline at equal eps.

    :math:`P \sim U(-1, 1)` per control point, :math:`s = \mathrm{spline}(P)`, then per sample the affine map
    :math:`s \mapsto \log(1 - \epsilon) + (s - \min s)\, \frac{\log(1 + \epsilon) - \log(1 - \epsilon)}{\max s -
    \min s}` (still a B-spline: the basis is a partition of unity), so :math:`B = e^s` has min :math:`1 - \epsilon`
    and max :math:`1 + \epsilon` exactly; masked and applied as in :func:`bias_field`.

    MONAI's ``RandBiasField`` draws the same kind of field (a multiplicative :math:`e^{s}`, :math:`s` smooth), but
    :math:`s` is a global Legendre polynomial of ``degree`` 3 over the image with coefficients
    :math:`U(\mathrm{coeff\_range})` and no bound on the field's range; this one uses :func:`bias_field`'s B-spline
    and range, so an adversarial and a random field can be compared at exactly the same eps.

    Args: as :func:`bias_field` (``generator`` draws :math:`P`). Returns ``x_rand`` or ``(x_rand, field)``.
    """
    x, budget = check_budget(x, 1.0, mask)
    e, bases, shape = _field_setup(x, eps, spacing, downsample, shared_across_channels)
    return_field = check_bool(return_field, "return_field")
    s = _evaluate(draw(shape, generator, x) * 2 - 1, bases)
    lo, hi = (t.view(-1, *[1] * (x.ndim - 1)) for t in torch.aminmax(s.flatten(1), dim=1))
    et = torch.as_tensor(e, dtype=x.dtype, device=x.device)
    log_lo, log_hi = torch.log1p(-et), torch.log1p(et)
    s = log_lo + (s - lo) * ((log_hi - log_lo) / (hi - lo).clamp_min(torch.finfo(s.dtype).tiny))
    field = torch.clamp(torch.exp(s), 1.0 - e, 1.0 + e)
    return _result(*_apply(x, field, mask_of(budget)), return_field)


def field_range(field: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-sample ``(min, max)`` of a field ``(N, ...)``, two ``(N,)`` tensors."""
    if not isinstance(field, torch.Tensor) or field.ndim < 2:
        raise MedAdvInputError(f"field must be a tensor of shape (N, C, *spatial), got "
                               f"{tuple(field.shape) if isinstance(field, torch.Tensor) else type(field).__name__}")
    lo, hi = torch.aminmax(field.detach().flatten(1), dim=1)
    return lo, hi
