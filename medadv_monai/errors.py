"""The one exception type the project raises for bad input, and the one-line report of every failure a user or the
machine can cause (bad input, a full disk, a file that may not be written), so the CLI and the bundles show it as
one clear line.

``medadv --debug ...`` and ``MEDADV_DEBUG=1`` (for ``python -m monai.bundle run``) keep the full traceback.
"""

from __future__ import annotations

import os
import shutil
import sys
from collections.abc import Iterator
from typing import Any

__all__ = ["DEBUG_ENV", "MedAdvInputError", "close_progress_bars", "debug_enabled", "describe_failure",
           "find_input_error", "install_excepthook"]

DEBUG_ENV = "MEDADV_DEBUG"


class MedAdvInputError(ValueError):
    """Bad user input: a file, key or value that is not what was expected.

    The message always names the offending file, key or value and what was expected. The CLI prints it as a
    single line and exits non-zero; library users can catch it as a ``ValueError``.
    """


def _chain(exc: BaseException | None) -> Iterator[BaseException]:
    """``exc`` and the exceptions behind it (``__cause__`` / ``__context__``), each once."""
    seen: set[int] = set()
    while exc is not None and id(exc) not in seen:
        yield exc
        seen.add(id(exc))
        exc = exc.__cause__ or exc.__context__


def find_input_error(exc: BaseException) -> MedAdvInputError | None:
    """Return the :class:`MedAdvInputError` behind ``exc``, if any.

    MONAI wraps an exception raised inside a transform in ``RuntimeError("applying transform ...")`` (and Ignite
    engines may wrap again), so the clear message sits further down the ``__cause__`` / ``__context__`` chain.
    """
    return next((e for e in _chain(exc) if isinstance(e, MedAdvInputError)), None)


def _os_error_line(err: OSError) -> str:
    """``<file>: <reason>`` (``<file> -> <other file>: <reason>`` for a rename), or the reason alone."""
    reason = err.strerror or str(err)
    if err.filename is not None and err.filename2 is not None:
        return f"{os.fsdecode(err.filename)} -> {os.fsdecode(err.filename2)}: {reason}"
    if err.filename is not None:
        return f"{os.fsdecode(err.filename)}: {reason}"
    return reason


def _torch_write_line(exc: BaseException) -> str | None:
    """A failed ``torch.save`` to a path (a full disk ends in a ``RuntimeError`` from its C++ writer, with no
    errno and no file name): the file it was writing, the writer's reason and the free space left there."""
    tb = exc.__traceback__
    target = None
    while tb is not None:
        code = tb.tb_frame.f_code
        if code.co_name == "save" and code.co_filename.replace(os.sep, "/").endswith("torch/serialization.py"):
            f = tb.tb_frame.f_locals.get("f")
            target = os.fspath(f) if isinstance(f, (str, os.PathLike)) else target
        tb = tb.tb_next
    if target is None:
        return None
    reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    try:
        free = shutil.disk_usage(os.path.dirname(os.path.abspath(target))).free / 2**20
        space = f"; {free:.0f} MiB free there"
    except OSError:
        space = ""
    return f"{target}: writing the PyTorch file failed ({reason}){space}"


def describe_failure(exc: BaseException) -> str | None:
    """One line for a failure the user or the machine caused, or ``None`` for anything else (a bug: keep its
    traceback).

    In order: the :class:`MedAdvInputError` behind ``exc``; an ``OSError`` from the operating system (it has an
    errno: a full disk, permission denied, a folder where a file was expected, ...) as ``<file>: <reason>``; a
    ``torch.save`` that failed half-way (a full disk) as ``<file>: writing the PyTorch file failed ...``.
    """
    err = find_input_error(exc)
    if err is not None:
        return " ".join(str(err).split("\n"))
    for e in _chain(exc):
        if isinstance(e, OSError) and e.errno is not None:
            return _os_error_line(e)
    for e in _chain(exc):
        if isinstance(e, RuntimeError):
            line = _torch_write_line(e)
            if line is not None:
                return line
    return None


def debug_enabled() -> bool:
    """Whether ``MEDADV_DEBUG`` asks for full tracebacks (any value but empty, ``0``, ``false``, ``no``)."""
    return os.environ.get(DEBUG_ENV, "").strip().lower() not in ("", "0", "false", "no", "off")


def close_progress_bars() -> None:
    """Close every open tqdm progress bar, so an error line is not printed on a bar's line and redrawn over."""
    tqdm = sys.modules.get("tqdm")
    for bar in list(getattr(getattr(tqdm, "tqdm", None), "_instances", None) or []):
        try:
            bar.close()
        except Exception:  # noqa: BLE001 - a bar that cannot close must not hide the error being reported
            pass


def _excepthook(exc_type: type[BaseException], exc: BaseException, tb: Any) -> None:
    line = None if debug_enabled() or not isinstance(exc, Exception) else describe_failure(exc)
    if line is None:
        sys.__excepthook__(exc_type, exc, tb)
    else:
        close_progress_bars()
        print(f"error: {line}", file=sys.stderr)


def install_excepthook() -> None:
    """Show an uncaught failure the user or the machine caused as one line instead of a traceback (exit status 1).

    That is a :class:`MedAdvInputError`, an ``OSError`` with an errno (``error: <file>: <reason>``: disk full,
    permission denied, ...) or a failed ``torch.save`` (see :func:`describe_failure`); anything else keeps its
    traceback, and ``MEDADV_DEBUG=1`` keeps it for every failure. The bundles call this first in ``initialize``,
    so ``python -m monai.bundle run`` on bad input ends with the message that names the file or value, not MONAI's
    ``RuntimeError("Failed to evaluate ...")`` wrapper.
    """
    sys.excepthook = _excepthook
