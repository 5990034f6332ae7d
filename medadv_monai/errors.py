"""The one exception type the project raises for bad input, so the CLI can show it as one clear line."""

from __future__ import annotations

__all__ = ["MedAdvInputError", "find_input_error"]


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
