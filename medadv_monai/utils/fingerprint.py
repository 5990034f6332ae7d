"""One mechanism for reuse: every cached or resumable artefact records what made it, and is reused only if it matches.

An artefact's *description* is a JSON-able dict of everything that shaped it (settings, the content digests of its
input files, the digest of a model checkpoint, code-relevant versions). Its *fingerprint* is the SHA-256 of that
description. :func:`write_stamp` stores both beside the artefact; :func:`check_stamp` compares a stored stamp with
the description of the present run and names every key that changed, so a caller can rebuild, or refuse to resume
with one line that says what changed and how to start afresh.
"""

from __future__ import annotations

import enum
import hashlib
import json
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch

from medadv_monai.errors import MedAdvInputError
from medadv_monai.utils.io import save_json

__all__ = ["changed_keys", "check_stamp", "describe", "file_digest", "fingerprint", "read_stamp", "reusable",
           "settings_only", "stamp_changes", "write_stamp"]

_SKIP_ATTRS = {"R", "_open"}  # a transform's random state, LoadCachedSliced's open memory maps: not settings
#: files up to this size are hashed whole; larger ones by size and their first and last chunk
_WHOLE_FILE_BYTES = 64 << 20
_CHUNK = 4 << 20


def describe(obj: Any, depth: int = 0, seen: set[int] | None = None) -> Any:
    """A JSON-able description of ``obj``'s settings: primitives as they are, arrays by digest, objects as class +
    attributes (recursively; a transform's random state and open memory maps are left out: state, never hashed)."""
    seen = set() if seen is None else seen
    if isinstance(obj, (bool, int, float, str, type(None))):
        return obj
    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, enum.Enum):
        return obj.value
    if isinstance(obj, os.PathLike):
        return os.fspath(obj)
    if isinstance(obj, (torch.Tensor, np.ndarray)):
        arr = obj.detach().cpu().numpy() if isinstance(obj, torch.Tensor) else obj
        return {"array": hashlib.sha256(np.ascontiguousarray(arr).tobytes()).hexdigest()[:16], "shape": arr.shape}
    if isinstance(obj, (list, tuple, set, frozenset)):
        items = sorted(obj, key=repr) if isinstance(obj, (set, frozenset)) else obj
        return [describe(o, depth + 1, seen) for o in items]
    if isinstance(obj, Mapping):
        return {str(k): describe(v, depth + 1, seen) for k, v in sorted(obj.items(), key=lambda kv: str(kv[0]))}
    kind = type(obj)
    name = f"{kind.__module__}.{kind.__qualname__}"
    if isinstance(obj, type) or callable(obj) and not hasattr(obj, "__dict__"):
        return getattr(obj, "__qualname__", name)
    if id(obj) in seen or depth > 6 or not hasattr(obj, "__dict__"):
        return name
    seen.add(id(obj))
    attrs = {k: describe(v, depth + 1, seen) for k, v in sorted(vars(obj).items()) if k not in _SKIP_ATTRS}
    return {"class": name, **attrs}


def fingerprint(description: Any) -> str:
    """SHA-256 (hex) of a description (:func:`describe` is applied first, so any object works)."""
    text = json.dumps(describe(description), sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()


def file_digest(path: str | os.PathLike) -> str:
    """``"<size>:<sha256>"`` of a file's content: the whole file up to 64 MiB, else its first and last 4 MiB.

    Content, not time stamps: a file replaced by other content of the same size with its time stamp restored gets
    another digest.

    Raises:
        MedAdvInputError: the file cannot be read (the message names it).
    """
    path = Path(path)
    try:
        size = path.stat().st_size
        h = hashlib.sha256()
        with open(path, "rb") as f:
            if size <= _WHOLE_FILE_BYTES:
                for block in iter(lambda: f.read(_CHUNK), b""):
                    h.update(block)
            else:
                h.update(f.read(_CHUNK))
                f.seek(-_CHUNK, os.SEEK_END)
                h.update(f.read(_CHUNK))
    except OSError as e:
        raise MedAdvInputError(f"{str(path)!r}: cannot read it to check what it holds ({e.strerror or e})") from e
    return f"{size}:{h.hexdigest()}"


def _flat(obj: Any, prefix: str = "") -> dict[str, Any]:
    if isinstance(obj, Mapping):
        out: dict[str, Any] = {}
        for k, v in obj.items():
            out.update(_flat(v, f"{prefix}.{k}" if prefix else str(k)))
        return out
    return {prefix: obj}


def changed_keys(old: Any, new: Any) -> list[str]:
    """The dotted keys whose values differ between two descriptions (added and removed keys included)."""
    a, b = _flat(describe(old)), _flat(describe(new))
    return sorted(k for k in set(a) | set(b) if a.get(k, ...) != b.get(k, ...))


def settings_only(description: Any) -> Any:
    """A description (:func:`describe`) without private attributes (open files, drawn seeds): state, not settings."""
    if isinstance(description, dict):
        return {k: settings_only(v) for k, v in description.items() if not k.startswith("_")}
    if isinstance(description, list):
        return [settings_only(v) for v in description]
    return description


def reusable(path: str | os.PathLike, description: Any, content: Mapping[str, type]) -> tuple[dict | None, str]:
    """A stamped artefact that holds its own content (a finished grid cell): ``(its content, "")`` when the file's
    stamp matches ``description`` and it holds each ``content`` key with the given type, else ``(None, why not)``
    (``""`` when there is no file)."""
    path = Path(path)
    if not path.exists():
        return None, ""
    stamp = read_stamp(path)  # the file is its own stamp: read once
    changed = stamp_changes(stamp, description)
    if changed == ["<no stamp>"]:
        return None, f"{path.name} is unreadable or unstamped"
    if changed:
        return None, f"{path.name} was made with other {', '.join(changed)}"
    if not all(isinstance(stamp.get(k), t) for k, t in content.items()):
        return None, f"{path.name} is unreadable"
    return {k: stamp[k] for k in content}, ""


def write_stamp(path: str | os.PathLike, description: Any, **content: Any) -> Path:
    """Write ``{"fingerprint", "description", **content}`` to the JSON file ``path`` (atomically); ``content`` is
    what the stamp vouches for when the artefact lives in the same file (e.g. a finished grid cell)."""
    desc = describe(description)
    return save_json({"fingerprint": fingerprint(desc), "description": desc, **content}, path)


def read_stamp(path: str | os.PathLike) -> dict[str, Any] | None:
    """The stamp at ``path``, or ``None`` if there is none or it is unreadable (an unreadable stamp matches
    nothing, so the artefact is rebuilt)."""
    try:
        stamp = json.loads(Path(path).read_text())
    except (OSError, ValueError):
        return None
    return stamp if isinstance(stamp, dict) and "fingerprint" in stamp else None


def stamp_changes(stamp: Mapping[str, Any] | None, description: Any) -> list[str]:
    """Compare a stamp already read (:func:`read_stamp`) with ``description``: ``[]`` when they match, else the
    changed keys (``["<no stamp>"]`` when there is none)."""
    if stamp is None:
        return ["<no stamp>"]
    if stamp["fingerprint"] == fingerprint(description):
        return []
    return changed_keys(stamp.get("description", {}), description) or ["<fingerprint>"]


def check_stamp(path: str | os.PathLike, description: Any) -> list[str]:
    """:func:`stamp_changes` of the stamp at ``path``."""
    return stamp_changes(read_stamp(path), description)
