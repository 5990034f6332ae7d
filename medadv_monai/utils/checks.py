"""Checks of user-facing settings, each raising :class:`~medadv_monai.errors.MedAdvInputError` with a message that
names the setting, the value and what was expected. Every engine, loss and settings object validates through these."""

from __future__ import annotations

import math
import numbers
from collections.abc import Sequence
from typing import Any

from medadv_monai.errors import MedAdvInputError

__all__ = ["check_bool", "check_choice", "check_eps", "check_int", "check_nonneg", "check_positive", "format_eps"]


_TRUE, _FALSE = ("true", "yes", "1"), ("false", "no", "0")


def check_bool(value: Any, what: str) -> bool:
    """A switch: ``True``/``False``, ``0``/``1``, or the strings true/false/yes/no/1/0 (any case).

    ``python -m monai.bundle run --resume false`` passes the string ``'false'``, which Python would take as true.
    """
    if isinstance(value, bool):
        return value
    if isinstance(value, numbers.Integral) and value in (0, 1):
        return bool(value)
    if isinstance(value, str) and value.strip().lower() in _TRUE + _FALSE:
        return value.strip().lower() in _TRUE
    raise MedAdvInputError(f"{what} must be true or false (or yes/no, 1/0), got {value!r}")


def check_choice(value: Any, allowed: Sequence[str], what: str) -> str:
    """``value`` lower-cased if it is one of ``allowed`` (case-insensitive)."""
    if not isinstance(value, str) or value.lower() not in allowed:
        raise MedAdvInputError(f"{what}: expected one of {list(allowed)}, got {value!r}")
    return value.lower()


def check_eps(eps: Any, what: str = "eps") -> float:
    """An L-inf budget: a number in [0, 1] (inputs live in [0, 1])."""
    if isinstance(eps, bool) or not isinstance(eps, (int, float)) or not (0.0 <= float(eps) <= 1.0):
        raise MedAdvInputError(f"{what} must be a number in [0, 1] (inputs live in [0, 1]), got {eps!r}")
    return float(eps)


def check_nonneg(value: Any, what: str) -> float:
    """A finite number >= 0 (a loss weight, a margin)."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real) or not math.isfinite(value) or value < 0:
        raise MedAdvInputError(f"{what} must be a finite number >= 0, got {value!r}")
    return float(value)


def check_positive(value: Any, what: str) -> float:
    """A finite number > 0 (a learning rate, a constant)."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real) or not math.isfinite(value) or value <= 0:
        raise MedAdvInputError(f"{what} must be a finite number > 0, got {value!r}")
    return float(value)


def check_int(value: Any, what: str, low: int) -> int:
    """An integer >= ``low`` (a count, a width)."""
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < low:
        raise MedAdvInputError(f"{what} must be an integer >= {low}, got {value!r}")
    return int(value)


def format_eps(eps: float) -> str:
    """``eps`` as a number and in units of 1/255, for messages."""
    return f"{eps:.6g} (= {eps * 255:.4g}/255)"


def check_image_size(value: Any, what: str = "image_size", ndim: int = 2) -> list[int]:
    """A list of ``ndim`` integers > 0 (a slice size; 0 or -1 would mean "keep the native size" to MONAI)."""
    ok = isinstance(value, list) and len(value) == ndim and all(
        isinstance(v, numbers.Integral) and not isinstance(v, bool) and v > 0 for v in value)
    if not ok:
        raise MedAdvInputError(f"{what} must be a list of {ndim} integers > 0, e.g. {[64] * ndim}, got {value!r}")
    return [int(v) for v in value]


__all__ += ["check_image_size"]
