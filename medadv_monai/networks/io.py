"""Loading network weights safely, with errors that say which file does not fit which network."""

from __future__ import annotations

import os
import pickle
import re
from typing import Any

import torch
from torch import nn

from medadv_monai.errors import MedAdvInputError

__all__ = ["freeze", "load_checkpoint", "load_frozen", "load_weights"]


def _refused_global(message: str) -> str | None:
    """The global a weights-only load refused (``__main__.Payload``), if that is why it failed."""
    match = re.search(r"Unsupported global: GLOBAL (\S+)", message)
    return match.group(1) if match else None


def load_checkpoint(path: str | os.PathLike, map_location: Any = "cpu") -> Any:
    """``torch.load(path, weights_only=True)``: tensors and plain containers only, never arbitrary objects.

    Raises:
        MedAdvInputError: the file does not exist or is a folder; it holds pickled Python objects (a class or
            function the weights-only loader refuses: loading it could run code of the file's choosing); it is no
            readable PyTorch checkpoint (truncated, random bytes, another format); or the system refused to read
            it. PyTorch's advice to load with ``weights_only=False`` is never repeated.
    """
    name = str(path)
    if os.path.isdir(path):
        raise MedAdvInputError(f"checkpoint {name!r} is a folder; expected a checkpoint file (.pt)")
    if not os.path.isfile(path):
        raise MedAdvInputError(f"checkpoint {name!r} does not exist; train the model first or fix the path")
    try:
        return torch.load(path, map_location=map_location, weights_only=True)
    except OSError as e:
        if e.errno is None:  # PyTorch reports some format errors as OSError
            raise MedAdvInputError(f"checkpoint {name!r} is not a readable PyTorch checkpoint (truncated or "
                                   f"another format)") from e
        raise MedAdvInputError(f"checkpoint {name!r} could not be read: {e.strerror}") from e
    except MemoryError:
        raise
    except pickle.UnpicklingError as e:
        refused = _refused_global(str(e))
        if refused is not None:
            raise MedAdvInputError(f"checkpoint {name!r} was refused: it holds pickled Python objects ({refused}), "
                                   f"not only weights; loading them could run code of the file's choosing") from e
        raise MedAdvInputError(f"checkpoint {name!r} is not a readable PyTorch checkpoint (truncated or another "
                               f"format)") from e
    except Exception as e:  # noqa: BLE001 - random bytes end in KeyError, EOFError, RuntimeError, ValueError, ...
        raise MedAdvInputError(f"checkpoint {name!r} is not a readable PyTorch checkpoint (truncated or another "
                               f"format)") from e


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
