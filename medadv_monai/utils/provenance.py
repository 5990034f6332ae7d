"""What produced a result: the code (version and git commit), the packages, the machine, the command and the seed,
written into every report so that a shared report says how to reproduce it.

Paths in a report are written relative to the report's folder when they lie inside it (:func:`portable_path`), so
a report folder can be moved or shared without naming the machine it was made on.
"""

from __future__ import annotations

import datetime
import os
import platform
import re
import subprocess
import sys
from collections.abc import Mapping, Sequence
from importlib import metadata
from pathlib import Path
from typing import Any

__all__ = ["PACKAGES", "git_commit", "portable_path", "provenance", "provenance_markdown"]

PACKAGES: tuple[str, ...] = ("medadv-monai", "monai", "torch", "pytorch-ignite", "numpy", "nibabel", "scikit-image",
                             "nilearn")
"""The packages whose versions a report records."""

_ROOT = Path(__file__).resolve().parents[2]


def git_commit(root: str | os.PathLike = _ROOT) -> str | None:
    """The commit of the source tree at ``root`` (``<hash>+changes`` when files differ from it), or ``None`` when
    ``root`` is not a git checkout (an installed wheel) or git is unavailable."""
    if not (Path(root) / ".git").exists():
        return None
    try:
        head = subprocess.run(["git", "-C", str(root), "rev-parse", "HEAD"], capture_output=True, text=True,
                              timeout=10, check=True).stdout.strip()
        dirty = subprocess.run(["git", "-C", str(root), "status", "--porcelain", "--untracked-files=no"],
                               capture_output=True, text=True, timeout=10, check=True).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return None
    return f"{head}+changes" if dirty else head


def portable_path(path: str | os.PathLike, base: str | os.PathLike) -> str:
    """``path`` as a report shows it, never absolute: relative to ``base`` when inside it, relative to the
    repository (``<repo>/...``) when inside that, under ``~`` when in the home folder, otherwise relative to
    ``base`` (``../...``)."""
    if not os.path.isabs(path):
        return str(path)
    p = Path(path).resolve()
    for root, name in ((Path(base).resolve(), None), (_ROOT, "<repo>"), (Path.home().resolve(), "~")):
        try:
            rel = p.relative_to(root)
        except ValueError:
            continue
        return str(rel) if name is None else str(Path(name) / rel)
    return os.path.relpath(p, Path(base).resolve())


def _portable_arg(arg: str, base: str | os.PathLike) -> str:
    key, sep, value = arg.partition("=")
    if sep and os.path.isabs(value):
        return f"{key}={portable_path(value, base)}"
    if os.path.isabs(arg):
        return portable_path(arg, base)
    # quoted absolute paths inside a value, e.g. --config_file "['/abs/evaluate.yaml','/abs/protocol.yaml']"
    return re.sub(r"""(['"])(/[^'"]*)\1""", lambda m: m[1] + portable_path(m[2], base) + m[1], arg)


def provenance(base: str | os.PathLike, argv: Sequence[str] | None = None, **settings: Any) -> dict[str, Any]:
    """What produced a report in ``base``: the date (UTC), the command (``argv``, default ``sys.argv``, its paths
    made portable), the git commit, the package versions, Python, the platform, the device and ``settings``
    (e.g. the seed and the config files)."""
    versions = {}
    for name in PACKAGES:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = "not installed"
    argv = list(sys.argv if argv is None else argv)
    if argv:
        argv[0] = Path(argv[0]).name
    import torch

    device = torch.cuda.get_device_name(0) if torch.cuda.is_available() else f"CPU ({os.cpu_count()} cores)"
    return {
        "date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "command": " ".join(_portable_arg(a, base) for a in argv),
        "git_commit": git_commit() or "not a git checkout",
        "packages": versions,
        "python": platform.python_version(),
        "platform": platform.platform(),
        "device": device,
        **settings,
    }


def provenance_markdown(info: Mapping[str, Any]) -> str:
    """The "Reproduce" section of a report: one bullet per item of :func:`provenance`."""
    lines = ["## Reproduce", ""]
    for key, value in info.items():
        if isinstance(value, Mapping):
            value = ", ".join(f"{k} {v}" for k, v in value.items())
        elif isinstance(value, (list, tuple)):
            value = ", ".join(str(v) for v in value)
        lines.append(f"- {key.replace('_', ' ')}: `{value}`")
    return "\n".join(lines + [""])
