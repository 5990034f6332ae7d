"""Per-channel features of named layers of any ``torch.nn.Module``, read by forward hooks.

A layer's activation :math:`a \\in \\mathbb{R}^{N \\times C \\times S}` (any number of spatial dims :math:`S`) becomes
its global average pool :math:`f_{n,c} = \\frac{1}{|S|} \\sum_{s \\in S} a_{n,c,s}`, an ``(N, C)`` matrix; an
``(N, C)`` activation (a linear layer's) is kept as it is. Layers are named as in ``dict(model.named_modules())``
(``"features.3"``, ``"fc"``, ...).

* :func:`extract_features` / :func:`extract_features_and_outputs`: no graph, batched over a tensor or an iterable of
  batches, concatenated on the CPU (fitting and scoring the detectors).
* :func:`features_with_grad` and :class:`FeatureRecorder`: the features of one forward pass with their graph, so a
  loss on them has a gradient w.r.t. the input (the HFC term of :mod:`~medadv_monai.losses.hfc` during an attack).

Every hook is removed when the forward pass ends, even when it raises (:func:`hooked_features`).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterable, Iterator, Mapping, Sequence
from typing import Any

import torch
from torch import nn

from medadv_monai.errors import MedAdvInputError
from medadv_monai.utils.checks import check_int

__all__ = [
    "FeatureRecorder",
    "extract_features",
    "extract_features_and_outputs",
    "features_with_grad",
    "global_average_pool",
    "hooked_features",
    "resolve_layers",
]


def global_average_pool(a: torch.Tensor, layer: str = "layer") -> torch.Tensor:
    """``(N, C, *spatial) -> (N, C)``, the mean over the spatial dims; an ``(N, C)`` activation is returned as is."""
    if not isinstance(a, torch.Tensor):
        raise MedAdvInputError(f"layer {layer!r} returned {type(a).__name__}, expected a tensor (N, C, *spatial)")
    if a.ndim < 2:
        raise MedAdvInputError(f"layer {layer!r} returned shape {tuple(a.shape)}, expected (N, C) or (N, C, *spatial)")
    if type(a) is not torch.Tensor:  # e.g. a MONAI MetaTensor: plain, still in the graph
        a = a.as_subclass(torch.Tensor)
    return a if a.ndim == 2 else a.flatten(2).mean(2)


def resolve_layers(model: nn.Module, layers: Sequence[str] | str) -> dict[str, nn.Module]:
    """``{name: module}`` for ``layers`` (names of ``dict(model.named_modules())``), in the given order.

    Raises:
        MedAdvInputError: a name that is not a module of ``model`` (the message lists the available names), an empty
            or duplicated list.
    """
    if not isinstance(model, nn.Module):
        raise MedAdvInputError(f"model must be a torch.nn.Module to hook its layers, got {type(model).__name__}")
    names = [layers] if isinstance(layers, str) else list(layers)
    if not names or not all(isinstance(n, str) for n in names) or len(set(names)) != len(names):
        raise MedAdvInputError(f"layers must be a non-empty list of distinct module names, got {layers!r}")
    modules = dict(model.named_modules())
    for name in names:
        if name not in modules:
            available = [n for n in modules if n]
            raise MedAdvInputError(f"unknown layer {name!r}: expected one of the model's named modules {available}")
    return {name: modules[name] for name in names}


@contextlib.contextmanager
def hooked_features(model: nn.Module, layers: Sequence[str] | str) -> Iterator[dict[str, torch.Tensor]]:
    """Within the block, each forward pass of ``model`` writes ``{layer: (N, C) pooled activation}`` (with its
    graph) into the yielded dict, a later pass overwriting an earlier one (and, within a pass, a module called twice
    keeps its last call); the hooks are removed on exit, also when the block raises."""
    found: dict[str, torch.Tensor] = {}
    handles = []

    def hook(name: str):
        def store(module: nn.Module, args: Any, output: Any) -> None:
            found[name] = global_average_pool(output, name)
        return store

    try:
        for name, module in resolve_layers(model, layers).items():
            handles.append(module.register_forward_hook(hook(name)))
        yield found
    finally:
        for h in handles:
            h.remove()


def _checked(found: Mapping[str, torch.Tensor], layers: Sequence[str], n: int) -> dict[str, torch.Tensor]:
    missing = [name for name in layers if name not in found]
    if missing:
        raise MedAdvInputError(f"layers {missing} were not called in the model's forward pass; expected layers that "
                               f"run on every input")
    for name in layers:
        if found[name].shape[0] != n:
            raise MedAdvInputError(f"layer {name!r} gave {found[name].shape[0]} rows for a batch of {n}; expected one "
                                   f"row per sample")
    return {name: found[name] for name in layers}


def features_with_grad(model: nn.Module, x: torch.Tensor, layers: Sequence[str] | str
                       ) -> tuple[dict[str, torch.Tensor], Any]:
    """One forward pass that keeps the graph: ``({layer: (N, C)}, model(x))``.

    Features and output share the pass, so :math:`\\partial f_l / \\partial x` exists when ``x`` requires grad.
    """
    names = [layers] if isinstance(layers, str) else list(layers)
    with hooked_features(model, names) as found:
        out = model(x)
    return _checked(found, names, x.shape[0]), out


def _batches(data: torch.Tensor | Iterable[torch.Tensor], batch_size: int) -> Iterator[torch.Tensor]:
    if isinstance(data, torch.Tensor):
        yield from torch.split(data, batch_size)
        return
    for i, batch in enumerate(data):
        if not isinstance(batch, torch.Tensor):
            raise MedAdvInputError(f"batch {i} is a {type(batch).__name__}; expected tensors (N, C, *spatial)")
        yield batch


def extract_features_and_outputs(
    model: nn.Module,
    data: torch.Tensor | Iterable[torch.Tensor],
    layers: Sequence[str] | str,
    *,
    batch_size: int = 64,
    device: torch.device | str | None = None,
) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
    """:func:`extract_features` plus the model's outputs of the same passes, concatenated on the CPU.

    Returns:
        ``({layer: (N, C)}, outputs (N, ...))``, detached float tensors on the CPU.
    """
    batch_size = check_int(batch_size, "batch_size", 1)
    names = [layers] if isinstance(layers, str) else list(layers)
    chunks: dict[str, list[torch.Tensor]] = {name: [] for name in names}
    outputs: list[torch.Tensor] = []
    with torch.no_grad(), hooked_features(model, names) as found:
        for batch in _batches(data, batch_size):
            found.clear()
            out = model(batch if device is None else batch.to(device))
            for name, f in _checked(found, names, batch.shape[0]).items():
                chunks[name].append(f.detach().float().cpu())
            if not isinstance(out, torch.Tensor):
                raise MedAdvInputError(f"the model returned {type(out).__name__}; expected a tensor (N, ...)")
            outputs.append(out.detach().as_subclass(torch.Tensor).float().cpu())
    if not outputs:
        raise MedAdvInputError("no input to extract features from: the data is empty")
    return {name: torch.cat(c) for name, c in chunks.items()}, torch.cat(outputs)


def extract_features(
    model: nn.Module,
    data: torch.Tensor | Iterable[torch.Tensor],
    layers: Sequence[str] | str,
    *,
    batch_size: int = 64,
    device: torch.device | str | None = None,
) -> dict[str, torch.Tensor]:
    """Global-average-pooled features of ``layers`` for every input, without gradients.

    The model is used in its current mode (call ``model.eval()`` first for batch norm and dropout).

    Args:
        model: any module; ``layers`` name its submodules (``dict(model.named_modules())``).
        data: one tensor ``(N, C, *spatial)`` (split into ``batch_size`` chunks) or an iterable of such batches.
        layers: one name or a list of names.
        batch_size: chunk size for a tensor ``data``.
        device: where to move each batch before the forward pass (default: leave it where it is).

    Returns:
        ``{layer: (N, C)}`` float tensors on the CPU, in the order of ``layers``.

    Raises:
        MedAdvInputError: an unknown layer (the message lists the model's names), a layer the forward pass did not
            call, an activation that is not ``(N, C, *spatial)``.
    """
    return extract_features_and_outputs(model, data, layers, batch_size=batch_size, device=device)[0]


class FeatureRecorder(nn.Module):
    """``model`` that also keeps the pooled features of ``layers`` of its latest forward pass, with their graph.

    ``recorder(x)`` returns ``model(x)`` and sets :attr:`features` to ``{layer: (N, C)}`` of that same pass and
    :attr:`output` to its output, so a loss on the logits can add a term on the features (an attack's ``loss_fn``,
    see :func:`~medadv_monai.losses.hfc.hfc_attack`). The hooks live only during the pass; no state is left on
    ``model``. The recorder is a module holding ``model``: ``.to()`` and an explicit ``.train()`` / ``.eval()`` reach
    ``model``; wrapping it changes no submodule's mode (a dropout left in train mode for MC dropout stays so).
    """

    def __init__(self, model: nn.Module, layers: Sequence[str] | str) -> None:
        super().__init__()
        self.layers = list(resolve_layers(model, layers))
        self.model = model
        self.features: dict[str, torch.Tensor] = {}
        self.output: Any = None
        self.training = model.training  # report the wrapped model's mode without touching its submodules' modes

    def forward(self, x: torch.Tensor) -> Any:
        self.features, self.output = {}, None
        self.features, self.output = features_with_grad(self.model, x, self.layers)
        return self.output
