"""Checks and conversions shared by the detectors: feature matrices, labels, per-layer feature dicts.

Detectors compute in float64 on the CPU: the statistics (kernel densities, covariances, nearest-neighbour distance
ratios) are small, and float64 keeps the known-answer comparisons exact to ~1e-10.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import torch

from medadv_monai.errors import MedAdvInputError

__all__ = ["as_binary", "as_labels", "as_layer_matrices", "as_matrix", "as_vector", "numpy"]


def _tensor(a: Any, what: str) -> torch.Tensor:
    if isinstance(a, torch.Tensor):
        t = a.detach()
        return t.as_subclass(torch.Tensor) if type(t) is not torch.Tensor else t
    try:
        return torch.as_tensor(np.asarray(a))
    except (TypeError, ValueError, RuntimeError) as e:
        raise MedAdvInputError(f"{what} must be a tensor or array, got {type(a).__name__}") from e


def as_matrix(a: Any, what: str, rows: int | None = None) -> torch.Tensor:
    """A finite ``(N, D)`` float64 CPU tensor with ``N >= 1`` (and ``N == rows`` when given)."""
    t = _tensor(a, what)
    if t.ndim != 2 or t.shape[0] == 0 or t.shape[1] == 0 or (rows is not None and t.shape[0] != rows):
        want = f"({rows}, D)" if rows is not None else "(N, D) with N, D >= 1"
        raise MedAdvInputError(f"{what} must be a matrix {want}, got shape {tuple(t.shape)}")
    if t.is_complex() or t.dtype == torch.bool:
        raise MedAdvInputError(f"{what} must be real features, got dtype {t.dtype}")
    t = t.to(device="cpu", dtype=torch.float64)
    if not bool(torch.isfinite(t).all()):
        raise MedAdvInputError(f"{what} must be finite, got NaN or inf values")
    return t


def as_vector(a: Any, what: str, n: int | None = None) -> np.ndarray:
    """A finite 1-D float64 array (of length ``n`` when given)."""
    t = _tensor(a, what).to("cpu")
    if t.ndim == 2 and t.shape[1] == 1:
        t = t[:, 0]
    if t.ndim != 1 or (n is not None and t.shape[0] != n) or t.is_complex():
        want = f"({n},)" if n is not None else "(N,)"
        raise MedAdvInputError(f"{what} must be a real vector {want}, got shape {tuple(t.shape)} ({t.dtype})")
    v = t.double().numpy()
    if not np.isfinite(v).all():
        raise MedAdvInputError(f"{what} must be finite, got NaN or inf values")
    return v


def as_labels(y: Any, n: int, what: str = "labels") -> np.ndarray:
    """``(n,)`` integer class ids >= 0 as int64."""
    v = as_vector(y, what, n)
    if (v != np.round(v)).any() or (v < 0).any():
        bad = v[(v != np.round(v)) | (v < 0)][0]
        raise MedAdvInputError(f"{what} must be integer class ids >= 0, got {bad:g}")
    return v.astype(np.int64)


def as_binary(y: Any, n: int, what: str = "is_adversarial") -> np.ndarray:
    """``(n,)`` 0/1 labels (1 = adversarial) with both values present, as int64."""
    v = as_labels(y, n, what)
    if not np.isin(v, (0, 1)).all() or len(np.unique(v)) != 2:
        raise MedAdvInputError(f"{what} must hold 0 (clean/noisy) and 1 (adversarial), both present; got values "
                               f"{sorted(np.unique(v).tolist())}")
    return v


def as_layer_matrices(features: Mapping[str, Any], layers: Sequence[str] | None, what: str
                      ) -> dict[str, torch.Tensor]:
    """``{layer: (N, D_l)}`` float64 matrices with one ``N`` for every layer, in the order of ``layers``
    (default: the dict's order). Layers of ``features`` not in ``layers`` are ignored."""
    if not isinstance(features, Mapping) or not features:
        raise MedAdvInputError(f"{what} must be a non-empty dict {{layer name: (N, D) features}}, got "
                               f"{type(features).__name__}")
    names = list(features) if layers is None else list(layers)
    missing = [name for name in names if name not in features]
    if missing:
        raise MedAdvInputError(f"{what} has no features for layers {missing}; expected the layers {names} "
                               f"(got {list(features)})")
    out = {name: as_matrix(features[name], f"{what}[{name!r}]") for name in names}
    sizes = {name: m.shape[0] for name, m in out.items()}
    if len(set(sizes.values())) != 1:
        raise MedAdvInputError(f"{what}: every layer must have one row per sample, got row counts {sizes}")
    return out


def numpy(t: torch.Tensor) -> np.ndarray:
    """A detached float64 numpy copy (the detectors' ``score`` output)."""
    return t.detach().to("cpu", torch.float64).numpy().copy()
