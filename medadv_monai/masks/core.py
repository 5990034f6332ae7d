"""Batched torch functions that build and measure attack masks.

An attack mask :math:`m \\in [0, 1]` is a per-voxel L-inf budget: an attack may change voxel :math:`i` by at most
:math:`\\varepsilon\\, m_i`. Every function here works on batches shaped ``(N, C, *spatial)`` with two or three
spatial dimensions, stays on the input's device, and returns a floating tensor (the input's floating dtype, or
``float32`` for bool/integer input). Masks are returned with a single channel, ``(N, 1, *spatial)``, so they
broadcast against multi-channel images.

A tumour mask ``T`` may be bool, integer or float; a voxel is tumour where ``T > 0``. A multi-channel tumour (e.g. the
BraTS TC/WT/ET channels) is reduced to the union of its channels.
"""

from __future__ import annotations

import math
from typing import Sequence

import torch
import torch.nn.functional as F

from medadv_monai.errors import MedAdvInputError

__all__ = [
    "COMBINE_MODES",
    "area",
    "attackable",
    "ball_kernel",
    "combine_masks",
    "coverage",
    "dilate",
    "ring_mask",
    "seg_mask",
    "soften",
]

COMBINE_MODES: tuple[str, ...] = ("none", "union", "intersect", "patch_minus_seg", "seg_minus_patch")

_CONV = {2: F.conv2d, 3: F.conv3d}


def float_dtype(t: torch.Tensor) -> torch.dtype:
    """The floating dtype masks derived from ``t`` are returned in: ``t``'s own if floating, else ``float32``."""
    return t.dtype if t.is_floating_point() else torch.float32


def check_batch(t: torch.Tensor, name: str, spatial_dims: Sequence[int] = (2, 3)) -> int:
    """Check that ``t`` is a tensor shaped ``(N, C, *spatial)`` and return its number of spatial dimensions.

    Raises:
        MedAdvInputError: ``t`` is not a tensor, or its number of spatial dimensions is not in ``spatial_dims``.
    """
    if not isinstance(t, torch.Tensor):
        raise MedAdvInputError(f"{name}: expected a torch.Tensor shaped (N, C, *spatial), got {type(t).__name__}")
    nsp = t.ndim - 2
    if nsp not in spatial_dims:
        shapes = " or ".join({2: "(N, C, H, W)", 3: "(N, C, D, H, W)"}[d] for d in spatial_dims)
        raise MedAdvInputError(f"{name}: expected a tensor shaped {shapes}, got shape {tuple(t.shape)}")
    return nsp


def seg_mask(tumour: torch.Tensor) -> torch.Tensor:
    """The tumour itself as a hard mask.

    .. math:: m = \\mathbb{1}[\\max_c T_c > 0]

    Args:
        tumour: bool/int/float tensor ``(N, C, *spatial)``, 2 or 3 spatial dims; non-zero (positive) is tumour.

    Returns:
        Float tensor ``(N, 1, *spatial)`` with values in ``{0, 1}``.
    """
    check_batch(tumour, "tumour")
    return (tumour > 0).any(dim=1, keepdim=True).to(float_dtype(tumour))


def ball_kernel(radius: int, ndim: int, device: torch.device | str | None = None) -> torch.Tensor:
    """Euclidean disk (2D) or ball (3D) structuring element.

    .. math:: K_o = \\mathbb{1}[\\lVert o \\rVert_2 \\le r], \\quad o \\in \\{-r, \\dots, r\\}^{d}

    Returns:
        Float32 tensor shaped ``(1, 1, 2r+1, ..., 2r+1)`` (a conv weight).
    """
    axis = torch.arange(-radius, radius + 1, device=device, dtype=torch.float32)
    grids = torch.meshgrid(*([axis] * ndim), indexing="ij")
    dist2 = sum(g**2 for g in grids)
    return (dist2 <= radius**2).float()[None, None]


def dilate(mask: torch.Tensor, radius: int) -> torch.Tensor:
    """Binary dilation of a hard mask by a Euclidean disk/ball of ``radius`` voxels (zero outside the image).

    .. math:: (M \\oplus K)_p = \\mathbb{1}\\Big[\\sum_o M_{p+o} K_o > 0\\Big]

    Args:
        mask: ``(N, 1, *spatial)`` tensor with values in ``{0, 1}``, 2 or 3 spatial dims.
        radius: radius of the structuring element in voxels, ``>= 0``.

    Returns:
        Float32 tensor ``(N, 1, *spatial)`` with values in ``{0, 1}``.
    """
    nsp = check_batch(mask, "mask")
    kernel = ball_kernel(radius, nsp, device=mask.device)
    counts = _CONV[nsp](mask.float(), kernel, padding=radius)
    return (counts > 0.5).float()


def ring_mask(tumour: torch.Tensor, width: int) -> torch.Tensor:
    """The band of ``width`` voxels just outside the tumour.

    .. math:: m = (T \\oplus B_w) \\setminus T

    where :math:`B_w` is the Euclidean disk (2D) or ball (3D) of radius ``width``. For a single-voxel tumour the ring
    is the disk of radius ``width`` minus its centre. An empty tumour gives an empty ring.

    Args:
        tumour: bool/int/float tensor ``(N, C, *spatial)``, 2 or 3 spatial dims.
        width: ring width in voxels, an integer ``>= 1``.

    Returns:
        Float tensor ``(N, 1, *spatial)`` with values in ``{0, 1}``.

    Raises:
        MedAdvInputError: ``width`` is not an integer ``>= 1``.
    """
    if isinstance(width, bool) or not isinstance(width, int) or width < 1:
        raise MedAdvInputError(f"ring width: expected an integer >= 1 (pixels), got {width!r}")
    t = seg_mask(tumour)
    return (dilate(t, width) * (1 - t.float())).to(t.dtype)


def broadcast_pair(a: torch.Tensor, b: torch.Tensor, names: tuple[str, str]) -> tuple[torch.Tensor, torch.Tensor]:
    """Broadcast two masks against each other, raising :class:`MedAdvInputError` if their shapes do not fit."""
    try:
        shape = torch.broadcast_shapes(a.shape, b.shape)
    except RuntimeError:
        raise MedAdvInputError(
            f"{names[1]} shape {tuple(b.shape)} is not broadcastable to {names[0]} shape {tuple(a.shape)}"
        ) from None
    return a.expand(shape), b.expand(shape)


def combine_masks(patch: torch.Tensor, tumour: torch.Tensor, mode: str) -> torch.Tensor:
    """Combine a patch mask with the tumour mask (fuzzy set algebra: min/max, so soft patches stay in [0, 1]).

    ==================  ==========================  ===================
    mode                formula                     sets (hard masks)
    ==================  ==========================  ===================
    ``none``            :math:`P`                   :math:`P`
    ``union``           :math:`\\max(P, T)`          :math:`P \\cup T`
    ``intersect``       :math:`\\min(P, T)`          :math:`P \\cap T`
    ``patch_minus_seg`` :math:`\\min(P, 1 - T)`      :math:`P \\setminus T`
    ``seg_minus_patch`` :math:`\\min(T, 1 - P)`      :math:`T \\setminus P`
    ==================  ==========================  ===================

    Args:
        patch: mask ``(N, 1, *spatial)`` with values in [0, 1].
        tumour: bool/int/float tumour ``(N, C, *spatial)``, binarised with :func:`seg_mask`; must broadcast with
            ``patch``.
        mode: one of :data:`COMBINE_MODES`.

    Returns:
        Float tensor of the broadcast shape, in ``patch``'s floating dtype (or float32).

    Raises:
        MedAdvInputError: unknown ``mode`` or shapes that do not broadcast.
    """
    if mode not in COMBINE_MODES:
        raise MedAdvInputError(f"combine mode: expected one of {list(COMBINE_MODES)}, got {mode!r}")
    p = patch.to(float_dtype(patch))
    t = seg_mask(tumour).to(device=p.device, dtype=p.dtype)
    p, t = broadcast_pair(p, t, ("mask", "tumour"))
    if mode == "none":
        return p.clone()
    if mode == "union":
        return torch.maximum(p, t)
    if mode == "intersect":
        return torch.minimum(p, t)
    if mode == "patch_minus_seg":
        return torch.minimum(p, 1 - t)
    return torch.minimum(t, 1 - p)


def _gaussian_1d(sigma: float, device: torch.device) -> torch.Tensor:
    """Normalised 1D Gaussian kernel truncated at ``ceil(3 sigma)`` (at least 1) voxels either side."""
    radius = max(1, math.ceil(3.0 * sigma))
    x = torch.arange(-radius, radius + 1, device=device, dtype=torch.float32)
    k = torch.exp(-0.5 * (x / sigma) ** 2)
    return k / k.sum()


def soften(mask: torch.Tensor, sigma: float) -> torch.Tensor:
    """Soften a mask's edges with a separable Gaussian blur of standard deviation ``sigma`` voxels.

    .. math:: m' = \\operatorname{clip}(G_\\sigma * m,\\ 0,\\ 1)

    The kernel is normalised and truncated at :math:`\\lceil 3\\sigma \\rceil` voxels; the image border is padded by
    replicating the edge values, so a mask that touches the border keeps its value there. Because every output voxel
    is a convex combination of input voxels, a mask in [0, 1] stays in [0, 1]. ``sigma == 0`` returns the mask
    unchanged (converted to a floating dtype; no copy if it already is one).

    Args:
        mask: ``(N, C, *spatial)`` tensor, 2 or 3 spatial dims.
        sigma: standard deviation in voxels, ``>= 0``.

    Returns:
        Float tensor shaped like ``mask``.

    Raises:
        MedAdvInputError: ``sigma`` is negative or not a finite number.
    """
    sigma = check_sigma(sigma)
    nsp = check_batch(mask, "mask")
    out = mask.to(float_dtype(mask))
    if sigma == 0:
        return out
    dtype = out.dtype
    n, c = out.shape[:2]
    x = out.float().reshape(n * c, 1, *out.shape[2:])
    k = _gaussian_1d(sigma, x.device)
    r = (k.numel() - 1) // 2
    for d in range(nsp):
        shape = [1, 1] + [1] * nsp
        shape[2 + d] = k.numel()
        pad = [0, 0] * nsp
        pad[2 * (nsp - 1 - d)] = pad[2 * (nsp - 1 - d) + 1] = r  # F.pad lists the last dim first
        x = _CONV[nsp](F.pad(x, pad, mode="replicate"), k.reshape(shape))
    return x.clamp_(0.0, 1.0).reshape(out.shape).to(dtype)


def check_sigma(sigma: float) -> float:
    """Validate a blur ``sigma`` (a finite number ``>= 0``) and return it as a float."""
    try:
        value = float(sigma)
    except (TypeError, ValueError):
        raise MedAdvInputError(f"sigma: expected a number >= 0 (pixels), got {sigma!r}") from None
    if not math.isfinite(value) or value < 0:
        raise MedAdvInputError(f"sigma: expected a number >= 0 (pixels), got {sigma!r}")
    return value


def coverage(mask: torch.Tensor, tumour: torch.Tensor) -> torch.Tensor:
    """Fraction of the tumour covered by the mask, per sample.

    .. math:: \\mathrm{cov}_n = \\frac{\\sum_i m_{n,i}\\, T_{n,i}}{\\sum_i T_{n,i}}

    NaN for samples whose tumour is empty (coverage is undefined there; use ``torch.nanmean`` to aggregate).

    Args:
        mask: ``(N, 1, *spatial)`` mask in [0, 1].
        tumour: bool/int/float tumour ``(N, C, *spatial)``, binarised with :func:`seg_mask`; must broadcast with
            ``mask``.

    Returns:
        Float tensor ``(N,)``.
    """
    m = mask.to(float_dtype(mask))
    t = seg_mask(tumour).to(device=m.device, dtype=m.dtype)
    m, t = broadcast_pair(m, t, ("mask", "tumour"))
    covered = (m * t).flatten(1).sum(dim=1)
    total = t.flatten(1).sum(dim=1)
    return torch.where(total > 0, covered / total.clamp_min(1), torch.full_like(total, float("nan")))


def area(mask: torch.Tensor) -> torch.Tensor:
    """Mean mask value per sample, i.e. the attacked fraction of the image for a hard mask.

    .. math:: \\mathrm{area}_n = \\frac{1}{|\\Omega|} \\sum_{i \\in \\Omega} m_{n,i}

    Returns:
        Float tensor ``(N,)``.
    """
    return mask.to(float_dtype(mask)).flatten(1).mean(dim=1)


def attackable(mask: torch.Tensor) -> torch.Tensor:
    """Whether each sample's mask lets the attack change anything: :math:`\\exists i: m_{n,i} \\ne 0`.

    Returns:
        Bool tensor ``(N,)``.
    """
    return (mask != 0).flatten(1).any(dim=1)
