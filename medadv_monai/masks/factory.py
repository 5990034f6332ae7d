"""The one entry point configs use to build an attack mask: :func:`make_attack_mask`."""

from __future__ import annotations

import torch

from medadv_monai.errors import MedAdvInputError
from medadv_monai.masks.core import check_batch, check_sigma, float_dtype, ring_mask, seg_mask, soften
from medadv_monai.masks.patch import PatchSpec, PatchSpecLike, patch_mask

__all__ = ["MASK_KINDS", "make_attack_mask"]

MASK_KINDS: tuple[str, ...] = ("none", "seg", "ring", "patch")


def _full_mask(like: torch.Tensor) -> torch.Tensor:
    """All ones, ``(N, 1, *spatial)`` like ``like`` (an unrestricted L-inf attack)."""
    check_batch(like, "like")
    return torch.ones((like.shape[0], 1, *like.shape[2:]), device=like.device, dtype=float_dtype(like))


def make_attack_mask(
    kind: str,
    tumour: torch.Tensor | None,
    *,
    width: int = 3,
    patch: PatchSpecLike | None = None,
    sigma: float = 0.0,
    generator: torch.Generator | None = None,
    like: torch.Tensor | None = None,
) -> torch.Tensor:
    """Build the attack mask ``m`` of one kind for a batch, then soften its edges.

    ==========  ========================================================================
    kind        mask
    ==========  ========================================================================
    ``none``    all ones (no spatial restriction), shaped ``(N, 1, *spatial)`` of ``like`` or ``tumour``
    ``seg``     the tumour :math:`T` (:func:`~medadv_monai.masks.core.seg_mask`)
    ``ring``    :math:`(T \\oplus B_{width}) \\setminus T` (:func:`~medadv_monai.masks.core.ring_mask`)
    ``patch``   :func:`~medadv_monai.masks.patch.patch_mask` with ``patch`` (2D only)
    ==========  ========================================================================

    followed by :func:`~medadv_monai.masks.core.soften` with ``sigma``.

    Args:
        kind: one of :data:`MASK_KINDS`.
        tumour: tumour mask ``(N, C, *spatial)``; may be ``None`` for ``none`` and for tumour-free patches when
            ``like`` is given.
        width: ring width in pixels (``ring`` only), ``>= 1``.
        patch: patch spec (``patch`` only): :class:`~medadv_monai.masks.patch.PatchSpec`, dict, compact string or
            ``None`` for the default.
        sigma: Gaussian edge softening in pixels, ``>= 0`` (0: hard mask).
        generator: torch random generator for random patch placement.
        like: tensor giving the batch, spatial shape, device and dtype when there is no tumour (e.g. the image);
            for ``patch`` it takes precedence over the tumour's shape.

    Returns:
        Float tensor ``(N, 1, *spatial)`` with values in [0, 1].

    Raises:
        MedAdvInputError: unknown ``kind``, ``width < 1``, ``sigma < 0``, a missing tumour, or any error of the
            underlying mask function.
    """
    if kind not in MASK_KINDS:
        raise MedAdvInputError(f"attack mask kind: expected one of {list(MASK_KINDS)}, got {kind!r}")
    sigma = check_sigma(sigma)
    if tumour is None and (kind in ("seg", "ring") or like is None):
        raise MedAdvInputError(f"attack mask kind {kind!r} needs a tumour mask (or `like` for 'none'/'patch')")
    if kind == "none":
        mask = _full_mask(like if like is not None else tumour)
    elif kind == "seg":
        mask = seg_mask(tumour)
    elif kind == "ring":
        mask = ring_mask(tumour, width)
    else:
        mask = patch_mask(like if like is not None else tumour, PatchSpec.from_any(patch), tumour, generator)
    return soften(mask, sigma)
