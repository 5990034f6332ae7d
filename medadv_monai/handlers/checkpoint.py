"""Checkpoints: save them atomically, and resume training from the newest one only when the run that made it had
the same settings.

A checkpoint folder (``ckpt_dir``) of a training holds:

- ``checkpoint_epoch=N.pt``: the newest interval checkpoint (``AtomicCheckpointSaver``);
- ``settings.json``: the stamp (:mod:`medadv_monai.utils.fingerprint`) of the settings of the run those checkpoints
  belong to, written by :class:`ResumeFromLatest` when training starts;
- ``train.lock``: while a training runs, its pid (one training per folder at a time);
- ``previous/``: the checkpoints and stamp that the latest ``resume: false`` run set aside.
"""

from __future__ import annotations

import atexit
import logging
import os
import re
import shutil
import socket
import tempfile
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from ignite.engine import Engine, Events
from ignite.handlers.checkpoint import BaseSaveHandler
from monai.handlers import CheckpointLoader, CheckpointSaver

from medadv_monai.errors import MedAdvInputError
from medadv_monai.networks.io import load_checkpoint
from medadv_monai.utils import torch_save
from medadv_monai.utils.checks import check_bool
from medadv_monai.utils.fingerprint import describe, fingerprint, read_stamp, stamp_changes, write_stamp

__all__ = ["AtomicCheckpointSaver", "ResumeFromLatest", "RunLock", "latest_checkpoint", "network_description"]

logger = logging.getLogger(__name__)

_EPOCH = re.compile(r"checkpoint_epoch=(\d+)\.pt$")
SETTINGS_FILE = "settings.json"
LOCK_FILE = "train.lock"
PREVIOUS_DIR = "previous"
_AFRESH = "pass --resume false to start afresh or choose another output_dir"


def latest_checkpoint(directory: str | os.PathLike, prefix: str = "") -> Path | None:
    """The ``{prefix}checkpoint_epoch=N.pt`` file with the largest N in ``directory``, or ``None``."""
    found = []
    for p in Path(directory).glob(f"{prefix}*checkpoint_epoch=*.pt"):
        m = _EPOCH.search(p.name)
        if m:
            found.append((int(m.group(1)), p))
    return max(found)[1] if found else None


def network_description(network: torch.nn.Module) -> dict[str, Any]:
    """What a network is, not what it has learnt: its class, parameter count and a digest of its architecture
    (``repr``: every layer with its hyper-parameters). For a resume stamp (``ResumeFromLatest(settings=...)``)."""
    net = getattr(network, "module", network)  # DistributedDataParallel / DataParallel
    return {"class": type(net).__qualname__, "parameters": sum(p.numel() for p in net.parameters()),
            "architecture": fingerprint(repr(net))[:16]}


def _is_rank0() -> bool:
    dist = torch.distributed
    return not (dist.is_available() and dist.is_initialized()) or dist.get_rank() == 0


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's process
        return True
    return True


class RunLock:
    """A lock file that one process at a time holds: created with ``O_CREAT | O_EXCL``, holding ``<pid> <host>``.

    A lock whose process is gone (same host, pid not running) is stale and taken over; one the calling process
    already holds is taken again. Released by :meth:`release` (and at interpreter exit).

    Args:
        path: the lock file.
        what: what it guards, for the error message.
    """

    def __init__(self, path: str | os.PathLike, what: str = "folder") -> None:
        self.path, self.what = Path(path), what
        self.held = False

    def _content(self) -> str:
        return f"{os.getpid()} {socket.gethostname()}\n"

    def _create(self) -> bool:
        try:
            fd = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
        except FileExistsError:
            return False
        with os.fdopen(fd, "w") as f:
            f.write(self._content())
        return True

    def _holder(self, path: Path) -> tuple[int | None, str | None, float]:
        try:
            text, age = path.read_text().split(), time.time() - path.stat().st_mtime
        except OSError:
            return None, None, 0.0
        pid = int(text[0]) if text and text[0].isdigit() else None
        return pid, (text[1] if len(text) > 1 else None), age

    def _stale(self, pid: int | None, host: str | None, age: float) -> bool:
        if pid is None:  # empty or garbled: a writer that died between creating and writing, once it is old
            return age > 30
        if host not in (None, socket.gethostname()):
            return False  # another machine's process: cannot tell, so it holds
        return pid == os.getpid() or not _pid_alive(pid)

    def acquire(self) -> RunLock:
        """Take the lock, or raise :class:`MedAdvInputError` naming the process that holds it."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        for _ in range(5):
            if self._create():
                self.held = True
                atexit.register(self.release)
                return self
            pid, host, age = self._holder(self.path)
            if not self._stale(pid, host, age):
                where = f" on {host}" if host and host != socket.gethostname() else ""
                raise MedAdvInputError(
                    f"{self.path.parent} is in use by another {self.what} (pid {pid}{where}, lock file {self.path}); "
                    f"wait for it to end or choose another output_dir (delete the lock file only if it is not running)")
            # stale: move it aside under a name of our own, check it is still the stale one, then retry O_EXCL
            aside = self.path.with_name(f".{self.path.name}.{os.getpid()}.stale")
            try:
                os.replace(self.path, aside)
            except FileNotFoundError:
                continue
            if self._holder(aside)[:2] != (pid, host):  # another process took it over meanwhile: give it back
                try:
                    os.link(aside, self.path)
                except FileExistsError:
                    pass
            aside.unlink(missing_ok=True)
            if pid != os.getpid():
                logger.warning(f"took over the stale lock {self.path} of pid {pid} (no longer running)")
        raise MedAdvInputError(f"{self.path}: could not take the lock of {self.path.parent}; try again")

    def release(self, *_: Any) -> None:
        """Remove the lock file if this process holds it."""
        if self.held and self._holder(self.path)[0] == os.getpid():
            self.path.unlink(missing_ok=True)
        self.held = False


class ResumeFromLatest:
    """Resume training from the newest interval checkpoint in ``directory``, only if it was made with the same
    settings; take the folder's lock for the run.

    At ``attach`` (before training starts), on rank 0 (every process without ``torch.distributed``):

    1. the lock ``directory/train.lock`` is taken (:class:`RunLock`): a second training into the same folder ends
       with one line naming the pid that holds it; a lock whose process is gone is taken over;
    2. with ``enabled`` and a checkpoint present, its stamp ``directory/settings.json`` is compared with
       ``settings``: any changed key is refused with one line naming every change (``<dir> holds a run with
       image_size=[64, 64]; this run has [32, 32]; pass --resume false ...``), as are checkpoints without a
       readable stamp; the checkpoint is read (``torch.load(weights_only=True)``) and checked against
       ``load_dict`` (its keys, the networks' parameter shapes, its epoch against ``max_epochs``): an unreadable,
       truncated or unfitting one is refused with one line naming it. It is then loaded when the engine starts
       (MONAI's ``CheckpointLoader``), so the run continues from the last finished epoch;
    3. without ``enabled`` (``resume: false``), the earlier run's checkpoints and stamp are moved, each by an atomic
       rename, into ``directory/previous/`` (replacing what an earlier ``resume: false`` put there), so no later
       resume can pick up a checkpoint of the old run beside those of the new one;
    4. ``settings`` is stamped into ``directory/settings.json`` for the run that starts.

    Other ranks only check and load. The lock is released when the engine completes, or when the process ends.

    Args:
        directory: where ``AtomicCheckpointSaver(save_interval=...)`` writes (``ckpt_dir``).
        load_dict: objects to restore, as for ``CheckpointLoader``.
        enabled: resume (``True``) or start afresh; booleans, 0/1 and the strings true/false/yes/no (as
            ``--resume false`` arrives) are accepted.
        settings: a JSON-able description of what makes the run (modalities, image size, the network's
            description, the data's fingerprint, the model under attack's digest, the loss settings, ...); ``None``
            resumes without checking.
        lock: take ``directory/train.lock`` for the run.
        kwargs: further ``CheckpointLoader`` arguments (``map_location``, ``strict``).

    Raises:
        MedAdvInputError: (at ``attach``) another live training holds the folder, a setting changed, the
            checkpoint is unreadable or does not fit, or ``enabled`` is not a boolean.
    """

    def __init__(self, directory: str | os.PathLike, load_dict: dict, enabled: Any = True,
                 settings: Mapping[str, Any] | None = None, lock: bool = True, **kwargs: Any) -> None:
        self.directory, self.load_dict, self.kwargs = Path(directory), load_dict, kwargs
        self.enabled = check_bool(enabled, "resume")
        self.settings = None if settings is None else dict(settings)
        self.lock = RunLock(self.directory / LOCK_FILE, what="training") if lock else None
        self.loaded: Path | None = None

    @property
    def stamp_file(self) -> Path:
        return self.directory / SETTINGS_FILE

    def attach(self, engine: Engine) -> None:
        rank0 = _is_rank0()
        if rank0 and self.lock is not None:
            self.lock.acquire()
            engine.add_event_handler(Events.COMPLETED, self.lock.release)
        try:
            path = self._prepare(engine, rank0)
        except BaseException:
            if rank0 and self.lock is not None:
                self.lock.release()
            raise
        if path is not None:
            self.loaded = path
            engine.logger.info(f"resuming from {path}")
            CheckpointLoader(load_path=str(path), load_dict=self.load_dict, **self.kwargs).attach(engine)

    def _prepare(self, engine: Engine, rank0: bool) -> Path | None:
        path = latest_checkpoint(self.directory) if self.directory.is_dir() else None
        if not self.enabled:
            if rank0:
                self._set_aside()
        elif path is not None:
            if self.settings is not None:
                self._check_settings(path)
            self._check_checkpoint(path, engine)
        if rank0 and self.settings is not None:
            write_stamp(self.stamp_file, self.settings)
        return path if self.enabled else None

    def _check_settings(self, path: Path) -> None:
        stamp = read_stamp(self.stamp_file)
        changed = stamp_changes(stamp, self.settings)
        if changed == ["<no stamp>"]:
            raise MedAdvInputError(
                f"{self.directory} holds {path.name} but no readable record of the settings that made it "
                f"({self.stamp_file.name}); {_AFRESH}")
        if changed:
            old = stamp.get("description", {})
            new = describe(self.settings)
            then = ", ".join(f"{k}={_show(_lookup(old, k))}" for k in changed)
            now = (_show(_lookup(new, changed[0])) if len(changed) == 1
                   else ", ".join(f"{k}={_show(_lookup(new, k))}" for k in changed))
            raise MedAdvInputError(f"{self.directory} holds a run with {then}; this run has {now}; {_AFRESH}")

    def _check_checkpoint(self, path: Path, engine: Engine) -> None:
        """Read the checkpoint now, so a truncated or unfitting one ends in one line before training starts."""
        try:
            ckpt = load_checkpoint(path, map_location="cpu")
        except MedAdvInputError as e:
            raise MedAdvInputError(f"cannot resume: {' '.join(str(e).split())}; {_AFRESH}") from None
        if len(self.load_dict) == 1 and isinstance(ckpt, Mapping) and next(iter(self.load_dict)) not in ckpt:
            ckpt = {next(iter(self.load_dict)): ckpt}  # as CheckpointLoader: a bare state dict of one object
        missing = [k for k in self.load_dict if not isinstance(ckpt, Mapping) or k not in ckpt]
        if missing:
            raise MedAdvInputError(f"cannot resume from {path}: it holds no {missing} (expected "
                                   f"{sorted(self.load_dict)}); {_AFRESH}")
        for key, obj in self.load_dict.items():
            if isinstance(obj, torch.nn.Module):
                mine = {k: tuple(v.shape) for k, v in getattr(obj, "module", obj).state_dict().items()}
                theirs = {k: tuple(getattr(v, "shape", ())) for k, v in dict(ckpt[key]).items()}
                if mine != theirs:
                    diff = sorted(k for k in set(mine) | set(theirs) if mine.get(k) != theirs.get(k))[:3]
                    raise MedAdvInputError(f"cannot resume from {path}: its {key!r} does not fit this run's network "
                                           f"(e.g. {diff}); {_AFRESH}")
            elif isinstance(obj, Engine) and obj is engine:
                state, max_epochs = dict(ckpt[key]), engine.state.max_epochs  # ignite keeps iteration or epoch
                epoch = state.get("epoch") or state.get("iteration", 0) // max(int(state.get("epoch_length") or 1), 1)
                if max_epochs is not None and epoch > max_epochs:
                    raise MedAdvInputError(f"cannot resume from {path}: it has trained {epoch} epochs, more than "
                                           f"this run's max_epochs {max_epochs}; raise max_epochs or {_AFRESH}")
                if max_epochs is not None and epoch == max_epochs:
                    engine.logger.info(f"{path.name} is the last epoch ({max_epochs}): nothing is left to train")

    def _set_aside(self) -> None:
        old = [p for p in self.directory.glob("*checkpoint_epoch=*.pt") if _EPOCH.search(p.name)]
        old += [self.stamp_file] if self.stamp_file.exists() else []
        if not old:
            return
        tmp = Path(tempfile.mkdtemp(prefix=f".{PREVIOUS_DIR}.", suffix=".tmp", dir=self.directory))
        for p in old:
            os.replace(p, tmp / p.name)  # each one atomic: from here on no old checkpoint is in the folder
        previous = self.directory / PREVIOUS_DIR
        if previous.exists():
            shutil.rmtree(previous)
        os.replace(tmp, previous)
        logger.warning(f"resume is off: moved the earlier run's {[p.name for p in old]} to {previous}")


def _lookup(desc: Any, dotted: str) -> Any:
    for part in dotted.split("."):
        if not isinstance(desc, Mapping) or part not in desc:
            return "<not set>"
        desc = desc[part]
    return desc


def _show(value: Any) -> str:
    return value if value == "<not set>" else repr(value) if isinstance(value, str) else str(value)


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
