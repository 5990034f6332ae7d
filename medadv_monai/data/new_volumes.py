"""New NIfTI volumes to score with a trained model: finding them (no segmentation needed) and cutting them into slices.

``find_volumes`` takes what a user has, as model-zoo inference configs do:

- a folder of subject folders (any layout: BraTS 2017-2021 or 2023 names, an alias table);
- an MSD task folder (``dataset.json``): its ``test`` list of 4D images, channels named by ``dataset.json``;
- a folder of ``.nii`` / ``.nii.gz`` files, or a list of such files: each file is one subject, a 3D volume of the
  model's one modality, or a 4D volume whose channels are named by ``channels`` (``{modality: index}``).

``volume_slices`` runs a bundle's slice transform chain on each subject (the chain of the model's own config, so the
slices are made exactly as the training slices were) and keeps the model's input channels as ``image``.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any, Union

import torch

from medadv_monai.data.layouts import LayoutSpec, check_modalities, find_subjects
from medadv_monai.errors import MedAdvInputError, find_input_error

__all__ = ["find_volumes", "volume_slices"]

_NIFTI = (".nii.gz", ".nii")
Volumes = Union[str, os.PathLike, Sequence[Union[str, os.PathLike]]]


def _is_nifti(path: Path) -> bool:
    return path.is_file() and path.name.endswith(_NIFTI)


def _file_entries(files: Sequence[Path], modalities: Sequence[str],
                  channels: Mapping[str, int] | None) -> list[dict[str, Any]]:
    if len(modalities) > 1 and channels is None:
        raise MedAdvInputError(f"volumes: one file per subject holds the model's {len(modalities)} modalities "
                               f"{list(modalities)} only as a 4D file with a channels map, e.g. --channels "
                               f"\"{ {m: i for i, m in enumerate(modalities)} }\"; or give a folder of subject folders")
    missing = [m for m in modalities if channels is not None and m not in channels]
    if missing:
        raise MedAdvInputError(f"channels {dict(channels)} names no channel for {missing}")
    entries = []
    for f in files:
        if not _is_nifti(f):
            raise MedAdvInputError(f"volumes: {str(f)!r} is not a NIfTI file (.nii or .nii.gz) that exists")
        entry: dict[str, Any] = {"subject": f.name.removesuffix(".gz").removesuffix(".nii"), "layout": "files"}
        entry.update({m: str(f.resolve()) for m in modalities})
        if channels is not None:
            entry["channels"] = {m: int(channels[m]) for m in modalities}
        entries.append(entry)
    return entries


def find_volumes(volumes: Volumes, modalities: Sequence[str], layout: LayoutSpec = "auto",
                 channels: Mapping[str, int] | None = None) -> list[dict[str, Any]]:
    """One entry per subject to score (``{"subject", <modality>: path, ...}``, no ``seg``), sorted by subject.

    Args:
        volumes: a folder (subject folders, an MSD task folder, or NIfTI files) or a list of NIfTI files.
        modalities: the model's input modalities: the files each subject must have.
        layout: the layout of subject folders (as in training).
        channels: ``{modality: index}`` of 4D files given one per subject (or of an MSD folder, replacing
            ``dataset.json``'s names).

    Raises:
        MedAdvInputError: nothing to score, a path that does not exist, or a subject without a modality.
    """
    modalities = check_modalities(modalities, "modalities")
    if isinstance(volumes, (str, os.PathLike)):
        root = Path(volumes)
        if not root.exists():
            raise MedAdvInputError(f"volumes {str(root)!r} does not exist; expected a folder or a list of NIfTI files")
        if root.is_dir() and not (root / "dataset.json").is_file() and not any(p.is_dir() for p in root.iterdir()):
            files = sorted(p for p in root.iterdir() if _is_nifti(p))
            if not files:
                raise MedAdvInputError(f"volumes {str(root)!r} holds no subject folder and no NIfTI file")
            entries = _file_entries(files, modalities, channels)
        elif root.is_dir():
            entries = find_subjects(root, layout, modalities, require_seg=False, channels=channels)
        else:
            entries = _file_entries([root], modalities, channels)
    else:
        if not volumes:
            raise MedAdvInputError("volumes: the list of files is empty")
        entries = _file_entries([Path(v) for v in volumes], modalities, channels)
    names = [e["subject"] for e in entries]
    if len(set(names)) != len(names):
        raise MedAdvInputError(f"volumes: several files share a subject name ({sorted(names)}); rename them")
    return sorted(entries, key=lambda e: e["subject"])


def volume_slices(entries: Sequence[Mapping[str, Any]], transform: Callable,
                  modalities: Sequence[str]) -> list[dict[str, Any]]:
    """The slices of each subject made by ``transform`` (a bundle's slice chain; no segmentation: no mask or
    label), each ``{"subject", "slice_index", "image"}`` with ``image`` the ``modalities`` as channels (C, H, W).

    Raises:
        MedAdvInputError: a volume the chain refuses (the message names its file).
    """
    out = []
    for entry in entries:
        try:
            slices = transform(dict(entry))
        except Exception as e:  # noqa: BLE001 - MONAI wraps transform errors; surface ours
            err = find_input_error(e)
            if err is not None:
                raise MedAdvInputError(str(err)) from None
            raise
        for s in [slices] if isinstance(slices, Mapping) else slices:
            image = torch.cat([torch.as_tensor(s[m]).float() for m in modalities])
            out.append({"subject": entry["subject"], "slice_index": int(s.get("slice_index", len(out))),
                        "image": image})
    if not out:
        raise MedAdvInputError(f"volumes: no slice with brain in {len(entries)} subject(s)")
    return out
