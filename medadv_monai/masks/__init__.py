"""Spatial attack masks: where, and how strongly, an adversarial attack may change an MRI slice or volume.

An attack mask :math:`m \\in [0, 1]` sets a per-voxel L-inf budget, :math:`|x' - x| \\le \\varepsilon\\, m`. Kinds:
``seg`` (the tumour), ``ring`` (a band just outside it), ``patch`` (a rectangle/ellipse/elliptical ring placed on
the slice, optionally combined with the tumour) and ``none`` (everywhere). :func:`make_attack_mask` is the entry
point; :class:`AttackMask` / :class:`AttackMaskd` wrap it as MONAI transforms.
"""

from __future__ import annotations

from medadv_monai.masks.core import (
    COMBINE_MODES,
    area,
    attackable,
    ball_kernel,
    combine_masks,
    coverage,
    dilate,
    ring_mask,
    seg_mask,
    soften,
)
from medadv_monai.masks.factory import MASK_KINDS, make_attack_mask
from medadv_monai.masks.patch import ANCHORS, SHAPES, UNITS, PatchSpec, PatchSpecLike, patch_mask
from medadv_monai.masks.transforms import AttackMask, AttackMaskD, AttackMaskd, AttackMaskDict

__all__ = [
    "ANCHORS",
    "COMBINE_MODES",
    "MASK_KINDS",
    "SHAPES",
    "UNITS",
    "AttackMask",
    "AttackMaskD",
    "AttackMaskDict",
    "AttackMaskd",
    "PatchSpec",
    "PatchSpecLike",
    "area",
    "attackable",
    "ball_kernel",
    "combine_masks",
    "coverage",
    "dilate",
    "make_attack_mask",
    "patch_mask",
    "ring_mask",
    "seg_mask",
    "soften",
]
