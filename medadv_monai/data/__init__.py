"""BraTS data layer: layouts, datalists, label conventions and regions, intensity scaling, the slice transform chain,
the slice cache, statistics, synthetic BraTS."""

from __future__ import annotations

from medadv_monai.data.cache import (
    CACHE_FORMAT,
    LoadCachedSliced,
    SliceCache,
    SliceDataset,
    pos_weight,
    transform_fingerprint,
)
from medadv_monai.data.datalist import SPLITS, build_datalist, ensure_datalist, load_datalist, split_subjects
from medadv_monai.data.intensity import FOREGROUNDS, RobustScaleIntensity, RobustScaleIntensityd
from medadv_monai.data.labels import (
    CONVENTIONS,
    REGIONS,
    LabelConvention,
    TumourMask,
    TumourMaskd,
    check_regions,
    resolve_convention,
)
from medadv_monai.data.layouts import (
    BRATS_TABLES,
    LAYOUTS,
    MODALITIES,
    MSD_NAMES,
    SEG_KEY,
    find_subjects,
    resolve_layout,
)
from medadv_monai.data.new_volumes import find_volumes, volume_slices
from medadv_monai.data.stats import format_statistics, split_statistics
from medadv_monai.data.synthetic_anatomy import anatomical_subject, make_anatomical_brats
from medadv_monai.data.synthetic_dataset import make_synthetic_brats
from medadv_monai.data.transforms import ExtractAxialSlicesd, LoadVolumesd, SliceLabeld, ValidateVolumesd

__all__ = [
    "BRATS_TABLES",
    "CACHE_FORMAT",
    "CONVENTIONS",
    "FOREGROUNDS",
    "LAYOUTS",
    "MODALITIES",
    "MSD_NAMES",
    "REGIONS",
    "LabelConvention",
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
    "check_regions",
    "ValidateVolumesd",
    "anatomical_subject",
    "build_datalist",
    "ensure_datalist",
    "find_subjects",
    "find_volumes",
    "format_statistics",
    "load_datalist",
    "make_anatomical_brats",
    "make_synthetic_brats",
    "pos_weight",
    "resolve_convention",
    "resolve_layout",
    "split_statistics",
    "split_subjects",
    "transform_fingerprint",
    "volume_slices",
]
