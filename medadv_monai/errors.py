"""The one exception type the project raises for bad input, so the CLI can show it as one clear line."""

from __future__ import annotations

import sys
from typing import Any

__all__ = ["MedAdvInputError", "find_input_error", "install_excepthook"]


class MedAdvInputError(ValueError):
    """Bad user input: a file, key or value that is not what was expected.

    The message always names the offending file, key or value and what was expected. The CLI prints it as a
    single line and exits non-zero; library users can catch it as a ``ValueError``.
    """


def find_input_error(exc: BaseException) -> MedAdvInputError | None:
    """Return the :class:`MedAdvInputError` behind ``exc``, if any.

    MONAI wraps an exception raised inside a transform in ``RuntimeError("applying transform ...")`` (and Ignite
    engines may wrap again), so the clear message sits further down the ``__cause__`` / ``__context__`` chain.
    """
    seen: set[int] = set()
    while exc is not None and id(exc) not in seen:
        if isinstance(exc, MedAdvInputError):
            return exc
        seen.add(id(exc))
        exc = exc.__cause__ or exc.__context__
    return None


def _excepthook(exc_type: type[BaseException], exc: BaseException, tb: Any) -> None:
    err = find_input_error(exc)
    if err is None:
        sys.__excepthook__(exc_type, exc, tb)
    else:
        print(f"error: {err}", file=sys.stderr)


def install_excepthook() -> None:
    """Show an uncaught :class:`MedAdvInputError` as one line instead of a traceback (the exit status stays 1).

    The bundles call this first in ``initialize``, so ``python -m monai.bundle run`` on bad input ends with the
    message that names the file or value, not MONAI's ``RuntimeError("Failed to evaluate ...")`` wrapper.
    """
    sys.excepthook = _excepthook
