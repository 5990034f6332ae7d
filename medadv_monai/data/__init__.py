"""BraTS data layer: datalists, the slice transform chain, the slice cache, statistics, synthetic BraTS."""

from __future__ import annotations

from medadv_monai.data.cache import (
    CACHE_FORMAT,
    LoadCachedSliced,
    SliceCache,
    SliceDataset,
    pos_weight,
    transform_fingerprint,
)
from medadv_monai.data.datalist import (
    BUILTIN_ALIASES,
    MODALITIES,
    SEG_KEY,
    SPLITS,
    build_datalist,
    ensure_datalist,
    find_subjects,
    load_datalist,
    resolve_aliases,
    split_subjects,
)
from medadv_monai.data.stats import format_statistics, split_statistics
from medadv_monai.data.synthetic_dataset import make_synthetic_brats
from medadv_monai.data.transforms import (
    ExtractAxialSlicesd,
    LoadVolumesd,
    RobustScaleIntensity,
    RobustScaleIntensityd,
    SliceLabeld,
    TumourMask,
    TumourMaskd,
    ValidateVolumesd,
)

__all__ = [
    "BUILTIN_ALIASES",
    "CACHE_FORMAT",
    "MODALITIES",
    "SEG_KEY",
    "SPLITS",
    "ExtractAxialSlicesd",
    "LoadCachedSliced",
    "LoadVolumesd",
    "RobustScaleIntensity",
    "RobustScaleIntensityd",
    "SliceCache",
    "SliceDataset",
    "SliceLabeld",
    "TumourMask",
    "TumourMaskd",
    "ValidateVolumesd",
    "build_datalist",
    "ensure_datalist",
    "find_subjects",
    "format_statistics",
    "load_datalist",
    "make_synthetic_brats",
    "pos_weight",
    "resolve_aliases",
    "split_statistics",
    "split_subjects",
    "transform_fingerprint",
]
