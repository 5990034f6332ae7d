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

Patterns are relative to the subject folder (an absolute pattern is an error). ``{subject}`` is replaced by the
folder name taken literally (a folder named ``sub[01]`` matches files named ``sub[01]_...``); the rest of the
pattern keeps its glob meaning (``*``, ``?``, ``[...]``).

The split is by subject, never by slice: subjects are shuffled with a seeded generator and cut into
training / validation / test by the given fractions (default 0.70 / 0.15 / 0.15). A split whose fraction is above
0 must get at least one subject (:func:`build_datalist` refuses a dataset too small for its fractions); a fraction
of 0 leaves its split empty on purpose. The datalist is a MONAI decathlon-style JSON:
``{"training": [...], "validation": [...], "test": [...]}``, each entry
``{"subject": id, "t1": path, "t1ce": path, "t2": path, "flair": path, "seg": path}`` with absolute paths.

A datalist written to a file is stamped (:mod:`medadv_monai.utils.fingerprint`) with what made it: the resolved
dataset folder, the resolved alias table, the fractions, the seed, every subject folder and the names of the files
in it, and the datalist's own digest. :func:`ensure_datalist` reuses the file only while that stamp matches, and
rebuilds it otherwise.
"""

from __future__ import annotations

import glob
import json
import os
import random
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, Union

from medadv_monai.errors import MedAdvInputError
from medadv_monai.utils import save_json
from medadv_monai.utils.fingerprint import check_stamp, file_digest, write_stamp

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
    "datalist_description",
    "stamp_path",
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
        for p in patterns:
            _check_pattern(key, p)
        table[key] = patterns
    return table


def _check_pattern(key: str, pattern: str) -> None:
    if os.path.isabs(pattern) or pattern.startswith("~"):
        raise MedAdvInputError(
            f"aliases: pattern {pattern!r} for {key!r} is absolute; patterns are relative to the subject folder, "
            "e.g. '{subject}_t1.nii.gz' or 'fusion/simple.nii.gz'")
    try:
        pattern.format(subject="x")
    except (KeyError, IndexError, ValueError) as e:
        raise MedAdvInputError(
            f"aliases: pattern {pattern!r} for {key!r}: only {{subject}} may stand in braces ({e!r})") from None


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
    """Files matched by the first pattern that matches anything (sorted). ``{subject}`` is the folder name taken
    literally (glob-escaped); the rest of the pattern is a glob."""
    for pattern in patterns:
        hits = sorted(p for p in subject_dir.glob(pattern.format(subject=glob.escape(subject_dir.name)))
                      if p.is_file())
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


def _subject_dirs(dataset_dir: str | os.PathLike) -> list[Path]:
    root = Path(dataset_dir)
    if not root.is_dir():
        raise MedAdvInputError(f"dataset_dir {str(root)!r} does not exist or is not a folder")
    try:
        subject_dirs = sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
    except OSError as e:
        raise MedAdvInputError(f"dataset_dir {str(root)!r}: cannot list it ({e.strerror or e})") from e
    if not subject_dirs:
        raise MedAdvInputError(f"dataset_dir {str(root)!r} holds no subject folders; expected one folder per subject")
    return subject_dirs


def find_subjects(
    dataset_dir: str | os.PathLike, aliases: AliasSpec = "auto", require_seg: bool = True
) -> list[dict[str, str]]:
    """Scan ``dataset_dir`` for subject folders and return one datalist entry per subject, sorted by id.

    Raises:
        MedAdvInputError: the folder does not exist, holds no subject folders, or a subject lacks a file or has
            several candidates for one key. The message names the subject folder and the patterns tried.
    """
    subject_dirs = _subject_dirs(dataset_dir)
    table = resolve_aliases(aliases, require_seg=require_seg)
    entries = []
    for subject_dir in subject_dirs:
        subject_table = _auto_table(subject_dir, require_seg) if table == "auto" else table
        entries.append(_find_subject_files(subject_dir, subject_table))
    return entries


def _fractions(fractions: Any) -> list[float]:
    try:
        values = [float(f) for f in fractions] if not isinstance(fractions, (str, bytes)) else []
    except (TypeError, ValueError):
        values = []
    if len(values) != 3 or any(not f >= 0 for f in values) or abs(sum(values) - 1.0) > 1e-6:
        raise MedAdvInputError(f"split_fractions {fractions!r} must be three non-negative numbers "
                               "(training, validation, test) summing to 1")
    return values


def split_subjects(
    subjects: Sequence[str], fractions: Sequence[float] = (0.7, 0.15, 0.15), seed: int = 0
) -> dict[str, list[str]]:
    """Split subject ids into training / validation / test with a seeded shuffle.

    Validation and test get ``round(fraction * n)`` subjects each, at least one each when there are three or more
    subjects and the fraction is positive; training gets the rest. Each list keeps the input order. Fewer than
    three subjects can leave a split with a positive fraction empty: :func:`build_datalist` refuses that, this
    function only splits.
    """
    fractions = _fractions(fractions)
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
        raise MedAdvInputError(f"{n} subject(s) are too few for split_fractions {fractions}: training would be empty")
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
    """Scan ``dataset_dir``, split its subjects and return (and, if ``out`` is given, atomically write) the datalist.

    A written datalist is stamped (see :func:`stamp_path`) so :func:`ensure_datalist` can tell whether it is still
    what these arguments make.

    Raises:
        MedAdvInputError: bad folder, aliases or fractions; a split whose fraction is above 0 gets no subject; the
            file cannot be written (the message names it; nothing half-written is left).
    """
    description = datalist_description(dataset_dir, aliases, fractions, seed, require_seg) if out else None
    return _build(dataset_dir, out, aliases, fractions, seed, require_seg, description)


def _build(dataset_dir: str | os.PathLike, out: str | os.PathLike | None, aliases: AliasSpec,
           fractions: Sequence[float], seed: int, require_seg: bool,
           description: Mapping[str, Any] | None) -> dict[str, list[dict[str, str]]]:
    entries = find_subjects(dataset_dir, aliases=aliases, require_seg=require_seg)
    by_id = {e["subject"]: e for e in entries}
    split = split_subjects(list(by_id), fractions=fractions, seed=seed)
    _check_not_empty(split, _fractions(fractions))
    datalist = {name: [by_id[s] for s in ids] for name, ids in split.items()}
    if out is not None:
        stamp = stamp_path(out)
        try:
            stamp.unlink(missing_ok=True)  # a datalist is never left beside a stamp that describes another one
            save_json(datalist, out)
            write_stamp(stamp, {**description, "datalist": file_digest(out)})
        except OSError as e:
            raise MedAdvInputError(f"datalist {str(out)!r}: cannot write it ({e.strerror or e}); "
                                   "free disk space or choose a writable work_dir / datalist_file") from e
    return datalist


def _check_not_empty(split: Mapping[str, Sequence[str]], fractions: Sequence[float]) -> None:
    """A split whose fraction is above 0 must get a subject (a fraction of 0 leaves its split empty on purpose)."""
    empty = [name for name, f in zip(SPLITS, fractions) if f > 0 and not split[name]]
    if empty:
        n = sum(len(v) for v in split.values())
        got = ", ".join(f"{name} {len(split[name])}" for name in SPLITS)
        raise MedAdvInputError(
            f"{n} subject(s) split by split_fractions {list(fractions)} give {got} subject(s): the "
            f"{' and '.join(empty)} split would be empty; use at least 3 subjects, or give 0 to a split you do not "
            "need in split_fractions, e.g. --split_fractions \"[1.0, 0.0, 0.0]\" for training only")


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


def stamp_path(path: str | os.PathLike) -> Path:
    """Where the stamp of the datalist at ``path`` lives: ``datalist.json`` -> ``datalist.stamp.json``."""
    path = Path(path)
    return path.with_name(f"{path.stem if path.suffix == '.json' else path.name}.stamp.json")


def datalist_description(
    dataset_dir: str | os.PathLike,
    aliases: AliasSpec = "auto",
    fractions: Sequence[float] = (0.7, 0.15, 0.15),
    seed: int = 0,
    require_seg: bool = True,
) -> dict[str, Any]:
    """What makes a datalist: the resolved dataset folder, the resolved alias table (``"auto"`` with the built-in
    tables it tries), the fractions, the seed, and every subject folder with the names of the files in it.

    Raises:
        MedAdvInputError: the folder does not exist or holds no subject folder, or the aliases are invalid.
    """
    subject_dirs = _subject_dirs(dataset_dir)
    table = resolve_aliases(aliases, require_seg=require_seg)
    return {
        "dataset_dir": str(Path(dataset_dir).resolve()),
        "aliases": {"auto": BUILTIN_ALIASES} if table == "auto" else table,
        "require_seg": bool(require_seg),
        "fractions": _fractions(fractions),
        "seed": seed,
        "subjects": {d.name: _file_names(d) for d in subject_dirs},
    }


def _file_names(subject_dir: Path) -> list[str]:
    names = []
    for parent, dirs, files in os.walk(subject_dir):
        dirs[:] = sorted(d for d in dirs if not d.startswith("."))
        rel = Path(parent).relative_to(subject_dir)
        names += [str(rel / f) for f in sorted(files) if not f.startswith(".")]
    return names


def ensure_datalist(
    dataset_dir: str | os.PathLike,
    path: str | os.PathLike,
    aliases: AliasSpec = "auto",
    fractions: Sequence[float] = (0.7, 0.15, 0.15),
    seed: int = 0,
) -> dict[str, list[dict[str, str]]]:
    """The datalist of ``dataset_dir`` kept at ``path``: reused while its stamp matches, else (re)built.

    This is what bundle configs call, so a first run needs nothing but a dataset dir. The file at ``path`` is this
    function's own: when the dataset folder, the aliases, the fractions, the seed, the subject folders or their
    file names change, or the file was edited or damaged, it is rebuilt (and a dataset folder that no longer
    exists is an error, never a reason to reuse the old list). To use a fixed datalist instead, set the config's
    ``datalist`` to ``$medadv_monai.data.load_datalist('<file>')``.
    """
    description = datalist_description(dataset_dir, aliases, fractions, seed)  # a missing folder fails here
    path = Path(path)
    if path.is_file():
        try:
            stamped = {**description, "datalist": file_digest(path)}
        except MedAdvInputError:
            stamped = None
        if stamped is not None and not check_stamp(stamp_path(path), stamped):
            return load_datalist(path)
    return _build(dataset_dir, path, aliases, fractions, seed, True, description)
