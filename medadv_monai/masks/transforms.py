"""MONAI transforms that turn a tumour mask into an attack mask.

:class:`AttackMask` works on one sample shaped ``(C, *spatial)`` (no batch dimension) and
:class:`AttackMaskd` is its dictionary version. Both are :class:`~monai.transforms.Randomizable`: random patch
placement draws a seed from ``self.R`` for a fresh :class:`torch.Generator`, so ``set_random_state(seed)`` (directly
or through ``Compose``) makes them deterministic.
"""

from __future__ import annotations

from typing import Hashable, Mapping, Sequence

import numpy as np
import torch
from monai.config import KeysCollection, NdarrayOrTensor
from monai.data.meta_obj import get_track_meta
from monai.transforms import MapTransform, Randomizable, Transform
from monai.utils import TransformBackends, convert_to_dst_type, convert_to_tensor, ensure_tuple

from medadv_monai.errors import MedAdvInputError
from medadv_monai.masks.core import check_sigma
from medadv_monai.masks.factory import MASK_KINDS, make_attack_mask
from medadv_monai.masks.patch import PatchSpec, PatchSpecLike

__all__ = ["AttackMask", "AttackMaskD", "AttackMaskDict", "AttackMaskd"]

_SEED_HIGH = 2**31 - 1


class AttackMask(Randomizable, Transform):
    """Make the attack mask of one sample from its tumour mask.

    See :func:`~medadv_monai.masks.factory.make_attack_mask` for the kinds and their formulas.

    Args:
        kind: ``"none"``, ``"seg"``, ``"ring"`` or ``"patch"``.
        width: ring width in pixels (``ring``).
        patch: patch spec (``patch``): :class:`~medadv_monai.masks.patch.PatchSpec`, dict or compact string.
        sigma: Gaussian edge softening in pixels (0: hard mask).
    """

    backend = [TransformBackends.TORCH, TransformBackends.NUMPY]

    def __init__(self, kind: str, width: int = 3, patch: PatchSpecLike | None = None, sigma: float = 0.0) -> None:
        if kind not in MASK_KINDS:
            raise MedAdvInputError(f"attack mask kind: expected one of {list(MASK_KINDS)}, got {kind!r}")
        self.kind = kind
        self.width = width
        self.patch = PatchSpec.from_any(patch) if kind == "patch" else patch
        self.sigma = check_sigma(sigma)
        self._seed = 0

    def randomize(self, data: object = None) -> None:
        """Draw the seed of the torch generator used for random patch placement from ``self.R``."""
        self._seed = int(self.R.randint(_SEED_HIGH))

    def __call__(self, img: NdarrayOrTensor, randomize: bool = True) -> torch.Tensor:
        """Args:
            img: tumour mask ``(C, *spatial)``, numpy or torch (MetaTensor metadata is kept on the output).
            randomize: draw a new seed first; ``False`` reuses the last one.

        Returns:
            Float tensor ``(1, *spatial)`` with values in [0, 1].
        """
        if randomize:
            self.randomize()
        tumour = convert_to_tensor(img, track_meta=get_track_meta())
        plain = tumour.as_tensor() if hasattr(tumour, "as_tensor") else tumour
        generator = torch.Generator().manual_seed(self._seed)
        mask = make_attack_mask(
            self.kind, plain[None], width=self.width, patch=self.patch, sigma=self.sigma, generator=generator
        )[0]
        out, *_ = convert_to_dst_type(mask, dst=tumour, dtype=mask.dtype)
        return out


class AttackMaskd(Randomizable, MapTransform):
    """Dictionary version of :class:`AttackMask`: reads the tumour mask(s) and writes the attack mask(s).

    The tumour under ``keys`` is left unchanged; the attack mask goes to ``output_key``.

    Args:
        keys: key(s) of the tumour mask, normally ``"mask"``.
        output_key: where to write the attack mask; with several keys, a sequence of the same length.
        kind, width, patch, sigma: see :class:`AttackMask`.
        allow_missing_keys: don't raise if a key is missing.
    """

    backend = AttackMask.backend

    def __init__(
        self,
        keys: KeysCollection,
        output_key: Hashable | Sequence[Hashable] = "attack_mask",
        kind: str = "seg",
        width: int = 3,
        patch: PatchSpecLike | None = None,
        sigma: float = 0.0,
        allow_missing_keys: bool = False,
    ) -> None:
        MapTransform.__init__(self, keys, allow_missing_keys)
        self.output_keys = ensure_tuple(output_key)
        if len(self.output_keys) != len(self.keys):
            raise MedAdvInputError(
                f"AttackMaskd output_key: expected {len(self.keys)} key(s) to match keys {list(self.keys)}, "
                f"got {list(self.output_keys)}"
            )
        self.attack_mask = AttackMask(kind=kind, width=width, patch=patch, sigma=sigma)

    def set_random_state(self, seed: int | None = None, state: np.random.RandomState | None = None) -> AttackMaskd:
        super().set_random_state(seed, state)
        self.attack_mask.set_random_state(seed, state)
        return self

    def randomize(self, data: object = None) -> None:
        self.attack_mask.randomize(data)

    def __call__(self, data: Mapping[Hashable, NdarrayOrTensor]) -> dict[Hashable, NdarrayOrTensor]:
        d = dict(data)
        for key, out_key in self.key_iterator(d, self.output_keys):
            d[out_key] = self.attack_mask(d[key])
        return d


AttackMaskD = AttackMaskDict = AttackMaskd
