"""Dataset layouts: where each subject's modality files and segmentation are.

A *modality set* (any names, any number >= 1; BraTS's ``t1``, ``t1ce``, ``t2``, ``flair`` by default) says which
volumes a subject has. A *layout* says where to find them:

- ``brats2021``: BraTS 2017 to 2021 (2018 and 2019 included), one folder per subject,
  ``{subject}_t1.nii.gz``, ``_t1ce``, ``_t2``, ``_flair``, ``_seg`` (``.nii`` too);
- ``brats2023``: one folder per subject, ``{subject}-t1n.nii.gz``, ``-t1c``, ``-t2w``, ``-t2f``, ``-seg``;
- ``msd``: the Medical Segmentation Decathlon's Task01_BrainTumour: ``dataset.json``, ``imagesTr/BRATS_NNN.nii.gz``
  (one 4D file, a channel per modality) and ``labelsTr/``. The channels are named by ``dataset.json``'s
  ``modality`` map (``FLAIR``, ``T1w``, ``t1gd``, ``T2w`` read as ``flair``, ``t1``, ``t1ce``, ``t2``:
  :data:`MSD_NAMES`; other names lower-cased), or by a ``channels`` map ``{modality: index}`` that replaces it.
  MONAI's :func:`~monai.data.load_decathlon_datalist` reads the file list;
- an *alias table* for anything else: a mapping (in a config) or a YAML/JSON file of
  ``{key: [glob pattern, ...]}`` relative to the subject folder, ``{subject}`` standing for the folder name (taken
  literally; the rest keeps its glob meaning). The first pattern that matches exactly one file wins. A table names
  only what the dataset has, e.g. for a FLAIR + T1 release ``{flair: ["*_flair.nii.gz"], t1: [...], seg: [...]}``;
  keys the modality set does not ask for are ignored. The TCGA sample with ``_t1_bet`` ... names::

      t1: ["{subject}_t1_bet.nii.gz"]
      t1ce: ["{subject}_t1c_bet.nii.gz"]
      t2: ["{subject}_t2_bet.nii.gz"]
      flair: ["{subject}_fla_bet.nii.gz"]
      seg: ["fusion/simple.nii.gz"]

``auto`` (the default) reads ``msd`` where the dataset folder holds a ``dataset.json``, and otherwise matches each
subject folder against the BraTS 2021 names, then the BraTS 2023 names.

Every datalist entry is ``{"subject": id, "layout": name, <modality>: path, ..., "seg": path}`` with absolute
paths; an ``msd`` entry adds ``"channels": {modality: index}`` (each modality's path is then the 4D file, read by
:class:`~medadv_monai.data.LoadVolumesd` once per subject).
"""

from __future__ import annotations

import glob
import json
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, Union

from medadv_monai.errors import MedAdvInputError
from medadv_monai.utils.fingerprint import file_digest

__all__ = [
    "BRATS_TABLES",
    "LAYOUTS",
    "MODALITIES",
    "MSD_NAMES",
    "SEG_KEY",
    "check_modalities",
    "dataset_listing",
    "find_subjects",
    "resolve_layout",
]

MODALITIES: tuple[str, ...] = ("t1", "t1ce", "t2", "flair")
"""The default modality set (BraTS's four)."""
SEG_KEY = "seg"
LAYOUTS: tuple[str, ...] = ("brats2021", "brats2023", "msd")
MSD_NAMES: dict[str, str] = {"FLAIR": "flair", "T1w": "t1", "t1gd": "t1ce", "T2w": "t2"}
"""Task01_BrainTumour's channel names -> this project's modality names."""

_EXTS = (".nii.gz", ".nii")


def _table(names: Mapping[str, str], sep: str) -> dict[str, list[str]]:
    return {key: [f"{{subject}}{sep}{name}{ext}" for ext in _EXTS] for key, name in names.items()}


BRATS_TABLES: dict[str, dict[str, list[str]]] = {
    "brats2021": _table({"t1": "t1", "t1ce": "t1ce", "t2": "t2", "flair": "flair", "seg": "seg"}, "_"),
    "brats2023": _table({"t1": "t1n", "t1ce": "t1c", "t2": "t2w", "flair": "t2f", "seg": "seg"}, "-"),
}
"""The alias tables of the BraTS layouts."""

LayoutSpec = Union[str, os.PathLike, Mapping[str, Union[str, Sequence[str]]], None]


def check_modalities(modalities: Any, what: str = "all_modalities") -> tuple[str, ...]:
    """A modality set as a tuple of distinct names (not ``seg``), or an error naming it."""
    if isinstance(modalities, str) or not isinstance(modalities, Sequence) or not modalities \
            or not all(isinstance(m, str) and m for m in modalities):
        raise MedAdvInputError(f"{what} {modalities!r}: expected a non-empty list of modality names, e.g. "
                               "['t1', 't1ce', 't2', 'flair'] or ['flair', 't1']")
    if len(set(modalities)) != len(modalities) or SEG_KEY in modalities:
        raise MedAdvInputError(f"{what} {list(modalities)}: names must be distinct and not {SEG_KEY!r}")
    return tuple(modalities)


def resolve_layout(layout: LayoutSpec = "auto") -> str | dict[str, list[str]]:
    """A layout name (``auto``, ``brats2021``, ``brats2023``, ``msd``) or an alias table ``{key: [pattern, ...]}``.

    Args:
        layout: a name, a path to a YAML/JSON file holding a table, or the table itself (one pattern may be given
            as a string instead of a list).

    Raises:
        MedAdvInputError: an unknown name, an unreadable file, or a malformed table.
    """
    if layout is None:
        return "auto"
    if isinstance(layout, (str, os.PathLike)):
        name = str(layout)
        if name == "auto" or name in LAYOUTS:
            return name
        path = Path(name)
        if not path.is_file():
            raise MedAdvInputError(f"layout {name!r} is neither one of {['auto', *LAYOUTS]} nor an existing "
                                   "YAML/JSON alias table file")
        layout = _read_table_file(path)
    if not isinstance(layout, Mapping) or not layout:
        raise MedAdvInputError(f"layout: an alias table is a non-empty mapping of key to file patterns, got "
                               f"{layout!r}")
    table: dict[str, list[str]] = {}
    for key, patterns in layout.items():
        patterns = [patterns] if isinstance(patterns, str) else patterns
        if not isinstance(patterns, Sequence) or not patterns or not all(isinstance(p, str) and p for p in patterns):
            raise MedAdvInputError(f"layout: {key!r} must be a non-empty pattern or list of patterns, got "
                                   f"{patterns!r}")
        for p in patterns:
            _check_pattern(str(key), p)
        table[str(key)] = list(patterns)
    return table


def _check_pattern(key: str, pattern: str) -> None:
    if os.path.isabs(pattern) or pattern.startswith("~"):
        raise MedAdvInputError(
            f"layout: pattern {pattern!r} for {key!r} is absolute; patterns are relative to the subject folder, "
            "e.g. '{subject}_t1.nii.gz' or 'fusion/simple.nii.gz'")
    try:
        pattern.format(subject="x")
    except (KeyError, IndexError, ValueError) as e:
        raise MedAdvInputError(
            f"layout: pattern {pattern!r} for {key!r}: only {{subject}} may stand in braces ({e!r})") from None


def _read_table_file(path: Path) -> Any:
    try:
        text = path.read_text()
        if path.suffix.lower() == ".json":
            return json.loads(text)
        import yaml

        return yaml.safe_load(text)
    except (OSError, ValueError) as e:
        raise MedAdvInputError(f"layout: cannot read alias table file {path}: {e}") from e
    except Exception as e:  # noqa: BLE001 - a malformed YAML file
        raise MedAdvInputError(f"layout: cannot parse alias table file {path}: {e}") from e


def _keys(modalities: Sequence[str], require_seg: bool, extra_keys: Sequence[str]) -> tuple[str, ...]:
    return (*check_modalities(modalities), *((SEG_KEY,) if require_seg else ()), *extra_keys)


# ---------------------------------------------------------------------------------------------- subject folders
def _subject_dirs(root: Path) -> list[Path]:
    try:
        subject_dirs = sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
    except OSError as e:
        raise MedAdvInputError(f"dataset_dir {str(root)!r}: cannot list it ({e.strerror or e})") from e
    if not subject_dirs:
        raise MedAdvInputError(f"dataset_dir {str(root)!r} holds no subject folders; expected one folder per "
                               "subject (or an MSD dataset.json)")
    return subject_dirs


def _match(subject_dir: Path, patterns: Sequence[str]) -> list[Path]:
    """Files matched by the first pattern that matches anything (sorted)."""
    for pattern in patterns:
        hits = sorted(p for p in subject_dir.glob(pattern.format(subject=glob.escape(subject_dir.name)))
                      if p.is_file())
        if hits:
            return hits
    return []


def _missing_keys(table: Mapping[str, Sequence[str]], keys: Sequence[str], what: str) -> None:
    missing = [k for k in keys if k not in table]
    if missing:
        present = [k for k in keys if k in table and k != SEG_KEY]
        raise MedAdvInputError(
            f"{what} has no pattern for {missing} (it names {list(table)}); name them in the table, or set "
            f"all_modalities to the modalities the dataset has{f', e.g. {present}' if present else ''}")


def _subject_entry(subject_dir: Path, table: Mapping[str, Sequence[str]], keys: Sequence[str],
                   layout: str) -> dict[str, Any]:
    entry: dict[str, Any] = {"subject": subject_dir.name, "layout": layout}
    for key in keys:
        hits = _match(subject_dir, table[key])
        if not hits:
            raise MedAdvInputError(f"{subject_dir}: no file for {key!r} (tried {', '.join(table[key])}); give a "
                                   "layout (alias table) that matches this dataset's file names")
        if len(hits) > 1:
            raise MedAdvInputError(f"{subject_dir}: {len(hits)} files match {key!r} "
                                   f"({', '.join(h.name for h in hits)}); expected exactly one, make the alias "
                                   "pattern more specific")
        entry[key] = str(hits[0].resolve())
    return entry


def _auto_layout(subject_dir: Path, keys: Sequence[str]) -> str:
    """The first BraTS layout whose names match every key of the subject (else the closest, for its error)."""
    tables = {n: t for n, t in BRATS_TABLES.items() if all(k in t for k in keys)}
    if not tables:
        _missing_keys(BRATS_TABLES["brats2021"], keys, "layout 'auto' (BraTS names)")
    for name, table in tables.items():
        if all(_match(subject_dir, table[k]) for k in keys):
            return name
    return max(tables, key=lambda n: sum(bool(_match(subject_dir, tables[n][k])) for k in keys))


# ---------------------------------------------------------------------------------------------- MSD
def _is_msd(root: Path) -> bool:
    return (root / "dataset.json").is_file()


def _msd_channels(root: Path, modalities: Sequence[str], channels: Mapping[str, int] | None) -> dict[str, int]:
    from monai.data import load_decathlon_properties

    source = root / "dataset.json"
    if channels is None:
        try:
            named = load_decathlon_properties(source, ["modality"]).get("modality")
        except KeyError:  # MONAI: "key modality is not in the data property file"
            named = None
        except ValueError as e:
            raise MedAdvInputError(f"{source}: cannot read it ({e})") from e
        if not isinstance(named, Mapping) or not named:
            raise MedAdvInputError(f"{source} names no channels ('modality' map); give a channels map, e.g. "
                                   "--channels \"{flair: 0, t1: 1, t1ce: 2, t2: 3}\"")
        channels = {MSD_NAMES.get(str(v), str(v).lower()): int(k) for k, v in named.items()}
        source_text = f"{source} 'modality' {dict(named)}"
    else:
        source_text = f"channels {dict(channels)}"
    if not isinstance(channels, Mapping) or not all(isinstance(v, int) and v >= 0 for v in channels.values()):
        raise MedAdvInputError(f"channels {channels!r}: expected a mapping of modality name to channel index >= 0")
    missing = [m for m in modalities if m not in channels]
    if missing:
        raise MedAdvInputError(f"{source_text} names no channel for {missing}; the modality set is "
                               f"{list(modalities)}: set all_modalities to names among {list(channels)}, or give "
                               "a channels map")
    return {m: int(channels[m]) for m in modalities}


def _msd_entries(root: Path, modalities: Sequence[str], require_seg: bool, extra_keys: Sequence[str],
                 channels: Mapping[str, int] | None) -> list[dict[str, Any]]:
    from monai.data import load_decathlon_datalist

    if extra_keys:
        raise MedAdvInputError(f"layout 'msd' has no files for {list(extra_keys)}; use an alias table layout")
    chosen = _msd_channels(root, check_modalities(modalities), channels)
    key = "training" if require_seg else "test"
    try:
        items = load_decathlon_datalist(root / "dataset.json", is_segmentation=True, data_list_key=key,
                                        base_dir=root)
    except (ValueError, TypeError, KeyError, OSError) as e:
        raise MedAdvInputError(f"{root / 'dataset.json'}: cannot read its {key!r} list ({e})") from e
    entries = []
    for item in items:
        image = Path(str(item.get("image", "")))
        paths = {"image": image} | ({SEG_KEY: Path(str(item.get("label", "")))} if require_seg else {})
        for what, path in paths.items():
            if not path.is_file():
                raise MedAdvInputError(f"{root / 'dataset.json'}: its {key!r} {what} {str(path)!r} does not exist")
        subject = image.name.removesuffix(".gz").removesuffix(".nii")
        entry: dict[str, Any] = {"subject": subject, "layout": "msd"}
        entry.update({m: str(image.resolve()) for m in chosen})
        if require_seg:
            entry[SEG_KEY] = str(paths[SEG_KEY].resolve())
        entry["channels"] = dict(chosen)
        entries.append(entry)
    if not entries:
        raise MedAdvInputError(f"{root / 'dataset.json'}: its {key!r} list is empty")
    return sorted(entries, key=lambda e: e["subject"])


# ---------------------------------------------------------------------------------------------- public
def _root(dataset_dir: str | os.PathLike) -> Path:
    root = Path(dataset_dir)
    if not root.is_dir():
        raise MedAdvInputError(f"dataset_dir {str(root)!r} does not exist or is not a folder")
    return root


def find_subjects(
    dataset_dir: str | os.PathLike,
    layout: LayoutSpec = "auto",
    modalities: Sequence[str] = MODALITIES,
    require_seg: bool = True,
    channels: Mapping[str, int] | None = None,
    extra_keys: Sequence[str] = (),
) -> list[dict[str, Any]]:
    """One datalist entry per subject of ``dataset_dir``, sorted by subject id.

    Args:
        dataset_dir: a folder of subject folders, or an MSD task folder (with ``dataset.json``).
        layout: see :func:`resolve_layout`.
        modalities: the modality set: the files every subject must have.
        require_seg: whether every subject must have a segmentation (``seg``); ``msd`` reads the ``training``
            list when true and the ``test`` list (images only) when false.
        channels: ``msd`` only: ``{modality: channel index}`` of the 4D images, replacing ``dataset.json``'s.
        extra_keys: further files an alias table names per subject (e.g. ``brain_mask``).

    Raises:
        MedAdvInputError: the folder does not exist or holds no subjects; a subject lacks a file or has several
            candidates for one; the layout names no file for a modality of the set. The message names the
            folder or file and what was tried.
    """
    root = _root(dataset_dir)
    spec = resolve_layout(layout)
    keys = _keys(modalities, require_seg, extra_keys)
    if spec == "msd" or spec == "auto" and _is_msd(root):
        if not _is_msd(root):
            raise MedAdvInputError(f"dataset_dir {str(root)!r} has no dataset.json; layout 'msd' reads an MSD task "
                                   "folder (dataset.json, imagesTr/, labelsTr/)")
        return _msd_entries(root, modalities, require_seg, extra_keys, channels)
    if isinstance(spec, dict):
        _missing_keys(spec, keys, "the alias table")
    elif spec != "auto":
        _missing_keys(BRATS_TABLES[spec], keys, f"layout {spec!r}")
    entries = []
    for subject_dir in _subject_dirs(root):
        name = "aliases" if isinstance(spec, dict) else _auto_layout(subject_dir, keys) if spec == "auto" else spec
        table = spec if isinstance(spec, dict) else BRATS_TABLES[name]
        entries.append(_subject_entry(subject_dir, table, keys, name))
    return entries


def dataset_listing(dataset_dir: str | os.PathLike, layout: LayoutSpec = "auto") -> dict[str, Any]:
    """What a datalist of ``dataset_dir`` is made from, for its stamp: every subject folder with the names of the
    files in it, or for an MSD folder the content digest of ``dataset.json`` and the names in ``imagesTr`` /
    ``labelsTr`` / ``imagesTs``.

    Raises:
        MedAdvInputError: the folder does not exist or holds no subject folders.
    """
    root = _root(dataset_dir)
    spec = resolve_layout(layout)
    if spec == "msd" or spec == "auto" and _is_msd(root):
        return {"dataset.json": file_digest(root / "dataset.json") if _is_msd(root) else None,
                **{d: _file_names(root / d) for d in ("imagesTr", "labelsTr", "imagesTs") if (root / d).is_dir()}}
    return {d.name: _file_names(d) for d in _subject_dirs(root)}


def _file_names(folder: Path) -> list[str]:
    names = []
    for parent, dirs, files in os.walk(folder):
        dirs[:] = sorted(d for d in dirs if not d.startswith("."))
        rel = Path(parent).relative_to(folder)
        names += [str(rel / f) for f in sorted(files) if not f.startswith(".")]
    return names
