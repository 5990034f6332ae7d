"""Target masks of targeted segmentation attacks: erase the tumour, implant another subject's, or a given mask.

=========  ===================================================================================================
kind       target of a sample with region masks ``G`` ``(R, *spatial)``
=========  ===================================================================================================
``erase``  all zeros: the model should see no tumour
``implant``  the region masks of a tumour slice of *another subject*, drawn from a bank: entry
           ``crc32("<subject>:<slice>") mod B`` of the ``B`` bank slices of other subjects, so the choice depends on
           the sample alone (not on its batch-mates, the batch size or the order)
``given``  the mask already in the data under ``target_key`` (e.g. loaded from a file by the data chain)
=========  ===================================================================================================
"""

from __future__ import annotations

import zlib
from collections.abc import Hashable, Iterable, Mapping, Sequence
from typing import Any

import torch
from monai.config import KeysCollection
from monai.transforms import MapTransform

from medadv_monai.errors import MedAdvInputError

__all__ = ["SEG_TARGETS", "SegTargetd", "implant_bank"]

SEG_TARGETS = ("erase", "implant", "given")


def implant_bank(samples: Iterable[Mapping[str, Any]], mask_key: str = "mask") -> list[tuple[str, torch.Tensor]]:
    """``(subject, region masks)`` of every sample that holds tumour, in order: the bank of ``implant`` targets.

    Args:
        samples: dicts with ``subject`` and the region masks under ``mask_key`` (e.g. a dataset of cached slices).
        mask_key: key of the region masks ``(R, *spatial)``.
    """
    bank = []
    for s in samples:
        m = torch.as_tensor(s[mask_key])
        if bool(m.any()):
            bank.append((str(s.get("subject", "")), (m > 0).to(torch.uint8)))
    return bank


class SegTargetd(MapTransform):
    """Write the target masks of a targeted segmentation attack under ``target_key`` (see the module table).

    Args:
        keys: the region masks (ground truth) key, normally ``"mask"``.
        kind: ``"erase"``, ``"implant"`` or ``"given"``.
        bank: ``implant``: :func:`implant_bank` of the slices to draw from (other subjects only).
        samples: ``implant``, instead of ``bank``: the samples (e.g. a dataset) to build it from, on first use (so a
            transform that is configured but never used reads nothing).
        target_key: where the target goes (``given``: where it already is).
    """

    def __init__(self, keys: KeysCollection = "mask", kind: str = "erase",
                 bank: Sequence[tuple[str, torch.Tensor]] | None = None, samples: Iterable[Mapping] | None = None,
                 target_key: Hashable = "target", allow_missing_keys: bool = False) -> None:
        super().__init__(keys, allow_missing_keys)
        if kind not in SEG_TARGETS:
            raise MedAdvInputError(f"segmentation target kind {kind!r}: expected one of {list(SEG_TARGETS)}")
        if kind == "implant" and not bank and samples is None:
            raise MedAdvInputError("an 'implant' target needs a bank of tumour slices (bank=implant_bank(...) or "
                                   "samples=...); got none")
        self.kind, self.target_key, self.samples = kind, target_key, samples
        self.bank = list(bank) if bank else None
        self._bank: list[tuple[str, torch.Tensor]] | None = self.bank

    def _the_bank(self) -> list[tuple[str, torch.Tensor]]:
        if self._bank is None:
            self._bank = implant_bank(self.samples, str(self.keys[0])) if self.samples is not None else []
            if not self._bank:
                raise MedAdvInputError("an 'implant' target needs tumour slices to draw from; the samples hold none")
        return self._bank

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        d = dict(data)
        for key in self.key_iterator(d):
            gt = torch.as_tensor(d[key])
            if self.kind == "erase":
                d[self.target_key] = torch.zeros_like(gt, dtype=torch.float32)
            elif self.kind == "given":
                if self.target_key not in d:
                    raise MedAdvInputError(f"target kind 'given': the sample has no {self.target_key!r}; "
                                           f"available keys: {list(d)}")
            else:
                d[self.target_key] = self._implant(d, gt)
        return d

    def _implant(self, d: Mapping[Hashable, Any], gt: torch.Tensor) -> torch.Tensor:
        subject = str(d.get("subject", ""))
        others = [m for s, m in self._the_bank() if s != subject]
        if not others:
            raise MedAdvInputError(f"implant target for subject {subject!r}: the bank holds no tumour slice of "
                                   "another subject")
        pick = others[zlib.crc32(f"{subject}:{d.get('slice_index', '')}".encode()) % len(others)]
        if pick.shape != gt.shape:
            raise MedAdvInputError(f"implant target of shape {tuple(pick.shape)} does not match the masks "
                                   f"{tuple(gt.shape)} of subject {subject!r}")
        return pick.to(torch.float32)
