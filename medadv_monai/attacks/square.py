r"""Square, the score-based random-search attack (Andriushchenko et al., ECCV 2020), L-inf, with a budget mask.

Square needs the model's outputs only, no gradients. It minimises the margin loss

.. math::
    g(x') = z_y(x') - \max_{j \ne y} z_j(x') \ \text{(untargeted)}, \qquad
    g(x') = \max_{j \ne t} z_j(x') - z_t(x') \ \text{(targeted, } y \text{ holds the targets } t)

(:func:`~medadv_monai.attacks.margin.margin`; a single-logit ``(N, 1)`` model is the two-class model with logits
:math:`(0, z)` of :func:`~medadv_monai.attacks.margin.as_two_logits`) by random search over the vertices of the
feasible box :math:`[\ell, u]`, :math:`\ell = \max(x - \epsilon m, 0)`, :math:`u = \min(x + \epsilon m, 1)`:

1. A sample the model is already fooled on (:math:`g(x) < 0`) is done before the search starts: it is returned as
   ``x``, unchanged and never queried (as in the reference code, which attacks only the correctly classified
   samples). So is a sample with nothing to change (an empty mask, or :math:`\epsilon = 0`).
2. Start (the first query): vertical stripes, :math:`x'_{c, \dots, w} = u` or :math:`\ell` with one random sign per
   channel :math:`c` and column :math:`w` (the last spatial axis); kept whatever its loss.
3. Each further query :math:`i = 1, \dots, Q - 1` sets one random window to a random vertex,
   :math:`x''_{c, W} = u_{c, W}` or :math:`\ell_{c, W}` with one random sign per channel, and keeps
   :math:`x''` if :math:`g(x'') < g(x')`. The window is a square of side :math:`\mathrm{round}(\sqrt{p_i HW})` (a cube
   of side :math:`\mathrm{round}((p_i DHW)^{1/3})` in 3D; at least 1, at most each axis' size), where
   :math:`p_i` is the published schedule (:func:`square_p`): :math:`p_{init}` halved at the rescaled query
   :math:`\lfloor 10^4 i / Q \rfloor` = 10, 50, 200, 500, 1000, 2000, 4000, 6000 and 8000.
4. A sample is done as soon as :math:`g(x') < 0`: it keeps that point and is not queried any more.

Each sample spends at most ``queries`` model evaluations (the stripes included), plus one evaluation of the clean
batch to find the samples fooled from the start. A sample the search did not fool ends at the lowest-margin point it
found (the reference's restart wrapper returns ``x`` for these; the robust accuracy is the same either way).

Mask: the per-voxel budget is :math:`\epsilon m_i`, so a vertex is :math:`x_i \pm \epsilon m_i` clipped to
:math:`[0, 1]`, and :math:`x'_i = x_i` bit for bit where :math:`m_i = 0` (there :math:`\ell_i = u_i = x_i`). Windows
are drawn inside the mask: a sample's window position is drawn uniformly among the positions whose window overlaps
its mask (:math:`\epsilon m > 0` in some channel), so no query is spent on a window that cannot change anything.
Without a mask every position inside the image is a candidate (along an axis of size :math:`d`, the starts
:math:`0, \dots, d - s`; the reference's ``random_int`` never draws the last one).

Batch independence: every random number is drawn with a shape that does not depend on the batch: the stripe signs
``(1, C, 1, ..., W)``, and per query one uniform :math:`u_i \in [0, 1)` and one sign per channel ``(1, C, 1, ...)``,
shared by the whole batch (the reference shares a query's position and signs across the batch too; only its stripes
are per sample). A sample with :math:`P_n` valid positions takes the :math:`\lfloor u_i P_n \rfloor`-th of them (in
raster order), so with the same seed sample ``n`` receives the same draws attacked alone or in any batch, and, up to
the model's own batch-size rounding, the same result.

``loss_fn(output, y) -> (N,)`` replaces the margin: Square then maximises it (minimises it when ``targeted``) on the
model's raw output, from the same stripes, over the whole batch and the whole query budget (a loss does not tell
when the model is fooled, so no sample is done early and none is skipped at the start).
"""

from __future__ import annotations

import math
import numbers
from typing import Any, Callable

import torch

from medadv_monai.attacks._core import LossFn, _as_plain, grad_context, prepare
from medadv_monai.attacks.checks import check_generator, fmt
from medadv_monai.attacks.margin import as_two_logits, margin, two_logit_model
from medadv_monai.errors import MedAdvInputError
from medadv_monai.utils.checks import check_int

__all__ = ["square", "square_p", "square_side"]

# the reference's p_selection: (upper end of the rescaled query range, divisor of p_init); beyond 8000, 512
_SCHEDULE = ((10, 1), (50, 2), (200, 4), (500, 8), (1000, 16), (2000, 32), (4000, 64), (6000, 128), (8000, 256))


def square_p(i: int, queries: int, p_init: float = 0.8) -> float:
    """The fraction :math:`p` of the image a window covers at search query ``i`` (0-based, after the stripes) of a
    ``queries`` budget: the reference's ``p_selection(i)`` with its schedule rescaled from 10,000 queries."""
    it = int(i / queries * 10000)
    for end, div in _SCHEDULE:
        if it <= end:
            return p_init / div
    return p_init / 512


def square_side(p: float, spatial: tuple[int, ...]) -> tuple[int, ...]:
    """The window's side along each spatial axis: :math:`\\mathrm{round}(\\sqrt{p HW})` in 2D,
    :math:`\\mathrm{round}((p DHW)^{1/3})` in 3D, at least 1 and at most the axis' size."""
    vol = p * math.prod(spatial)
    s = math.sqrt(vol) if len(spatial) == 2 else vol ** (1.0 / len(spatial))
    s = max(int(round(s)), 1)
    return tuple(min(s, d) for d in spatial)


def _check_p_init(p_init: Any) -> float:
    ok = isinstance(p_init, numbers.Real) and not isinstance(p_init, bool) and math.isfinite(p_init)
    if not ok or not (0.0 < float(p_init) <= 1.0):
        shown = fmt(float(p_init)) if ok else repr(p_init)
        raise MedAdvInputError(f"p_init must be a number in (0, 1] (the fraction of the image the first squares "
                               f"cover), got {shown}")
    return float(p_init)


class _Windows:
    """Window positions for the active samples: uniform among those overlapping each sample's editable voxels."""

    def __init__(self, editable: torch.Tensor | None, spatial: tuple[int, ...]) -> None:
        self.editable = editable  # (n_a, 1, *S) long (1 where eps*m > 0 in some channel), None: all editable
        self.spatial = spatial
        self.side: tuple[int, ...] = ()
        self.cum: torch.Tensor | None = None

    def keep(self, keep: torch.Tensor) -> None:
        if self.editable is not None:
            self.editable = self.editable[keep]
            self.cum = None if self.cum is None else self.cum[keep]

    def set_side(self, side: tuple[int, ...]) -> None:
        if side == self.side:
            return
        self.side = side
        if self.editable is not None:
            # editable voxels per window, by box sums of cumulative sums along each axis: O(volume), any side
            t = self.editable
            for axis, s in enumerate(side):
                dim, size = 2 + axis, self.spatial[axis]
                c = torch.cat([torch.zeros_like(t.narrow(dim, 0, 1)), t.cumsum(dim)], dim)
                t = c.narrow(dim, s, size - s + 1) - c.narrow(dim, 0, size - s + 1)
            self.cum = (t.flatten(1) > 0).cumsum(1)  # (n_a, positions): valid positions so far, raster order

    def index(self, u: torch.Tensor) -> torch.Tensor:
        """Flat spatial indices ``(n_a or 1, 1, L)`` of the window for the uniform draw ``u`` (0-dim)."""
        grid = [d - s + 1 for d, s in zip(self.spatial, self.side)]
        if self.cum is None:  # every position is valid: the same one for the whole batch
            pos = (u * math.prod(grid)).long().clamp_(max=math.prod(grid) - 1).reshape(1)
        else:
            count = self.cum[:, -1]
            k = torch.minimum((u * count).long(), count - 1).clamp_(min=0)
            pos = torch.searchsorted(self.cum, k[:, None], right=True)[:, 0].clamp_(max=self.cum.shape[1] - 1)
        base = torch.zeros_like(pos)
        offsets = torch.zeros((), dtype=torch.long, device=u.device)
        stride = 1
        for axis in reversed(range(len(self.spatial))):
            base += (pos % grid[axis]) * stride
            pos = pos // grid[axis]
            offsets = (torch.arange(self.side[axis], device=u.device) * stride).view(-1, 1) + offsets.reshape(1, -1)
            stride *= self.spatial[axis]
        return (base[:, None] + offsets.reshape(1, -1))[:, None, :]


@grad_context()
def square(
    model: Callable[[torch.Tensor], Any],
    x: torch.Tensor,
    y: Any,
    *,
    eps: float | torch.Tensor,
    queries: int = 5000,
    p_init: float = 0.8,
    targeted: bool = False,
    mask: torch.Tensor | None = None,
    loss_fn: LossFn | None = None,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """Square L-inf (module docstring) under the budget :math:`|x' - x| \\le \\epsilon m`; gradient-free.

    Args:
        model: ``(N, C, *S) -> (N, K)`` logits, ``K >= 2``, or ``(N, 1)`` (one logit :math:`z`, run as the two
            logits :math:`(0, z)`); used as given (mode kept, no parameter ``.grad``, only forward passes).
        x: inputs in ``[0, 1]``, ``(N, C, H, W)`` or ``(N, C, D, H, W)`` (windows are squares or cubes). Not
            modified.
        y: labels ``(N,)`` (0/1 for a single logit) or, when ``targeted``, the targets.
        eps: budget in ``[0, 1]``, float or per-sample ``(N,)``.
        queries: model evaluations per sample ``>= 1``, the stripes start included (the reference's ``n_queries``).
        p_init: the fraction of the image the first windows cover, in ``(0, 1]``.
        targeted: make the model predict ``y`` (margin towards the targets; with ``loss_fn``, minimise it).
        mask: per-voxel budget weights in ``[0, 1]`` broadcastable to ``x``; windows are drawn where it is > 0.
        loss_fn: a per-sample loss ``(output, y) -> (N,)`` on the raw model output, maximised (minimised when
            ``targeted``) over the whole budget instead of the margin.
        generator: ``torch.Generator`` of every random draw (may live on another device than ``x``); the same seed
            gives the same result.

    Returns:
        The adversarial batch, detached, with ``x``'s shape, dtype and device: ``x`` for the samples fooled from the
        start, the first point that fooled the model for those Square fooled, the lowest-margin (highest-loss)
        point found for the others.

    Raises:
        MedAdvInputError: for any invalid argument, model output or label.

    Example:
        >>> g = torch.Generator().manual_seed(0)  # doctest: +SKIP
        >>> x_adv = square(model, x, y, eps=8 / 255, queries=5000, generator=g)  # doctest: +SKIP
        >>> x_patch = square(model, x, y, eps=8 / 255, queries=1000, mask=patch, generator=g)  # doctest: +SKIP
    """
    n_queries = check_int(queries, "queries", 1)
    p0 = _check_p_init(p_init)
    check_generator(generator)
    use_margin = loss_fn is None
    setup = prepare(two_logit_model(model) if use_margin else model, x, y, eps=eps, targeted=targeted,
                    mask=mask, loss_fn=loss_fn)
    x0, lo, hi = setup.x, setup.lo, setup.hi
    n, c, spatial = x0.shape[0], x0.shape[1], tuple(x0.shape[2:])
    nd = len(spatial)
    is_targeted = setup.sign < 0

    # --- every random draw, up front, in shapes that do not depend on the batch ---
    dev = generator.device if generator is not None else x0.device
    ufloat = torch.float32 if dev.type == "mps" else torch.float64
    stripes = torch.randint(0, 2, (1, c) + (1,) * (nd - 1) + (spatial[-1],), generator=generator, device=dev)
    draws = torch.rand(n_queries - 1, generator=generator, device=dev, dtype=ufloat)
    signs = torch.randint(0, 2, (n_queries - 1, c), generator=generator, device=dev)
    stripes, draws, signs = stripes.to(x0.device).bool(), draws.to(x0.device), signs.to(x0.device).bool()

    with torch.no_grad():
        editable = (hi > lo).any(dim=1, keepdim=True)  # (N, 1, *S): where eps * m > 0
        x_best = x0.clone()
        if use_margin:
            clean = _as_plain(setup.objective.output(x0))  # validates the output and the labels
            labels = setup.objective.y.reshape(n)
            ids = torch.nonzero(~(margin(clean, labels, is_targeted) < 0) & editable.flatten(1).any(1)).reshape(-1)
        else:
            labels = setup.objective.y
            ids = torch.arange(n, device=x0.device)
        if ids.numel() == 0:
            return x_best

        def value(xq: torch.Tensor, lab: Any) -> torch.Tensor:
            """What Square minimises: the margin, or :math:`-sL` with ``loss_fn``."""
            out = model(xq)
            if use_margin:
                return margin(_as_plain(as_two_logits(out)), lab, is_targeted)
            loss = loss_fn(out, lab)  # type: ignore[misc]
            if not isinstance(loss, torch.Tensor) or tuple(loss.shape) != (xq.shape[0],):
                shape = tuple(loss.shape) if isinstance(loss, torch.Tensor) else type(loss).__name__
                raise MedAdvInputError(f"loss_fn must return a per-sample loss of shape ({xq.shape[0]},) "
                                       f"(no reduction), got {shape}")
            return -setup.sign * _as_plain(loss).detach()

        # the search runs on flat (n_a, C, V) views; x_best keeps the full batch
        lo_f, hi_f = lo.reshape(n, c, -1), hi.reshape(n, c, -1)
        lo_a, hi_a = (lo_f, hi_f) if not use_margin else (lo_f[ids], hi_f[ids])
        lab_a = labels if not use_margin else labels[ids]
        windows = _Windows(None if mask is None else editable[ids].long(), spatial)

        # query 1: the stripes, kept whatever their loss
        xb = torch.where(stripes, hi, lo).reshape(n, c, -1)
        xb = (xb[ids] if use_margin else xb).contiguous()
        vb = value(xb.clone().view((-1, c) + spatial), lab_a)  # the model never sees a tensor that changes later
        for i in range(n_queries - 1):
            if use_margin:
                done = vb < 0
                if bool(done.any()):  # fooled: keep the point, stop querying the sample
                    x_best[ids[done]] = xb[done].view((-1, c) + spatial)
                    keep = ~done
                    ids, xb, vb, lo_a, hi_a, lab_a = ids[keep], xb[keep], vb[keep], lo_a[keep], hi_a[keep], lab_a[keep]
                    windows.keep(keep)
                    if ids.numel() == 0:
                        break
            windows.set_side(square_side(square_p(i, n_queries, p0), spatial))
            idx = windows.index(draws[i]).expand(xb.shape[0], c, -1)
            new = torch.where(signs[i].view(1, c, 1), hi_a.gather(2, idx), lo_a.gather(2, idx))
            xn = xb.clone().scatter_(2, idx, new)  # the candidate: the window set to the vertex
            vn = value(xn.view((-1, c) + spatial), lab_a)
            better = vn < vb
            xb.scatter_(2, idx, torch.where(better.view(-1, 1, 1), new, xb.gather(2, idx)))  # only the window moves
            vb = torch.where(better, vn, vb)
        if ids.numel():
            x_best[ids] = xb.view((-1, c) + spatial)
    return x_best.detach()
