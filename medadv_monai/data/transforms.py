"""MONAI transforms for the BraTS slice pipeline: volumes in, labelled axial slices out.

A bundle config chains them with MONAI's own transforms (see ``bundles/brats_slice_classifier/configs``)::

    LoadVolumesd -> ValidateVolumesd -> RobustScaleIntensityd (intensity.py) -> TumourMaskd (labels.py)
        -> Resized (modalities, in-plane) -> Resized (mask, area) -> AsDiscreted (mask > 0)
        -> ExtractAxialSlicesd -> SliceLabeld

Every modality and the seg of a subject must be one 3D volume (a 4D file whose 4th dimension is 1 counts as 3D; a
4D file with several volumes is read only through the entry's ``channels`` map, as the MSD layout writes it, one
channel per modality: otherwise its extra volumes would become extra channels and shift every later modality),
and all must share shape, orientation and affine (within ``affine_tolerance``). A volume stored in another
orientation is an error unless ``LoadVolumesd(orientation="RAS")`` (any three axis codes) reorients every volume on
load, which flips and permutes axes only (no resampling).

Volumes are resized in-plane (``spatial_size: [H, W, -1]``) before slicing: one resize per volume instead of one
per slice. ``ExtractAxialSlicesd`` turns one subject dict into a list of slice dicts; MONAI's ``Compose`` applies
every later transform to each slice. Array transforms do the work and ``...d`` transforms only walk ``keys``, as in
MONAI.
"""

from __future__ import annotations

import zlib
from collections.abc import Hashable, Mapping
from typing import Any

import nibabel as nib
import numpy as np
import torch
from monai.config import KeysCollection
from monai.data import MetaTensor
from monai.transforms import LoadImaged, MapTransform, Orientation

from medadv_monai.data.labels import ConventionSpec, resolve_convention, subject_convention
from medadv_monai.errors import MedAdvInputError

__all__ = [
    "LoadVolumesd",
    "ValidateVolumesd",
    "ExtractAxialSlicesd",
    "SliceLabeld",
    "source_name",
]


def source_name(img: Any, default: str = "<array>") -> str:
    """The file an image was loaded from (MONAI keeps it in ``meta['filename_or_obj']``), for error messages."""
    meta = getattr(img, "meta", None) or {}
    return str(meta.get("filename_or_obj", default))


class LoadVolumesd(LoadImaged):
    """``LoadImaged`` that reports an unreadable or truncated file as one clear error naming the file.

    Always ``image_only`` and channel-first; ``reader`` is any MONAI reader name, e.g. ``"NibabelReader"`` or
    ``"ITKReader"``. Where the data dict holds a ``channels_key`` map ``{key: index}`` (the MSD layout), those keys
    name one 4D file each: it is read once per call, and each key gets its channel as a 3D volume.

    Args:
        orientation: ``None`` (default): volumes stay as stored, and :class:`ValidateVolumesd` refuses a subject
            whose volumes differ in orientation. Three axis codes such as ``"RAS"``: every volume is reoriented to
            them on load (MONAI's ``Orientation``: axis flips and permutations, no resampling), so a modality
            stored flipped or transposed lines up with the others and the seg.
        channels_key: the data dict's channel map, if any (default ``"channels"``).
    """

    _LABELS = (("L", "R"), ("P", "A"), ("I", "S"))

    def __init__(self, keys: KeysCollection, reader: str | None = "NibabelReader", orientation: str | None = None,
                 channels_key: str = "channels", **kwargs: Any) -> None:
        kwargs.update(image_only=True, ensure_channel_first=True)
        super().__init__(keys, reader=reader, **kwargs)
        if orientation is not None:
            codes = str(orientation).upper()
            axes = [next((i for i, pair in enumerate(self._LABELS) if c in pair), None) for c in codes]
            if not isinstance(orientation, str) or sorted(-1 if a is None else a for a in axes) != [0, 1, 2]:
                raise MedAdvInputError(f"orientation {orientation!r}: expected three axis codes, one of L/R, one "
                                       "of P/A and one of I/S, e.g. 'RAS', or None to keep volumes as stored")
            orientation = codes
        self.orientation, self.channels_key = orientation, channels_key
        self._orient = None if orientation is None else Orientation(axcodes=orientation, labels=self._LABELS)

    def __call__(self, data: Mapping[Hashable, Any], reader: Any = None) -> dict[Hashable, Any]:
        d = dict(data)
        channels = d.get(self.channels_key) or {}
        read: dict[str, Any] = {}  # a file named by several channel keys is read once
        for key in self.key_iterator(d):
            path = d[key]
            if key in channels:
                if path not in read:
                    read[path] = self._read(path, key, reader)
                d[key] = _channel(read[path], channels[key], key)
            else:
                d[key] = self._read(path, key, reader)
            if self._orient is not None and d[key].ndim == 4:  # other shapes: ValidateVolumesd names the file
                d[key] = self._orient(d[key])
        return d

    def _read(self, path: Any, key: Hashable, reader: Any) -> Any:
        try:
            return self._loader(path, reader)
        except Exception as e:  # noqa: BLE001 - every reader failure becomes one clear message
            raise MedAdvInputError(
                f"{path}: cannot read {key!r} as a NIfTI volume ({type(e).__name__}: {e}); "
                "the file may be truncated or not an image"
            ) from e


def _channel(img: Any, index: Any, key: Hashable) -> Any:
    """Channel ``index`` of a channel-first 4D image, as ``(1, X, Y, Z)``; an index it does not have is an error."""
    n = int(img.shape[0]) if img.ndim == 4 else 1
    if isinstance(index, bool) or not isinstance(index, int) or not 0 <= index < n:
        raise MedAdvInputError(f"{source_name(img)}: {key!r} is channel {index!r}, but the file has {n} channel(s) "
                               f"(shape {tuple(img.shape)}); fix the channels map or dataset.json's 'modality'")
    return img[index : index + 1]


class ValidateVolumesd(MapTransform):
    """Check loaded volumes before any work is done on them.

    Checks that every key is one 3D volume (a file whose 4th dimension is 1 counts as 3D; other 4D files are
    refused), that all keys share spatial shape, orientation and affine (voxel spacing, origin, direction, each
    within ``affine_tolerance``), that voxels are finite, that no modality is all zero, and that the segmentation
    holds only the labels of its label convention. Each failure raises :class:`MedAdvInputError` naming the file
    (both files for a mismatch) and what was expected. The data pass through unchanged.

    Args:
        keys: image keys (modalities and seg).
        seg_key: the segmentation key, checked for labels instead of emptiness.
        label_convention: the convention's name, ``"auto"`` (each subject's layout's, read from ``layout_key``) or
            a custom mapping (:func:`~medadv_monai.data.labels.resolve_convention`); its labels are the ones a
            segmentation may hold (BraTS 2021: 0, 1, 2, 4).
        affine_tolerance: the largest absolute difference allowed between two volumes' spacing (mm), origin (mm)
            and direction cosines (default 1e-3: header rounding passes, a real offset does not).
    """

    def __init__(
        self,
        keys: KeysCollection,
        seg_key: str | None = "seg",
        label_convention: ConventionSpec = "auto",
        affine_tolerance: float = 1e-3,
        layout_key: str = "layout",
        allow_missing_keys: bool = False,
    ) -> None:
        super().__init__(keys, allow_missing_keys)
        self.seg_key, self.layout_key = seg_key, layout_key
        if label_convention != "auto":
            resolve_convention(label_convention)  # an unknown name fails before any file is read
        self.label_convention = label_convention
        if isinstance(affine_tolerance, bool) or not isinstance(affine_tolerance, (int, float)) \
                or not 0 <= affine_tolerance < float("inf"):
            raise MedAdvInputError(f"affine_tolerance={affine_tolerance!r}: expected a finite number >= 0")
        self.affine_tolerance = float(affine_tolerance)

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        d = dict(data)
        ref_key, ref_shape = None, None
        for key in self.key_iterator(d):
            img = d[key]
            name = source_name(img)
            _check_3d(img, key, name)
            shape = tuple(img.shape[1:])
            if ref_shape is None:
                ref_key, ref_shape = key, shape
            elif shape != ref_shape:
                raise MedAdvInputError(
                    f"{name}: {key!r} has shape {shape} but {ref_key!r} ({source_name(d[ref_key])}) has {ref_shape}; "
                    "all modalities and the seg of a subject must share one grid"
                )
            else:
                self._check_geometry(img, key, d[ref_key], ref_key)
            arr = torch.as_tensor(img)
            if key == self.seg_key:
                self._check_labels(arr, name, d)
                continue
            bad = (~torch.isfinite(arr)).sum().item()
            if bad:
                raise MedAdvInputError(f"{name}: {bad} NaN or Inf voxel(s) in {key!r}; expected finite intensities")
            if not bool(arr.any()):
                raise MedAdvInputError(f"{name}: {key!r} is all zero; expected a brain volume")
        return d

    def _check_geometry(self, img: Any, key: Hashable, ref: Any, ref_key: Hashable) -> None:
        """Same orientation, spacing, origin and direction as the first key (volumes without an affine pass)."""
        if not isinstance(img, MetaTensor) or not isinstance(ref, MetaTensor):
            return
        a, b = (np.asarray(x.affine, dtype=np.float64) for x in (img, ref))
        both = f"{source_name(img)}: {key!r} and {ref_key!r} ({source_name(ref)})"
        codes_a, codes_b = ("".join(nib.aff2axcodes(x)) for x in (a, b))
        if codes_a != codes_b:
            raise MedAdvInputError(
                f"{both} differ in orientation: {codes_a} vs {codes_b}; all modalities and the seg of a subject must "
                "share one orientation (or reorient every volume on load: --orientation RAS)")
        spacing_a, spacing_b = (np.linalg.norm(x[:3, :3], axis=0) for x in (a, b))
        for what, va, vb in (("voxel spacing", spacing_a, spacing_b), ("origin", a[:3, 3], b[:3, 3]),
                             ("direction", a[:3, :3] / spacing_a, b[:3, :3] / spacing_b)):
            if np.abs(va - vb).max() > self.affine_tolerance:
                raise MedAdvInputError(
                    f"{both} differ in {what}: {_fmt(va)} vs {_fmt(vb)} (tolerance {self.affine_tolerance:g}); all "
                    "modalities and the seg of a subject must share one grid (shape, orientation and affine)")

    def _check_labels(self, seg: torch.Tensor, name: str, data: Mapping[Hashable, Any]) -> None:
        if not bool(torch.isfinite(seg).all()):
            raise MedAdvInputError(f"{name}: NaN or Inf in the segmentation; expected integer labels")
        convention = subject_convention(self.label_convention, data, self.layout_key)
        convention.check(torch.unique(seg).tolist(), name)


def _check_3d(img: Any, key: Hashable, name: str) -> None:
    """One 3D volume, loaded channel-first as (1, X, Y, Z); the message gives the file's own shape."""
    if img.ndim == 4 and img.shape[0] == 1:
        return
    meta = getattr(img, "meta", None) or {}
    dim = np.asarray(meta.get("dim", [])).astype(int).tolist()
    if dim and 0 < dim[0] < len(dim):
        file_shape = tuple(dim[1 : dim[0] + 1])
    else:
        file_shape = tuple(img.shape[1:]) + ((int(img.shape[0]),) if img.shape[0] != 1 else ())
    raise MedAdvInputError(
        f"{name}: {key!r} has shape {file_shape} ({len(file_shape)}D); expected one 3D volume per modality and seg "
        "(a 4D file is read only when its 4th dimension is 1)")


def _fmt(v: np.ndarray) -> list:
    return np.round(np.asarray(v, dtype=np.float64), 4).tolist()


class ExtractAxialSlicesd(MapTransform):
    """Cut a subject's volumes into axial slices: one dict in, a list of slice dicts out.

    Each output dict holds, for every key, the slice ``(C, H, W)`` as a plain tensor, plus ``slice_index`` and
    ``nonzero_fraction``; every other entry of the input (``subject``, file paths) is copied. Slices whose fraction
    of non-zero pixels (any of ``reference_keys``) is under ``empty_threshold`` are background and dropped.

    Optionally at most ``max_positive`` tumour slices and ``max_negative`` tumour-free slices are kept per
    subject, drawn at random with a generator seeded from ``(seed, subject)`` so the choice is the same whatever
    order or process the subjects are handled in. Kept slices stay in slice order.

    Args:
        keys: the keys to slice (modalities and the tumour mask).
        mask_key: tumour mask key, used to tell positive from negative slices for the caps.
        reference_keys: keys whose non-zero pixels count as brain (default: all keys but ``mask_key``).
        empty_threshold: minimum non-zero fraction of a kept slice (default 0.001).
        axis: spatial axis to slice along (default -1, the axial axis of BraTS volumes).
        max_positive: cap on tumour slices per subject (``None``: no cap).
        max_negative: cap on tumour-free slices per subject (``None``: no cap).
        subject_key: entry that identifies the subject for the cap's generator.
        seed: seed of the cap's generator.
    """

    def __init__(
        self,
        keys: KeysCollection,
        mask_key: str = "mask",
        reference_keys: KeysCollection | None = None,
        empty_threshold: float = 0.001,
        axis: int = -1,
        max_positive: int | None = None,
        max_negative: int | None = None,
        subject_key: str = "subject",
        seed: int = 0,
        allow_missing_keys: bool = False,
    ) -> None:
        super().__init__(keys, allow_missing_keys)
        if not 0 <= empty_threshold < 1:
            raise MedAdvInputError(f"empty_threshold={empty_threshold}: expected a fraction in [0, 1)")
        for name, cap in (("max_positive", max_positive), ("max_negative", max_negative)):
            if cap is not None and cap < 0:
                raise MedAdvInputError(f"{name}={cap}: expected a non-negative count or None")
        self.mask_key = mask_key
        self.reference_keys = (
            tuple(k for k in self.keys if k != mask_key) if reference_keys is None else tuple(reference_keys)
        )
        self.empty_threshold = float(empty_threshold)
        self.axis = axis
        self.max_positive, self.max_negative = max_positive, max_negative
        self.subject_key, self.seed = subject_key, int(seed)

    def __call__(self, data: Mapping[Hashable, Any]) -> list[dict[Hashable, Any]]:
        d = dict(data)
        keys = list(self.key_iterator(d))
        vols = {k: torch.as_tensor(d[k]).movedim(self._axis(d[k]), 0) for k in keys}  # (S, C, H, W)
        brain = torch.stack([vols[k].ne(0).any(dim=1) for k in self.reference_keys]).any(dim=0)  # (S, H, W)
        fraction = brain.flatten(1).float().mean(dim=1)
        keep = (fraction >= self.empty_threshold).nonzero().flatten().tolist()
        if self.mask_key in vols:
            keep = self._cap(keep, vols[self.mask_key].flatten(1).any(dim=1), str(d.get(self.subject_key, "")))
        others = {k: v for k, v in d.items() if k not in vols}
        return [
            {**others, **{k: v[z].clone() for k, v in vols.items()}, "slice_index": z,
             "nonzero_fraction": float(fraction[z])}
            for z in keep
        ]

    def _axis(self, img: torch.Tensor) -> int:
        spatial = img.ndim - 1
        if spatial != 3 or not -3 <= self.axis < 3:
            raise MedAdvInputError(f"ExtractAxialSlicesd: expected (C, X, Y, Z) volumes and axis in [-3, 2], "
                                   f"got shape {tuple(img.shape)} and axis {self.axis}")
        return 1 + (self.axis % 3)

    def _cap(self, keep: list[int], positive: torch.Tensor, subject: str) -> list[int]:
        if self.max_positive is None and self.max_negative is None:
            return keep
        rng = np.random.default_rng([self.seed, zlib.crc32(subject.encode())])
        chosen: list[int] = []
        for want_pos, cap in ((True, self.max_positive), (False, self.max_negative)):
            group = [z for z in keep if bool(positive[z]) == want_pos]
            if cap is not None and len(group) > cap:
                group = rng.choice(group, size=cap, replace=False).tolist()
            chosen += group
        return sorted(chosen)


class SliceLabeld(MapTransform):
    """Write the slice label: 1 if the tumour mask under ``keys`` is non-empty, else 0 (as a float tensor ``(1,)``)."""

    def __init__(self, keys: KeysCollection = "mask", label_key: str = "label",
                 allow_missing_keys: bool = False) -> None:
        super().__init__(keys, allow_missing_keys)
        self.label_key = label_key

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        d = dict(data)
        for key in self.key_iterator(d):
            d[self.label_key] = torch.tensor([float(bool(torch.as_tensor(d[key]).any()))])
        return d
