"""Validation of the attack arguments (budgets, step sizes, step counts, momentum), once per call, up front."""

from __future__ import annotations

import math
import numbers
from typing import Any

import torch

from medadv_monai.errors import MedAdvInputError
from medadv_monai.utils.checks import check_int, check_nonneg

__all__ = ["check_alpha", "check_decay", "check_generator", "check_steps", "check_unit_range", "fmt", "per_sample"]


def fmt(v: float) -> str:
    return f"{v:.6g}"


def per_sample(value: Any, name: str, n: int, ndim: int, x: torch.Tensor) -> tuple[float | torch.Tensor, float, float]:
    """Normalise a float or per-sample ``(N,)`` tensor to a float or an ``(N, 1, ..., 1)`` tensor.

    Returns the normalised value and its min and max (for validation).
    """
    if isinstance(value, bool):
        raise MedAdvInputError(f"{name} must be a float or a per-sample tensor of shape ({n},), got bool {value!r}")
    if isinstance(value, numbers.Real):
        v = float(value)
        return v, v, v
    if isinstance(value, torch.Tensor) or hasattr(value, "__array__"):
        t = torch.as_tensor(value)
        if t.dtype == torch.bool or t.is_complex():
            raise MedAdvInputError(f"{name} must be a real float or tensor, got dtype {t.dtype}")
        if t.ndim == 0 or (t.ndim == 1 and t.numel() == 1 and n != 1):
            v = float(t.reshape(()).item())
            return v, v, v
        if t.shape != (n,):
            raise MedAdvInputError(
                f"{name} must be a float or a per-sample tensor of shape ({n},) for a batch of {n}, "
                f"got shape {tuple(t.shape)}"
            )
        t = t.detach().to(device=x.device, dtype=x.dtype)
        lo, hi = torch.aminmax(t.float() if t.dtype in (torch.float16, torch.bfloat16) else t)  # NaN propagates
        lo_v, hi_v = (float(v) for v in torch.stack([lo, hi]).tolist())
        return t.reshape((n,) + (1,) * (ndim - 1)), lo_v, hi_v
    raise MedAdvInputError(f"{name} must be a float or a per-sample tensor of shape ({n},), got {type(value).__name__}")


def check_alpha(alpha: Any, x: torch.Tensor) -> float | torch.Tensor:
    """Validate the step size ``alpha > 0`` (float or per-sample ``(N,)``); return it broadcastable to ``x``."""
    a, lo, hi = per_sample(alpha, "alpha", x.shape[0], x.ndim, x)
    if not (lo > 0) or not math.isfinite(hi):
        bad = lo if not (lo > 0) else hi
        raise MedAdvInputError(f"alpha must be a finite step size > 0, got {fmt(bad)}")
    return a


def check_steps(steps: Any) -> int:
    """Validate the number of iterations ``steps >= 1`` (an integer)."""
    return check_int(steps, "steps", 1)


def check_decay(decay: Any) -> float:
    """Validate the MI-FGSM momentum decay (a finite number >= 0)."""
    return check_nonneg(decay, "decay")


def check_unit_range(t: torch.Tensor, name: str, hint: str = "") -> None:
    """Raise unless every value of ``t`` is in [0, 1] (no NaN); one host sync."""
    ts = t.float() if t.dtype in (torch.float16, torch.bfloat16) else t
    lo, hi, nan = torch.stack([ts.min(), ts.max(), torch.isnan(ts).any().to(ts.dtype)]).tolist()
    if nan or lo < 0 or hi > 1:
        raise MedAdvInputError(f"{name} must have values in [0, 1], got min {fmt(lo)}, max {fmt(hi)}"
                               + (" and NaNs" if nan else "") + hint)


def check_generator(generator: Any) -> torch.Generator | None:
    """Validate an attack's source of random draws: a ``torch.Generator`` (on any device) or ``None``."""
    if generator is not None and not isinstance(generator, torch.Generator):
        raise MedAdvInputError(f"generator must be a torch.Generator or None, got {type(generator).__name__}")
    return generator
