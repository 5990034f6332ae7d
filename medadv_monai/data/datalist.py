"""BraTS datalists: find each subject's modality files through an alias table and split subjects.

A dataset dir holds one folder per subject. An *alias table* maps each modality (``t1``, ``t1ce``, ``t2``,
``flair``) and ``seg`` to a list of glob patterns relative to the subject folder, where ``{subject}`` stands for
the folder name. The first pattern that matches exactly one file wins. Two tables are built in:

- ``brats2021``: ``{subject}_t1.nii.gz``, ``{subject}_t1ce.nii.gz``, ``{subject}_t2.nii.gz``,
  ``{subject}_flair.nii.gz``, ``{subject}_seg.nii.gz``;
- ``brats2023``: ``{subject}-t1n``, ``-t1c``, ``-t2w``, ``-t2f``, ``-seg`` (``.nii.gz``).

Any other naming is a table given as a dict (for example in a bundle config) or as a YAML/JSON file, e.g. for the
TCGA sample with ``_t1_bet`` / ``_t1c_bet`` / ``_t2_bet`` / ``_fla_bet`` names and ``fusion/simple.nii.gz``::

    t1: ["{subject}_t1_bet.nii.gz"]
    t1ce: ["{subject}_t1c_bet.nii.gz"]
    t2: ["{subject}_t2_bet.nii.gz"]
    flair: ["{subject}_fla_bet.nii.gz"]
    seg: ["fusion/simple.nii.gz"]

The split is by subject, never by slice: subjects are shuffled with a seeded generator and cut into
training / validation / test by the given fractions (default 0.70 / 0.15 / 0.15). The datalist is a MONAI
decathlon-style JSON: ``{"training": [...], "validation": [...], "test": [...]}``, each entry
``{"subject": id, "t1": path, "t1ce": path, "t2": path, "flair": path, "seg": path}`` with absolute paths.
"""

from __future__ import annotations

import json
import os
import random
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, Union

from medadv_monai.errors import MedAdvInputError
from medadv_monai.utils import save_json

__all__ = [
    "MODALITIES",
    "SEG_KEY",
    "SPLITS",
    "BUILTIN_ALIASES",
    "resolve_aliases",
    "find_subjects",
    "split_subjects",
    "build_datalist",
    "load_datalist",
    "ensure_datalist",
]

MODALITIES: tuple[str, ...] = ("t1", "t1ce", "t2", "flair")
SEG_KEY = "seg"
SPLITS: tuple[str, ...] = ("training", "validation", "test")

_EXTS = (".nii.gz", ".nii")


def _table(names: Mapping[str, str], sep: str) -> dict[str, list[str]]:
    return {key: [f"{{subject}}{sep}{name}{ext}" for ext in _EXTS] for key, name in names.items()}


BUILTIN_ALIASES: dict[str, dict[str, list[str]]] = {
    "brats2021": _table({"t1": "t1", "t1ce": "t1ce", "t2": "t2", "flair": "flair", "seg": "seg"}, "_"),
    "brats2023": _table({"t1": "t1n", "t1ce": "t1c", "t2": "t2w", "flair": "t2f", "seg": "seg"}, "-"),
}

AliasSpec = Union[str, os.PathLike, Mapping[str, Union[str, Sequence[str]]], None]


def resolve_aliases(aliases: AliasSpec = "auto", require_seg: bool = True) -> dict[str, list[str]] | str:
    """Turn an alias spec into a table ``{key: [pattern, ...]}``, or ``"auto"``.

    Args:
        aliases: ``"auto"`` (try each built-in table per subject), a built-in name (``brats2021``, ``brats2023``),
            a path to a YAML/JSON file holding a table, or the table itself. A table may give one pattern as a
            string instead of a list.
        require_seg: whether the table must name ``seg``.

    Raises:
        MedAdvInputError: unknown name, unreadable file, or a table that misses a modality or names unknown keys.
    """
    if aliases is None or aliases == "auto":
        return "auto"
    if isinstance(aliases, (str, os.PathLike)):
        name = str(aliases)
        if name in BUILTIN_ALIASES:
            return {k: list(v) for k, v in BUILTIN_ALIASES[name].items()}
        path = Path(name)
        if not path.is_file():
            raise MedAdvInputError(
                f"aliases: {name!r} is neither a built-in table ({', '.join(['auto', *BUILTIN_ALIASES])}) "
                "nor an existing YAML/JSON file"
            )
        aliases = _read_table_file(path)
    if not isinstance(aliases, Mapping):
        raise MedAdvInputError(f"aliases: expected a mapping of modality to patterns, got {type(aliases).__name__}")
    wanted = (*MODALITIES, SEG_KEY) if require_seg else MODALITIES
    unknown = sorted(set(aliases) - {*MODALITIES, SEG_KEY})
    if unknown:
        raise MedAdvInputError(
            f"aliases: unknown key(s) {unknown}; expected keys among {[*MODALITIES, SEG_KEY]}"
        )
    missing = [k for k in wanted if k not in aliases]
    if missing:
        raise MedAdvInputError(f"aliases: no pattern for {missing}; a table must name {list(wanted)}")
    table: dict[str, list[str]] = {}
    for key, patterns in aliases.items():
        patterns = [patterns] if isinstance(patterns, str) else list(patterns)
        if not patterns or not all(isinstance(p, str) and p for p in patterns):
            raise MedAdvInputError(
                f"aliases: {key!r} must be a non-empty pattern or list of patterns, got {patterns!r}")
        table[key] = patterns
    return table


def _read_table_file(path: Path) -> Any:
    try:
        text = path.read_text()
        if path.suffix.lower() == ".json":
            return json.loads(text)
        import yaml

        return yaml.safe_load(text)
    except (OSError, ValueError) as e:  # yaml.YAMLError subclasses Exception; caught below
        raise MedAdvInputError(f"aliases: cannot read table file {path}: {e}") from e
    except Exception as e:  # noqa: BLE001 - a malformed YAML file
        raise MedAdvInputError(f"aliases: cannot parse table file {path}: {e}") from e


def _match(subject_dir: Path, patterns: Sequence[str]) -> list[Path]:
    """Files matched by the first pattern that matches anything (sorted)."""
    for pattern in patterns:
        hits = sorted(p for p in subject_dir.glob(pattern.format(subject=subject_dir.name)) if p.is_file())
        if hits:
            return hits
    return []


def _find_subject_files(subject_dir: Path, table: Mapping[str, Sequence[str]]) -> dict[str, str]:
    entry = {"subject": subject_dir.name}
    for key, patterns in table.items():
        hits = _match(subject_dir, patterns)
        if not hits:
            raise MedAdvInputError(
                f"{subject_dir}: no file for {key!r} (tried {', '.join(patterns)}); "
                "give an alias table that matches this dataset's file names"
            )
        if len(hits) > 1:
            raise MedAdvInputError(
                f"{subject_dir}: {len(hits)} files match {key!r} ({', '.join(h.name for h in hits)}); "
                "expected exactly one, make the alias pattern more specific"
            )
        entry[key] = str(hits[0].resolve())
    return entry


def _auto_table(subject_dir: Path, require_seg: bool) -> dict[str, list[str]]:
    keys = (*MODALITIES, SEG_KEY) if require_seg else MODALITIES
    for table in BUILTIN_ALIASES.values():
        if all(_match(subject_dir, table[k]) for k in keys):
            return {k: table[k] for k in keys}
    # no built-in table matches completely: report against the closest one
    best = max(BUILTIN_ALIASES.values(), key=lambda t: sum(bool(_match(subject_dir, t[k])) for k in keys))
    return {k: best[k] for k in keys}


def find_subjects(
    dataset_dir: str | os.PathLike, aliases: AliasSpec = "auto", require_seg: bool = True
) -> list[dict[str, str]]:
    """Scan ``dataset_dir`` for subject folders and return one datalist entry per subject, sorted by id.

    Raises:
        MedAdvInputError: the folder does not exist, holds no subject folders, or a subject lacks a file or has
            several candidates for one key. The message names the subject folder and the patterns tried.
    """
    root = Path(dataset_dir)
    if not root.is_dir():
        raise MedAdvInputError(f"dataset_dir {str(root)!r} does not exist or is not a folder")
    table = resolve_aliases(aliases, require_seg=require_seg)
    subject_dirs = sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
    if not subject_dirs:
        raise MedAdvInputError(f"dataset_dir {str(root)!r} holds no subject folders; expected one folder per subject")
    entries = []
    for subject_dir in subject_dirs:
        subject_table = _auto_table(subject_dir, require_seg) if table == "auto" else table
        entries.append(_find_subject_files(subject_dir, subject_table))
    return entries


def split_subjects(
    subjects: Sequence[str], fractions: Sequence[float] = (0.7, 0.15, 0.15), seed: int = 0
) -> dict[str, list[str]]:
    """Split subject ids into training / validation / test with a seeded shuffle.

    Validation and test get ``round(fraction * n)`` subjects each, at least one each when there are three or more
    subjects and the fraction is positive; training gets the rest. Each list keeps the input order.
    """
    fractions = [float(f) for f in fractions]
    if len(fractions) != 3 or any(f < 0 for f in fractions) or abs(sum(fractions) - 1.0) > 1e-6:
        raise MedAdvInputError(
            f"split fractions {fractions} must be three non-negative numbers (training, validation, test) summing to 1"
        )
    n = len(subjects)
    order = list(subjects)
    random.Random(seed).shuffle(order)
    counts = []
    for f in fractions[1:]:
        k = round(f * n)
        if f > 0 and n >= 3:
            k = max(k, 1)
        counts.append(k)
    n_val, n_test = counts
    if n_val + n_test >= n and n > 0:
        raise MedAdvInputError(f"{n} subject(s) are too few for split fractions {fractions}: training would be empty")
    val, test = set(order[:n_val]), set(order[n_val : n_val + n_test])
    rank = {s: i for i, s in enumerate(subjects)}
    out = {"training": [], "validation": [], "test": []}
    for s in sorted(subjects, key=rank.__getitem__):
        out["validation" if s in val else "test" if s in test else "training"].append(s)
    return out


def build_datalist(
    dataset_dir: str | os.PathLike,
    out: str | os.PathLike | None = None,
    aliases: AliasSpec = "auto",
    fractions: Sequence[float] = (0.7, 0.15, 0.15),
    seed: int = 0,
    require_seg: bool = True,
) -> dict[str, list[dict[str, str]]]:
    """Scan ``dataset_dir``, split its subjects and return (and, if ``out`` is given, atomically write) the datalist."""
    entries = find_subjects(dataset_dir, aliases=aliases, require_seg=require_seg)
    by_id = {e["subject"]: e for e in entries}
    split = split_subjects(list(by_id), fractions=fractions, seed=seed)
    datalist = {name: [by_id[s] for s in ids] for name, ids in split.items()}
    if out is not None:
        save_json(datalist, out)
    return datalist


def load_datalist(path: str | os.PathLike) -> dict[str, list[dict[str, str]]]:
    """Read a datalist JSON written by :func:`build_datalist`, checking its shape."""
    path = Path(path)
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError as e:
        raise MedAdvInputError(f"datalist {str(path)!r} does not exist; build it with `medadv datalist`") from e
    except (OSError, ValueError) as e:
        raise MedAdvInputError(f"datalist {str(path)!r} is not readable JSON: {e}") from e
    if not isinstance(data, dict) or not any(k in data for k in SPLITS):
        raise MedAdvInputError(f"datalist {str(path)!r}: expected a JSON object with keys {list(SPLITS)}")
    for name, items in data.items():
        if not isinstance(items, list) or not all(isinstance(i, dict) and "subject" in i for i in items):
            raise MedAdvInputError(f"datalist {str(path)!r}: {name!r} must be a list of entries with a 'subject' key")
    return data


def ensure_datalist(
    dataset_dir: str | os.PathLike,
    path: str | os.PathLike,
    aliases: AliasSpec = "auto",
    fractions: Sequence[float] = (0.7, 0.15, 0.15),
    seed: int = 0,
) -> dict[str, list[dict[str, str]]]:
    """Load the datalist at ``path``, building it from ``dataset_dir`` first if it does not exist yet.

    This is what bundle configs call, so a first run needs nothing but a dataset dir.
    """
    if Path(path).is_file():
        return load_datalist(path)
    return build_datalist(dataset_dir, out=path, aliases=aliases, fractions=fractions, seed=seed)
