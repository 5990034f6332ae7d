"""Label conventions: which labels a segmentation may hold, which of them make up each standard tumour region, and
the transform that makes a region's mask.

The standard regions of the BraTS challenges are *whole tumour* (``WT``), *tumour core* (``TC``) and *enhancing
tumour* (``ET``). Releases number their labels differently, so a convention is named by its release:

============  ===================================================  =============  ==========  ======
convention    labels                                               WT             TC          ET
============  ===================================================  =============  ==========  ======
brats2021     1 necrotic / non-enhancing core, 2 oedema, 4 enh.    {1, 2, 4}      {1, 4}      {4}
brats2023     1 necrotic core, 2 oedema, 3 enhancing               {1, 2, 3}      {1, 3}      {3}
msd           1 oedema, 2 non-enhancing, 3 enhancing (Task01)      {1, 2, 3}      {2, 3}      {3}
brats2015     1 necrosis, 2 oedema, 3 non-enhancing, 4 enhancing   {1, 2, 3, 4}   {1, 3, 4}   {4}
binary        1 tumour                                             {1}            -           -
============  ===================================================  =============  ==========  ======

``brats2021`` covers BraTS 2017 to 2021 (BraTS 2018 and 2019 included). Any other numbering is a *custom*
convention, a mapping ``{"labels": [0, ...], "regions": {"WT": [...], ...}}``. ``auto`` picks the convention of
the layout each subject was found with (:data:`LAYOUT_CONVENTIONS`: an alias table counts as ``brats2021``).

A label outside the convention is an error (:meth:`LabelConvention.check`), never silently background.
"""

from __future__ import annotations

import difflib
from collections.abc import Hashable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Union

import torch
from monai.config import KeysCollection
from monai.data import MetaTensor
from monai.transforms import MapTransform, Transform

from medadv_monai.errors import MedAdvInputError

__all__ = ["CONVENTIONS", "LAYOUT_CONVENTIONS", "REGIONS", "LabelConvention", "TumourMask", "TumourMaskd",
           "check_region", "check_regions", "resolve_convention", "subject_convention"]

REGIONS: tuple[str, ...] = ("WT", "TC", "ET")
"""The standard regions: whole tumour, tumour core, enhancing tumour."""


@dataclass(frozen=True)
class LabelConvention:
    """A segmentation's labels (0, background, included) and the labels of each region it defines."""

    name: str
    labels: tuple[int, ...]
    regions: Mapping[str, tuple[int, ...]]

    def region_labels(self, region: str) -> tuple[int, ...]:
        """The labels that make up ``region``.

        Raises:
            MedAdvInputError: a region this convention does not define (``binary`` defines only ``WT``).
        """
        region = check_region(region)
        if region not in self.regions:
            raise MedAdvInputError(f"region {region!r}: the {self.name} label convention defines only "
                                   f"{list(self.regions)}; choose one of them or another label_convention")
        return self.regions[region]

    def check(self, found: Sequence[float], source: str) -> None:
        """Raise if ``found`` (the labels in a segmentation) holds a label outside this convention."""
        extra = sorted({float(v) for v in found} - {float(v) for v in self.labels})
        if extra:
            shown = [int(v) if float(v).is_integer() else v for v in extra]
            raise MedAdvInputError(
                f"{source}: segmentation labels {shown} are outside the {self.name} label convention "
                f"{list(self.labels)}; choose the dataset's label_convention (one of {list(CONVENTIONS)} or a "
                "custom {labels: [...], regions: {WT: [...], ...}})")


def _convention(name: str, labels: Sequence[int], **regions: Sequence[int]) -> LabelConvention:
    return LabelConvention(name, tuple(labels), {r: tuple(v) for r, v in regions.items()})


CONVENTIONS: dict[str, LabelConvention] = {
    c.name: c
    for c in (
        _convention("brats2021", (0, 1, 2, 4), WT=(1, 2, 4), TC=(1, 4), ET=(4,)),
        _convention("brats2023", (0, 1, 2, 3), WT=(1, 2, 3), TC=(1, 3), ET=(3,)),
        _convention("msd", (0, 1, 2, 3), WT=(1, 2, 3), TC=(2, 3), ET=(3,)),
        _convention("brats2015", (0, 1, 2, 3, 4), WT=(1, 2, 3, 4), TC=(1, 3, 4), ET=(4,)),
        _convention("binary", (0, 1), WT=(1,)),
    )
}
"""The named label conventions."""

LAYOUT_CONVENTIONS: dict[str, str] = {"brats2021": "brats2021", "brats2023": "brats2023", "msd": "msd",
                                      "aliases": "brats2021"}
"""The convention ``auto`` picks for a subject found with each layout."""

ConventionSpec = Union[str, Mapping[str, Any], LabelConvention]


def check_region(region: Any) -> str:
    """``region`` as one of :data:`REGIONS` (case-insensitive), or an error that names it."""
    name = region.upper() if isinstance(region, str) else region
    if name not in REGIONS:
        near = difflib.get_close_matches(str(region).upper(), REGIONS, n=1, cutoff=0.5)
        hint = f"; did you mean {near[0]!r}?" if near else ""
        raise MedAdvInputError(f"region {region!r}: expected one of {list(REGIONS)} (whole tumour, tumour core, "
                               f"enhancing tumour){hint}")
    return name


def check_regions(regions: Any, label_convention: ConventionSpec = "auto") -> list[str]:
    """A non-empty list of distinct regions (each :func:`check_region`), all defined by ``label_convention`` unless
    it is ``"auto"`` (then each subject's convention is checked when its mask is made).

    Raises:
        MedAdvInputError: naming the value and what was expected.
    """
    if isinstance(regions, str) or not isinstance(regions, Sequence) or not regions:
        raise MedAdvInputError(f"regions {regions!r}: expected a non-empty list of {list(REGIONS)}, e.g. "
                               "['WT', 'TC', 'ET']")
    out = [check_region(r) for r in regions]
    if len(set(out)) != len(out):
        raise MedAdvInputError(f"regions {list(regions)}: each region may appear once")
    if label_convention != "auto":
        convention = resolve_convention(label_convention)
        for r in out:
            convention.region_labels(r)
    return out


def resolve_convention(spec: ConventionSpec, layout: str | None = None) -> LabelConvention:
    """The convention named or given by ``spec``.

    Args:
        spec: a name of :data:`CONVENTIONS`, ``"auto"`` (the convention of ``layout``), a custom mapping
            ``{"labels": [0, 1, ...], "regions": {"WT": [...], "TC": [...], "ET": [...]}}`` (any subset of the
            regions; background 0 is added to ``labels`` if missing) or a :class:`LabelConvention`.
        layout: the layout a subject was found with (needed by ``"auto"``).

    Raises:
        MedAdvInputError: an unknown name, ``auto`` without a known layout, or a malformed custom mapping.
    """
    if isinstance(spec, LabelConvention):
        return spec
    if spec == "auto":
        if layout not in LAYOUT_CONVENTIONS:
            raise MedAdvInputError(f"label_convention 'auto': the subject's layout {layout!r} has no default "
                                   f"convention; name one of {list(CONVENTIONS)}")
        return CONVENTIONS[LAYOUT_CONVENTIONS[layout]]
    if isinstance(spec, str):
        if spec not in CONVENTIONS:
            near = difflib.get_close_matches(spec, list(CONVENTIONS), n=1, cutoff=0.5)
            hint = f"; did you mean {near[0]!r}?" if near else ""
            raise MedAdvInputError(f"label_convention {spec!r}: expected 'auto', one of {list(CONVENTIONS)} or a "
                                   f"custom {{labels: [...], regions: {{WT: [...], ...}}}}{hint}")
        return CONVENTIONS[spec]
    if isinstance(spec, Mapping):
        return _custom(spec)
    raise MedAdvInputError(f"label_convention {spec!r}: expected a name or a mapping, got {type(spec).__name__}")


def _ints(value: Any, what: str) -> tuple[int, ...]:
    if isinstance(value, (str, bytes)) or not isinstance(value, Sequence) or not value or not all(
            isinstance(v, int) and not isinstance(v, bool) and v >= 0 for v in value):
        raise MedAdvInputError(f"label_convention {what}: expected a non-empty list of labels (integers >= 0), "
                               f"got {value!r}")
    return tuple(sorted(set(value)))


def _custom(spec: Mapping[str, Any]) -> LabelConvention:
    unknown = sorted(set(spec) - {"labels", "regions", "name"})
    if unknown or "labels" not in spec or not isinstance(spec.get("regions"), Mapping) or not spec["regions"]:
        raise MedAdvInputError(f"label_convention {dict(spec)!r}: a custom convention is a mapping with 'labels' "
                               "(every label a segmentation may hold) and 'regions' (region -> its labels), e.g. "
                               "{labels: [0, 1, 2], regions: {WT: [1, 2], TC: [2]}}")
    labels = tuple(sorted({0, *_ints(spec["labels"], "labels")}))
    regions = {}
    for region, values in spec["regions"].items():
        values = _ints(values, f"region {region!r}")
        outside = sorted(set(values) - set(labels) | ({0} & set(values)))
        if outside:
            raise MedAdvInputError(f"label_convention: region {region!r} has labels {outside} that are 0 or not "
                                   f"among labels {list(labels)}")
        regions[check_region(region)] = values
    return LabelConvention(str(spec.get("name", "custom")), labels, regions)


def subject_convention(spec: ConventionSpec, data: Mapping[Hashable, Any], layout_key: str = "layout") \
        -> LabelConvention:
    """The convention of one subject: ``spec``, where ``"auto"`` reads the subject's layout from ``data``."""
    return resolve_convention(spec, data.get(layout_key) if spec == "auto" else None)


class TumourMask(Transform):
    """Binary tumour mask from a label map: ``1`` where the label is in ``labels`` (``None``: any non-zero label)."""

    def __init__(self, labels: Sequence[int] | None = None) -> None:
        self.labels = None if labels is None else tuple(int(v) for v in labels)

    def __call__(self, seg: torch.Tensor) -> torch.Tensor:
        seg_t = torch.as_tensor(seg)
        if self.labels is None:
            mask = seg_t != 0
        else:
            mask = torch.isin(seg_t, torch.tensor(self.labels, dtype=seg_t.dtype))
        out = mask.to(torch.uint8)
        return MetaTensor(out, meta=seg.meta) if isinstance(seg, MetaTensor) else out


class TumourMaskd(MapTransform):
    """The mask of a tumour region: reads the seg under ``keys`` and writes ``output_key``.

    Args:
        keys: the seg key (one).
        label_convention: the convention's name, ``"auto"`` (each subject's layout's, read from ``layout_key``) or a
            custom mapping (:func:`resolve_convention`).
        region: ``WT`` (whole tumour, default), ``TC`` (tumour core) or ``ET`` (enhancing tumour); a list of them
            (e.g. ``["WT", "TC", "ET"]``) writes one channel per region, in its order (segmentation targets).
        output_key: where the mask goes.
        layout_key: the datalist entry's layout, for ``"auto"``.
    """

    def __init__(
        self,
        keys: KeysCollection,
        label_convention: ConventionSpec = "auto",
        region: str | Sequence[str] = "WT",
        output_key: str = "mask",
        layout_key: str = "layout",
        allow_missing_keys: bool = False,
    ) -> None:
        super().__init__(keys, allow_missing_keys)
        if len(self.keys) != 1:
            raise MedAdvInputError(f"TumourMaskd: expected one seg key, got {list(self.keys)}")
        self.region = check_region(region) if isinstance(region, str) else check_regions(region)
        self.label_convention = label_convention
        if label_convention != "auto":  # a fixed convention is checked now (and must define the regions)
            for r in self._regions():
                resolve_convention(label_convention).region_labels(r)
        self.output_key, self.layout_key = output_key, layout_key

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        d = dict(data)
        for key in self.key_iterator(d):
            convention = subject_convention(self.label_convention, d, self.layout_key)
            masks = [TumourMask(convention.region_labels(r))(d[key]) for r in self._regions()]
            d[self.output_key] = masks[0] if isinstance(self.region, str) else _stack_channels(masks)
        return d

    def _regions(self) -> list[str]:
        return [self.region] if isinstance(self.region, str) else list(self.region)


def _stack_channels(masks: Sequence[torch.Tensor]) -> torch.Tensor:
    """One-channel masks ``(1, ...)`` stacked as channels ``(R, ...)``, keeping a ``MetaTensor``'s metadata."""
    out = torch.cat([torch.as_tensor(m) for m in masks])
    return MetaTensor(out, meta=masks[0].meta) if isinstance(masks[0], MetaTensor) else out
