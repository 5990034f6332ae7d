"""Resume training from the newest interval checkpoint that MONAI's ``CheckpointSaver`` wrote."""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any

from ignite.engine import Engine
from monai.handlers import CheckpointLoader

__all__ = ["latest_checkpoint", "ResumeFromLatest"]

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
