"""Checkpoints: save them atomically, and resume training from the newest one."""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from ignite.engine import Engine
from ignite.handlers.checkpoint import BaseSaveHandler
from monai.handlers import CheckpointLoader, CheckpointSaver

from medadv_monai.utils import torch_save

__all__ = ["AtomicCheckpointSaver", "ResumeFromLatest", "latest_checkpoint"]

_EPOCH = re.compile(r"checkpoint_epoch=(\d+)\.pt$")


def latest_checkpoint(directory: str | os.PathLike, prefix: str = "") -> Path | None:
    """The ``{prefix}checkpoint_epoch=N.pt`` file with the largest N in ``directory``, or ``None``."""
    found = []
    for p in Path(directory).glob(f"{prefix}*checkpoint_epoch=*.pt"):
        m = _EPOCH.search(p.name)
        if m:
            found.append((int(m.group(1)), p))
    return max(found)[1] if found else None


class ResumeFromLatest:
    """Attach a MONAI ``CheckpointLoader`` for the newest interval checkpoint in ``directory``, if there is one.

    With the trainer and optimizer in ``load_dict`` an interrupted run continues from the last finished epoch.
    Checkpoints are read with ``torch.load(weights_only=True)`` by ``CheckpointLoader``.

    Args:
        directory: where ``CheckpointSaver(save_interval=...)`` writes.
        load_dict: objects to restore, as for ``CheckpointLoader``.
        enabled: set False to always start afresh.
        kwargs: further ``CheckpointLoader`` arguments (``map_location``, ``strict``).
    """

    def __init__(self, directory: str | os.PathLike, load_dict: dict, enabled: bool = True, **kwargs: Any) -> None:
        self.directory, self.load_dict, self.enabled, self.kwargs = directory, load_dict, enabled, kwargs
        self.loaded: Path | None = None

    def attach(self, engine: Engine) -> None:
        path = latest_checkpoint(self.directory) if self.enabled else None
        if path is not None:
            self.loaded = path
            engine.logger.info(f"resuming from {path}")
            CheckpointLoader(load_path=str(path), load_dict=self.load_dict, **self.kwargs).attach(engine)


class _AtomicSave(BaseSaveHandler):
    """Save handler that writes through :func:`medadv_monai.utils.torch_save` (temporary name, then rename) and
    removes superseded files only after the new one is in place (ignite asks to remove the old file first)."""

    def __init__(self, inner: Any) -> None:
        self.inner = inner  # MONAI's _DiskSaver: its folder, optional fixed file name and remove()
        self.pending: list[str] = []

    def _name(self, filename: str) -> str:
        return getattr(self.inner, "filename", None) or filename

    def __call__(self, checkpoint: Mapping, filename: str, metadata: Mapping | None = None) -> None:
        name = self._name(filename)
        torch_save(checkpoint, Path(self.inner.dirname) / name)
        for old in self.pending:
            if self._name(old) != name:
                self.inner.remove(old)
        self.pending.clear()

    def remove(self, filename: str) -> None:
        self.pending.append(filename)


class AtomicCheckpointSaver(CheckpointSaver):
    """MONAI's ``CheckpointSaver`` writing every file atomically.

    MONAI 1.6 saves in place (``atomic=False``, to keep group read permission), and ignite deletes the previous
    checkpoint before writing the next, so a run killed during a save could leave a truncated checkpoint, or
    none. This saver writes to a temporary name with the usual umask permissions, renames it into place, and only
    then deletes the superseded file. Same arguments as ``CheckpointSaver``.
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        for name in ("_final_checkpoint", "_key_metric_checkpoint", "_interval_checkpoint"):
            checkpoint = getattr(self, name, None)
            if checkpoint is not None:
                checkpoint.save_handler = _AtomicSave(checkpoint.save_handler)
