r"""An adversarial k-space perturbation: a small complex change of an image's Fourier coefficients (the raw data an
MRI scanner measures), optionally restricted to a radial frequency band or to a few spike locations (the
"herringbone" artefact of a spiking coil), and its random baseline of the same energy.

**Definition.** With :math:`X = \mathcal{F}(x)` the orthonormal FFT over the last 2 spatial dims (4D input, or
``per_slice`` 5D input: every slice on its own) or over all 3 (5D input), per sample :math:`n`

.. math::
    x'_\mathrm{raw} = \mathrm{clip}\big(|\mathcal{F}^{-1}(X + d)|, 0, 1\big), \qquad
    x' = x + m\,(x'_\mathrm{raw} - x), \qquad \lVert d_n \rVert_2 \le \epsilon\, \lVert X_n \rVert_2,\quad
    d = d \cdot \mathbb{1}_\Omega

with the norms over all channels (and slices) of the sample, :math:`\epsilon` relative (e.g. 0.05: 5% of the
image's k-space energy; by Parseval :math:`\lVert X_n \rVert_2 = \lVert x_n \rVert_2`), :math:`m \in [0, 1]` the
image-space attack mask (``None``: all ones; :math:`x' = x` bit for bit where :math:`m = 0`; the budget stays on
:math:`d`), and :math:`\Omega` the support: all of k-space, a band :math:`\{\mathrm{low} \le r \le \mathrm{high}\}` of
the radial frequency :math:`r = \lVert 2 f \rVert_2` (:math:`f` the centred frequencies of
``torch.fft.fftfreq`` in cycles per voxel, so :math:`r = 1` at Nyquist on an axis and up to :math:`\sqrt{2}` or
:math:`\sqrt{3}` in the corners), or a set of spike locations. The same support holds for every sample and channel.

**Magnitude image.** A real image's FFT is Hermitian-symmetric; :math:`d` is not forced to be, so
:math:`\mathcal{F}^{-1}(X + d)` is complex and its magnitude is the image (as a magnitude reconstruction of measured
k-space is). Without a perturbation, :math:`|\mathcal{F}^{-1}(X)| = x` up to FFT rounding (about 1e-7).
:math:`d` is stored as an ``(N, 2C, *S)`` real tensor: real parts of the C channels, then imaginary parts.

**The attack.** Projected gradient ascent with L2-normalised steps: :math:`d \leftarrow \Pi\big(d + s\,\alpha
\epsilon \lVert X \rVert\, g / \lVert g \rVert_2\big)`, :math:`g = \nabla_d \sum_n L_n(f(x'(d)), y)` (zero off
:math:`\Omega`), :math:`\Pi` the projection onto the ball :math:`\lVert d \rVert_2 \le \epsilon \lVert X \rVert_2`,
per sample; :math:`s = +1` untargeted, :math:`-1` targeted. The random start is :math:`d_0 = u\, \epsilon \lVert X
\rVert\, z / \lVert z \rVert` with :math:`z` standard normal (real and imaginary parts) on :math:`\Omega` and
:math:`u \sim U(0, 1)` per sample. The loss is the core's (:func:`~medadv_monai.attacks._core.prepare`).
"""

from __future__ import annotations

import numbers
from collections.abc import Sequence
from typing import Any, Callable

import torch

from medadv_monai.attacks._core import LossFn, check_budget, grad_context, prepare
from medadv_monai.attacks._physics import ascend, check_rel_eps, draw, mask_of, sample_norm
from medadv_monai.attacks.checks import check_steps, fmt
from medadv_monai.errors import MedAdvInputError
from medadv_monai.utils.checks import check_bool, check_positive

__all__ = ["kspace", "kspace_support", "random_kspace", "relative_kspace_energy"]


def _fft_dims(x: torch.Tensor, per_slice: Any) -> tuple[int, ...]:
    per_slice = check_bool(per_slice, "per_slice")
    return (-2, -1) if x.ndim == 4 or per_slice else (-3, -2, -1)


def _work(x: torch.Tensor) -> torch.Tensor:
    """``x`` in a dtype the FFT takes everywhere (half / bfloat16 run in float32)."""
    return x if x.dtype in (torch.float32, torch.float64) else x.float()


def kspace_support(shape: Sequence[int], band: Any = None, spikes: Any = None, *,
                   device: torch.device | str | None = None) -> torch.Tensor:
    """The boolean support :math:`\\Omega` on a k-space of ``shape`` (the FFT dims), in ``torch.fft`` layout (DC at
    index 0; ``torch.fft.fftshift`` centres it).

    Args:
        shape: the sizes of the FFT dims (2 or 3).
        band: ``None`` or ``(low, high)`` with ``0 <= low < high``: radial frequencies :math:`low \\le r \\le high`,
            :math:`r` a fraction of Nyquist (module docstring).
        spikes: ``None`` or a non-empty sequence of integer tuples, one entry per FFT dim: signed offsets from the
            centre (DC) of the centred k-space, each in ``[-(n // 2), (n - 1) // 2]`` for an axis of ``n``.

    ``band`` and ``spikes`` exclude each other; with neither, all of k-space.
    """
    shape = tuple(int(s) for s in shape)
    if band is not None and spikes is not None:
        raise MedAdvInputError("kspace takes band or spikes, not both (got both)")
    if spikes is not None:
        return _spike_support(shape, spikes, device)
    if band is None:
        return torch.ones(shape, dtype=torch.bool, device=device)
    ok = isinstance(band, Sequence) and not isinstance(band, str) and len(band) == 2 and all(
        isinstance(b, numbers.Real) and not isinstance(b, bool) for b in band)
    if not ok or not (0 <= band[0] < band[1] < float("inf")):
        raise MedAdvInputError(f"band must be (low, high) radial frequencies as fractions of Nyquist with "
                               f"0 <= low < high (finite), got {band!r}")
    grids = torch.meshgrid(*[2 * torch.fft.fftfreq(n, dtype=torch.float64) for n in shape], indexing="ij")
    r = torch.sqrt(sum(g**2 for g in grids))
    support = (r >= band[0]) & (r <= band[1])
    if not bool(support.any()):
        raise MedAdvInputError(f"band {tuple(band)} holds no frequency of a {shape} k-space (radii from 0 to "
                               f"{fmt(float(r.max()))} of Nyquist, steps of about {fmt(2 / max(shape))})")
    return support.to(device)


def _spike_support(shape: tuple[int, ...], spikes: Any, device: torch.device | str | None) -> torch.Tensor:
    try:
        points = [tuple(p) for p in spikes]
    except TypeError:
        points = []
    ok = bool(points) and all(len(p) == len(shape) and all(isinstance(i, numbers.Integral) and not isinstance(i, bool)
                                                           for i in p) for p in points)
    if not ok:
        raise MedAdvInputError(f"spikes must be a non-empty sequence of {len(shape)}-tuples of integer offsets from "
                               f"the k-space centre, got {spikes!r}")
    support = torch.zeros(shape, dtype=torch.bool)
    for p in points:
        if not all(-(n // 2) <= i <= (n - 1) // 2 for i, n in zip(p, shape)):
            rng = ", ".join(f"[{-(n // 2)}, {(n - 1) // 2}]" for n in shape)
            raise MedAdvInputError(f"spike {p} is outside the centred k-space of shape {shape} (offsets in {rng})")
        support[tuple(int(i) % n for i, n in zip(p, shape))] = True
    return support.to(device)


def _setup(x: torch.Tensor, eps: Any, band: Any, spikes: Any, per_slice: Any):
    """Validated eps, the FFT dims, :math:`X`, the radius :math:`\\epsilon \\lVert X \\rVert` ``(N, 1, ..)`` and
    :math:`\\Omega` as a real 0/1 tensor."""
    e = check_rel_eps(eps, x, 1.0, True, "a fraction of the image's k-space L2 norm")
    dims = _fft_dims(x, per_slice)
    xw = _work(x)
    support = kspace_support(x.shape[-len(dims):], band, spikes, device=x.device).to(xw.dtype)
    big_x = torch.fft.fftn(xw, dim=dims, norm="ortho")
    return dims, big_x, e * sample_norm(big_x), support


def _render(x: torch.Tensor, big_x: torch.Tensor, d: torch.Tensor, support: torch.Tensor, dims: tuple[int, ...],
            m: torch.Tensor | None) -> torch.Tensor:
    """:math:`x' = x + m(\\mathrm{clip}(|\\mathcal{F}^{-1}(X + d)|, 0, 1) - x)` for the real ``(N, 2C, *S)`` ``d``."""
    c = x.shape[1]
    dc = torch.complex(d[:, :c], d[:, c:]) * support
    x_raw = torch.fft.ifftn(big_x + dc, dim=dims, norm="ortho").abs().clamp(0.0, 1.0).to(x.dtype)
    return x_raw if m is None else x + m * (x_raw - x)


def _sphere(shape: Sequence[int], support: torch.Tensor, radius: torch.Tensor, generator: torch.Generator | None
            ) -> torch.Tensor:
    """A random ``d`` on :math:`\\Omega` with :math:`\\lVert d \\rVert_2 = ` ``radius`` per sample."""
    z = draw(shape, generator, radius, normal=True) * support
    return z * (radius / sample_norm(z).clamp_min(torch.finfo(z.dtype).tiny))


def _result(x_adv: torch.Tensor, d: torch.Tensor, support: torch.Tensor, return_delta: bool) -> Any:
    """``x_adv`` or ``(x_adv, d)`` with ``d`` complex ``(N, C, *S)``."""
    c = x_adv.shape[1]
    return (x_adv.detach(), (torch.complex(d[:, :c], d[:, c:]) * support).detach()) if return_delta else x_adv.detach()


@grad_context()
def kspace(
    model: Callable[[torch.Tensor], Any],
    x: torch.Tensor,
    y: Any,
    *,
    eps: float | torch.Tensor = 0.05,
    steps: int = 10,
    alpha: float = 0.25,
    band: tuple[float, float] | None = None,
    spikes: Sequence[Sequence[int]] | None = None,
    per_slice: bool = False,
    random_start: bool = True,
    generator: torch.Generator | None = None,
    targeted: bool = False,
    mask: torch.Tensor | None = None,
    loss_fn: LossFn | None = None,
    return_delta: bool = False,
) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
    r"""Adversarial k-space perturbation :math:`x' = x + m(\mathrm{clip}(|\mathcal{F}^{-1}(\mathcal{F}(x) + d)|, 0, 1)
    - x)`, :math:`\lVert d \rVert_2 \le \epsilon \lVert \mathcal{F}(x) \rVert_2` per sample, by projected gradient
    ascent on :math:`d` (module docstring).

    Args:
        model: maps ``(N, C, *S)`` to ``(N, K)`` logits (or whatever ``loss_fn`` takes); used as given.
        x: inputs in ``[0, 1]``, ``(N, C, H, W)`` or ``(N, C, D, H, W)``. Not modified.
        y: labels ``(N,)`` or, when ``targeted``, targets (or ``loss_fn``'s target, e.g. masks).
        eps: relative k-space budget in ``(0, 1]``, float or per-sample ``(N,)`` (default 0.05: 5% of the
            image's k-space L2 norm).
        steps: projected gradient steps ``>= 1`` (default 10).
        alpha: step length ``> 0`` as a fraction of the budget radius :math:`\epsilon \lVert X \rVert_2`.
        band: ``None`` or ``(low, high)`` radial band, fractions of Nyquist (:func:`kspace_support`).
        spikes: ``None`` or integer offsets from the k-space centre (:func:`kspace_support`).
        per_slice: 5D input only: FFT over ``(H, W)`` of each slice (a 2D multi-slice acquisition) instead of 3D.
        random_start: start at a random :math:`d_0` inside the ball; ``False``: :math:`d_0 = 0`.
        generator: ``torch.Generator`` for the random start (any device).
        targeted: descend the loss towards ``y`` instead of ascending it.
        mask: image-space weights :math:`m \in [0, 1]` broadcastable to ``x``; ``x`` is kept where ``m == 0``.
        loss_fn: optional ``loss_fn(output, y) -> (N,)`` per-sample loss.
        return_delta: also return :math:`d` as a complex ``(N, C, *S)`` tensor (``torch.fft`` layout, zero off the
            support; with ``per_slice`` the FFT dims are the last two).

    Returns:
        ``x_adv`` (detached, ``x``'s shape, dtype and device), or ``(x_adv, d)`` with ``return_delta``.

    Raises:
        MedAdvInputError: for any invalid argument (the message names it).

    Example:
        >>> x_adv = kspace(model, x, y, eps=0.05, steps=10, band=(0.5, 1.0))  # doctest: +SKIP
    """
    setup = prepare(model, x, y, eps=1.0, targeted=targeted, mask=mask, loss_fn=loss_fn)
    x, m = setup.x, mask_of(setup.budget)
    dims, big_x, radius, support = _setup(x, eps, band, spikes, per_slice)
    n, a = check_steps(steps), check_positive(alpha, "alpha")
    return_delta = check_bool(return_delta, "return_delta")
    shape = (x.shape[0], 2 * x.shape[1], *x.shape[2:])
    if check_bool(random_start, "random_start"):
        d0 = _sphere(shape, support, radius, generator) * draw((x.shape[0],) + (1,) * (x.ndim - 1), generator, radius)
    else:
        d0 = radius.new_zeros(shape)

    def project(d: torch.Tensor) -> torch.Tensor:
        return d * (radius / sample_norm(d).clamp_min(torch.finfo(d.dtype).tiny)).clamp(max=1.0)

    d = ascend(setup, d0, lambda q: _render(x, big_x, q, support, dims, m), steps=n, step=lambda i: a * radius,
                project=project)
    with torch.no_grad():
        return _result(_render(x, big_x, d, support, dims, m), d, support, return_delta)


def random_kspace(
    x: torch.Tensor,
    *,
    eps: float | torch.Tensor = 0.05,
    band: tuple[float, float] | None = None,
    spikes: Sequence[Sequence[int]] | None = None,
    per_slice: bool = False,
    generator: torch.Generator | None = None,
    mask: torch.Tensor | None = None,
    return_delta: bool = False,
) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
    r""":func:`kspace`'s perturbation with a random :math:`d` of exactly the budget, the baseline at equal eps:
    :math:`d = \epsilon \lVert X \rVert_2\, z / \lVert z \rVert_2`, :math:`z` standard normal (real and imaginary
    parts) on the support. Arguments as :func:`kspace` (``generator`` draws :math:`z`)."""
    x, budget = check_budget(x, 1.0, mask)
    dims, big_x, radius, support = _setup(x, eps, band, spikes, per_slice)
    return_delta = check_bool(return_delta, "return_delta")
    d = _sphere((x.shape[0], 2 * x.shape[1], *x.shape[2:]), support, radius, generator)
    return _result(_render(x, big_x, d, support, dims, mask_of(budget)), d, support, return_delta)


def relative_kspace_energy(x: torch.Tensor, x_adv: torch.Tensor) -> torch.Tensor:
    """Per sample :math:`\\lVert \\mathcal{F}(x') - \\mathcal{F}(x) \\rVert_2 / \\lVert \\mathcal{F}(x) \\rVert_2`,
    ``(N,)`` (FFT over all spatial dims; by Parseval equal to :math:`\\lVert x' - x \\rVert_2 / \\lVert x \\rVert_2`).

    This is the realised change, after the magnitude, the clip to ``[0, 1]`` and the mask, not the nominal
    :math:`\\lVert d \\rVert / \\lVert X \\rVert` (which can be larger or smaller). An all-zero ``x`` gives NaN or inf.
    """
    for name, t in (("x", x), ("x_adv", x_adv)):
        if not isinstance(t, torch.Tensor) or t.ndim not in (4, 5):
            got = f"shape {tuple(t.shape)}" if isinstance(t, torch.Tensor) else type(t).__name__
            raise MedAdvInputError(f"{name} must be a 4D (N, C, H, W) or 5D (N, C, D, H, W) tensor, got {got}")
    if x.shape != x_adv.shape:
        raise MedAdvInputError(f"x_adv must have x's shape {tuple(x.shape)}, got {tuple(x_adv.shape)}")
    dims = tuple(range(2, x.ndim))
    big_x = torch.fft.fftn(_work(x.detach()), dim=dims, norm="ortho")
    diff = torch.fft.fftn(_work(x_adv.detach()), dim=dims, norm="ortho") - big_x
    return (sample_norm(diff) / sample_norm(big_x)).flatten()
