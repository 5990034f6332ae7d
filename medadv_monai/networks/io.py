"""Loading network weights safely, with errors that say which file does not fit which network."""

from __future__ import annotations

import os
import pickle
from typing import Any

import torch
from torch import nn

from medadv_monai.errors import MedAdvInputError

__all__ = ["freeze", "load_checkpoint", "load_frozen", "load_weights"]


def load_checkpoint(path: str | os.PathLike, map_location: Any = "cpu") -> Any:
    """``torch.load(path, weights_only=True)``: tensors and plain containers only, never arbitrary objects.

    Raises:
        MedAdvInputError: the file does not exist, is not a checkpoint, or carries pickled objects.
    """
    if not os.path.isfile(path):
        raise MedAdvInputError(f"checkpoint {str(path)!r} does not exist; train the model first or fix the path")
    try:
        return torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as e:
        raise MedAdvInputError(
            f"checkpoint {str(path)!r} was refused: it holds pickled Python objects, not only weights "
            f"(loaded with weights_only=True; {str(e).splitlines()[0]})"
        ) from e
    except (RuntimeError, EOFError, OSError) as e:
        raise MedAdvInputError(f"checkpoint {str(path)!r} is not a readable PyTorch checkpoint ({e})") from e


def load_weights(network: nn.Module, path: str | os.PathLike, key: str | None = "model",
                 strict: bool = True) -> nn.Module:
    """Load a state dict from ``path`` into ``network`` and return the network.

    Args:
        network: the network to fill.
        path: a file written by ``torch.save(state_dict)`` or a MONAI checkpoint dict holding it under ``key``.
        key: entry of a checkpoint dict that holds the state dict (used when present).
        strict: as for ``load_state_dict``.

    Raises:
        MedAdvInputError: unreadable or unsafe file, or weights of another network or channel count.
    """
    state = load_checkpoint(path)
    if key is not None and isinstance(state, dict) and isinstance(state.get(key), dict):
        state = state[key]
    try:
        network.load_state_dict(state, strict=strict)
    except RuntimeError as e:
        detail = " ".join(line.strip() for line in str(e).splitlines()[1:4])
        raise MedAdvInputError(
            f"checkpoint {str(path)!r} does not fit {type(network).__name__}: it holds the weights of another "
            f"network or channel count ({detail})"
        ) from e
    return network


def freeze(network: nn.Module) -> nn.Module:
    """Eval mode and ``requires_grad=False`` on every parameter: a model under attack, never trained."""
    return network.eval().requires_grad_(False)


def load_frozen(network: nn.Module, path: str | os.PathLike, device: str | torch.device | None = None,
                key: str | None = "model") -> nn.Module:
    """Load ``network``'s weights from ``path`` (:func:`load_weights`), move it to ``device`` and :func:`freeze` it.

    Raises:
        MedAdvInputError: a missing or unreadable file, or weights of another network (train the model first, or
            point the checkpoint id at its file).
    """
    return freeze(load_weights(network, path, key=key).to(device))
