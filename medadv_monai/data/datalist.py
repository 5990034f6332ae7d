"""Datalists: a dataset's subjects (found by :mod:`~medadv_monai.data.layouts`) split by subject.

The split is by subject, never by slice: subjects are shuffled with a seeded generator and cut into
training / validation / test by the given fractions (default 0.70 / 0.15 / 0.15). A split whose fraction is above
0 must get at least one subject (:func:`build_datalist` refuses a dataset too small for its fractions); a fraction
of 0 leaves its split empty on purpose, so ``[0, 0, 1]`` makes every subject a test subject (an external test set
for a model trained elsewhere). The datalist is a MONAI decathlon-style JSON: ``{"training": [...],
"validation": [...], "test": [...]}``, each entry as :func:`~medadv_monai.data.layouts.find_subjects` makes it.

A datalist written to a file is stamped (:mod:`medadv_monai.utils.fingerprint`) with what made it: the resolved
dataset folder, the layout (a name or the resolved alias table), the modality set, the MSD channel map, the
fractions, the seed, every subject folder (or MSD file) and the names of the files in it, and the datalist's own
digest. :func:`ensure_datalist` reuses the file only while that stamp matches, and rebuilds it otherwise.
"""

from __future__ import annotations

import json
import os
import random
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from medadv_monai.data.layouts import (
    MODALITIES,
    LayoutSpec,
    check_modalities,
    dataset_listing,
    find_subjects,
    resolve_layout,
)
from medadv_monai.errors import MedAdvInputError
from medadv_monai.utils import save_json
from medadv_monai.utils.fingerprint import check_stamp, file_digest, write_stamp

__all__ = [
    "SPLITS",
    "split_subjects",
    "build_datalist",
    "load_datalist",
    "ensure_datalist",
    "datalist_description",
    "stamp_path",
]

SPLITS: tuple[str, ...] = ("training", "validation", "test")


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
    subjects and the fraction is positive; training gets the rest (with a training fraction of 0, test gets every
    subject validation does not: ``[0, 0, 1]`` makes all of them test subjects). Each list keeps the input order.
    Fewer than three subjects can leave a split with a positive fraction empty: :func:`build_datalist` refuses that,
    this function only splits.
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
    if fractions[0] == 0:  # no training split: every subject not in validation is a test subject
        n_val = min(n_val, n)
        n_test = n - n_val
    elif n_val + n_test >= n and n > 0:
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
    layout: LayoutSpec = "auto",
    fractions: Sequence[float] = (0.7, 0.15, 0.15),
    seed: int = 0,
    modalities: Sequence[str] = MODALITIES,
    channels: Mapping[str, int] | None = None,
    require_seg: bool = True,
    extra_keys: Sequence[str] = (),
) -> dict[str, list[dict[str, Any]]]:
    """Find the subjects of ``dataset_dir``, split them and return (and, if ``out`` is given, atomically write)
    the datalist.

    ``layout``, ``modalities``, ``channels``, ``require_seg`` and ``extra_keys`` are those of
    :func:`~medadv_monai.data.layouts.find_subjects`. A written datalist is stamped (see :func:`stamp_path`) so
    :func:`ensure_datalist` can tell whether it is still what these arguments make.

    Raises:
        MedAdvInputError: bad folder, layout, modalities or fractions; a split whose fraction is above 0 gets no
            subject; the file cannot be written (the message names it; nothing half-written is left).
    """
    source = _source(layout, modalities, channels, require_seg, extra_keys)
    description = datalist_description(dataset_dir, fractions=fractions, seed=seed, **source) if out else None
    return _build(dataset_dir, out, fractions, seed, source, description)


def _source(layout: LayoutSpec, modalities: Sequence[str], channels: Mapping[str, int] | None, require_seg: bool,
            extra_keys: Sequence[str]) -> dict[str, Any]:
    """The arguments of find_subjects, checked and in plain form (they go into the stamp)."""
    return {"layout": resolve_layout(layout), "modalities": list(check_modalities(modalities)),
            "channels": None if channels is None else dict(channels), "require_seg": bool(require_seg),
            "extra_keys": list(extra_keys)}


def _build(dataset_dir: str | os.PathLike, out: str | os.PathLike | None, fractions: Sequence[float], seed: int,
           source: Mapping[str, Any], description: Mapping[str, Any] | None) -> dict[str, list[dict[str, Any]]]:
    entries = find_subjects(dataset_dir, **source)
    by_id = {e["subject"]: e for e in entries}
    if len(by_id) != len(entries):
        raise MedAdvInputError(f"dataset_dir {str(dataset_dir)!r}: two subjects share an id; expected one entry "
                               "per subject")
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
    layout: LayoutSpec = "auto",
    fractions: Sequence[float] = (0.7, 0.15, 0.15),
    seed: int = 0,
    modalities: Sequence[str] = MODALITIES,
    channels: Mapping[str, int] | None = None,
    require_seg: bool = True,
    extra_keys: Sequence[str] = (),
) -> dict[str, Any]:
    """What makes a datalist: the resolved dataset folder, how its subjects are found (layout, modality set,
    channels, keys), the fractions, the seed, and every subject folder (or MSD file) with its file names.

    Raises:
        MedAdvInputError: the folder does not exist or holds no subject folder, or the layout is invalid.
    """
    source = _source(layout, modalities, channels, require_seg, extra_keys)
    return {
        "dataset_dir": str(Path(dataset_dir).resolve()),
        **source,
        "fractions": _fractions(fractions),
        "seed": seed,
        "subjects": dataset_listing(dataset_dir, source["layout"]),
    }


def ensure_datalist(
    dataset_dir: str | os.PathLike,
    path: str | os.PathLike,
    layout: LayoutSpec = "auto",
    fractions: Sequence[float] = (0.7, 0.15, 0.15),
    seed: int = 0,
    modalities: Sequence[str] = MODALITIES,
    channels: Mapping[str, int] | None = None,
    extra_keys: Sequence[str] = (),
) -> dict[str, list[dict[str, Any]]]:
    """The datalist of ``dataset_dir`` kept at ``path``: reused while its stamp matches, else (re)built.

    This is what bundle configs call, so a first run needs nothing but a dataset dir. The file at ``path`` is this
    function's own: when the dataset folder, the layout, the modality set, the channels, the fractions, the seed,
    the subject folders or their file names change, or the file was edited or damaged, it is rebuilt (and a
    dataset folder that no longer exists is an error, never a reason to reuse the old list). To use a fixed
    datalist instead, set the config's ``datalist`` to ``$medadv_monai.data.load_datalist('<file>')``.
    """
    source = _source(layout, modalities, channels, True, extra_keys)
    # a missing folder fails here
    description = datalist_description(dataset_dir, fractions=fractions, seed=seed, **source)
    path = Path(path)
    if path.is_file():
        try:
            stamped = {**description, "datalist": file_digest(path)}
        except MedAdvInputError:
            stamped = None
        if stamped is not None and not check_stamp(stamp_path(path), stamped):
            return load_datalist(path)
    return _build(dataset_dir, path, fractions, seed, source, description)
