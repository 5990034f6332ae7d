"""Intensity scaling of MRI volumes to [0, 1] inside a foreground; everything outside it becomes exactly 0.

Scanners give MRI intensities no fixed unit, and releases differ: raw BraTS volumes hold non-negative integers with
a zero background, pre-processed releases are z-scored inside the brain (negative values; the background 0, or a
constant below every brain voxel). Each volume and modality is therefore scaled by robust percentiles of its own
*foreground* voxels ``B``::

    y = clip((x - p_lower) / (p_upper - p_lower), 0, 1)  on B,    y = 0  elsewhere

The foreground is chosen by ``foreground``:

- ``"nonzero"`` (default): voxels that are not 0, the skull-stripped brain of raw BraTS and of z-scored releases
  that keep a zero background. A z-scored release whose background is a constant other than 0 still ends with
  background 0, as that constant is its lowest value and so at or below ``p_lower``;
- ``"above_min"``: voxels above the volume's minimum, the brain of a z-scored release whose background is a constant
  lowest value (its percentiles are then those of the brain alone);
- ``"all"``: every voxel (phantoms, volumes without background);
- any other name: a key of the data dict holding a brain mask volume (e.g. ``brain_mask`` found by an alias table),
  whose non-zero voxels are the foreground.
"""

from __future__ import annotations

from collections.abc import Hashable, Mapping
from typing import Any

import numpy as np
import torch
from monai.config import KeysCollection
from monai.data import MetaTensor
from monai.transforms import MapTransform, Transform

from medadv_monai.errors import MedAdvInputError

__all__ = ["FOREGROUNDS", "RobustScaleIntensity", "RobustScaleIntensityd", "foreground_mask"]

FOREGROUNDS: tuple[str, ...] = ("nonzero", "above_min", "all")
"""The foreground rules that need no mask file."""


def foreground_mask(x: torch.Tensor, foreground: str, mask: torch.Tensor | None = None) -> torch.Tensor:
    """The boolean foreground of one channel ``x`` by rule ``foreground`` (``mask``'s non-zero voxels for a key)."""
    if foreground == "nonzero":
        return x != 0
    if foreground == "above_min":
        return x > x.min()
    if foreground == "all":
        return torch.ones_like(x, dtype=torch.bool)
    if mask is None:
        raise MedAdvInputError(f"foreground {foreground!r}: no brain mask given; expected one of {list(FOREGROUNDS)} "
                               "or the key of a brain-mask volume in the data")
    return torch.as_tensor(mask).reshape(x.shape) != 0


class RobustScaleIntensity(Transform):
    """Robust per-channel scaling to [0, 1] with percentiles of the foreground voxels; the rest is exactly 0.

    For each channel with foreground voxels ``B``: ``y = clip((x - p_lower) / (p_upper - p_lower), 0, 1)`` on ``B``
    and ``y = 0`` elsewhere, where ``p_q`` is the q-th percentile of ``x[B]``. A channel whose percentiles coincide
    is mapped to 1 on ``B``.

    Args:
        lower: lower percentile (default 1).
        upper: upper percentile (default 99).
        foreground: ``"nonzero"``, ``"above_min"``, ``"all"`` (see the module docstring), or ``"mask"``: the
            foreground is given to each call as ``mask``.
    """

    def __init__(self, lower: float = 1.0, upper: float = 99.0, foreground: str = "nonzero") -> None:
        if not 0 <= lower < upper <= 100:
            raise MedAdvInputError(f"percentiles lower={lower}, upper={upper}: expected 0 <= lower < upper <= 100")
        if not isinstance(foreground, str) or not foreground:
            raise MedAdvInputError(f"foreground {foreground!r}: expected one of {list(FOREGROUNDS)} or a mask key")
        self.lower, self.upper, self.foreground = float(lower), float(upper), foreground

    def __call__(self, img: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        out = torch.zeros_like(torch.as_tensor(img), dtype=torch.float32)
        for c in range(img.shape[0]):
            x = torch.as_tensor(img[c]).float()
            fg = foreground_mask(x, self.foreground, mask)
            if not bool(fg.any()):
                continue
            lo, hi = np.percentile(x[fg].numpy(), [self.lower, self.upper])
            scaled = (x - lo) / (hi - lo) if hi > lo else torch.ones_like(x)
            out[c] = torch.where(fg, scaled.clamp(0, 1), torch.zeros_like(x))
        if isinstance(img, MetaTensor):
            out = MetaTensor(out, meta=img.meta)
        return out


class RobustScaleIntensityd(MapTransform):
    """Dictionary wrapper of :class:`RobustScaleIntensity`.

    Args:
        keys: the modality keys to scale.
        lower, upper: percentiles.
        foreground: ``"nonzero"`` (default), ``"above_min"``, ``"all"``, or the key of a brain-mask volume in the
            data dict (loaded with the modalities).
    """

    def __init__(self, keys: KeysCollection, lower: float = 1.0, upper: float = 99.0, foreground: str = "nonzero",
                 allow_missing_keys: bool = False) -> None:
        super().__init__(keys, allow_missing_keys)
        self.mask_key = None if foreground in FOREGROUNDS else foreground
        self.scaler = RobustScaleIntensity(lower, upper, foreground)

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        d = dict(data)
        mask = None
        if self.mask_key is not None:
            if self.mask_key not in d:
                raise MedAdvInputError(
                    f"foreground {self.mask_key!r}: subject {d.get('subject', '?')!r} has no {self.mask_key!r} "
                    f"volume; expected one of {list(FOREGROUNDS)} or the key of a brain mask the layout finds")
            mask = d[self.mask_key]
        for key in self.key_iterator(d):
            d[key] = self.scaler(d[key], mask)
        return d
