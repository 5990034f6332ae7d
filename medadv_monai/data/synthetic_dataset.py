"""Writing the synthetic BraTS dataset of :mod:`medadv_monai.data.synthetic` as NIfTI, one folder per subject."""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from medadv_monai.data.synthetic import (
    DEFAULT_SHAPE,
    DEFAULT_SUBJECTS,
    MODALITIES,
    check_args,
    subject_name,
    synthetic_subject,
)
from medadv_monai.errors import MedAdvInputError
from medadv_monai.utils import atomic_dir
from medadv_monai.utils.fingerprint import check_stamp, write_stamp

__all__ = ["STAMP", "make_synthetic_brats", "write_subjects"]


def _file_names(name: str) -> dict[str, str]:
    """File name of each modality and of the segmentation of subject ``name``."""
    return {key: f"{name}_{key}.nii.gz" for key in (*MODALITIES, "seg")}


def _save(array: np.ndarray, path: Path, affine: np.ndarray) -> None:
    import nibabel as nib

    image = nib.Nifti1Image(array, affine)
    image.header.set_data_dtype(array.dtype)
    image.header.set_xyzt_units("mm", "sec")
    nib.save(image, str(path))


STAMP = "synthetic.stamp.json"


def write_subjects(out_dir: str | os.PathLike, subjects: int, volumes_of: Callable[[int], Mapping[str, np.ndarray]],
                   affine: np.ndarray, overwrite: bool = False, description: Mapping[str, Any] | None = None,
                   ) -> list[Path]:
    """Write subjects ``0 .. subjects - 1`` of a synthetic generator in the BraTS 2021 layout.

    Subject ``i`` (``volumes_of(i)``: its four modalities and seg) goes to
    ``out_dir/BraTS2021_{i:05d}/BraTS2021_{i:05d}_{t1,t1ce,t2,flair,seg}.nii.gz`` with ``affine``, written into a
    temporary folder next to it and renamed into place, so a folder is whole or absent. A subject folder that
    already holds all five files is left alone unless ``overwrite`` is true, and only while ``out_dir``'s stamp
    (:data:`STAMP`) says it was made with the same ``description`` (the generator and every setting a subject
    depends on); otherwise every subject is written again and the stamp renewed.

    Raises:
        MedAdvInputError: ``out_dir`` is an existing file.
    """
    root = Path(out_dir)
    if root.exists() and not root.is_dir():
        raise MedAdvInputError(f"dataset folder {str(root)!r} is a file; expected a folder (new, or one that "
                               f"holds subject folders)")
    stamp = root / STAMP
    if description is not None and check_stamp(stamp, description):
        overwrite = True  # made by another generator or settings, or before stamps: nothing of it is reused
    folders = []
    for index in range(subjects):
        folder = root / subject_name(index)
        folders.append(folder)
        names = _file_names(folder.name)
        if not overwrite and all((folder / n).is_file() for n in names.values()):
            continue
        volumes = volumes_of(index)
        with atomic_dir(folder) as tmp:
            for key, file_name in names.items():
                _save(volumes[key], tmp / file_name, affine)
    if description is not None:
        write_stamp(stamp, description)
    return folders


def make_synthetic_brats(
    out_dir: str | os.PathLike,
    subjects: int = DEFAULT_SUBJECTS,
    shape: Sequence[int] = DEFAULT_SHAPE,
    seed: int = 0,
    tumour_fraction: float = 0.75,
    noise: float = 0.03,
    bias: float = 0.25,
    overwrite: bool = False,
) -> list[Path]:
    """Write a seeded synthetic BraTS 2021 dataset and return its subject folders.

    Each subject ``i`` goes to ``out_dir/BraTS2021_{i:05d}/BraTS2021_{i:05d}_{t1,t1ce,t2,flair,seg}.nii.gz``,
    written into a temporary folder next to it and renamed into place, so a folder is whole or absent. A subject
    folder that already holds all five files is left alone unless ``overwrite`` is true.

    Args:
        out_dir: dataset folder (created if missing).
        subjects: number of subjects, >= 1.
        shape: volume shape ``(x, y, z)``, ``z`` axial; each axis >= :data:`MIN_DIM`.
        seed: random seed (>= 0); subject ``i`` depends only on ``(seed, i, shape, tumour_fraction, noise, bias)``.
        tumour_fraction: share of subjects with a tumour, in [0, 1]; with two or more subjects and a fraction
            strictly between 0 and 1 there is always at least one subject with and one without a tumour.
        noise: Rician noise standard deviation relative to the mean brain intensity, >= 0.
        bias: amplitude of the multiplicative bias field ``exp(bias * f)``, ``f`` in [-1, 1]; >= 0.
        overwrite: regenerate subjects whose folder is already complete.

    Returns:
        The subject folders, in order (including the ones left alone).

    Raises:
        MedAdvInputError: a bad argument (``out_dir`` an existing file, ...); the message names it, its value and
            what was expected.
    """
    subjects, shape3, seed, tumour_fraction, noise, bias = check_args(
        subjects, shape, seed, tumour_fraction, noise, bias
    )
    return write_subjects(out_dir, subjects,
                          lambda index: synthetic_subject(index, shape3, seed, tumour_fraction, noise, bias),
                          np.eye(4), overwrite, {"generator": "geometric", "shape": shape3, "seed": seed,
                                                 "tumour_fraction": tumour_fraction, "noise": noise, "bias": bias})
