"""MONAI transforms that replace a sample by an adversarial version of it against a frozen model.

Both transforms call :func:`medadv_monai.attacks.registry.run_attack` (and through it the shared core); they add
the batch dimension, move the sample to the model's device, attack, and move the result back, keeping the input's
type (``MetaTensor`` metadata, numpy array) and dtype.

They carry MONAI's :class:`~monai.transforms.RandomizableTrait` marker so that caching datasets
(``CacheDataset``, ``PersistentDataset``) stop caching before them: the output depends on the model and, for PGD's
random start, on the random state; cache the clean data, not the attack.
"""

from __future__ import annotations

from typing import Any, Callable, Hashable, Mapping, Sequence

import torch
from monai.config import KeysCollection
from monai.transforms import MapTransform, RandomizableTrait, Transform
from monai.utils import TransformBackends, convert_to_dst_type, ensure_tuple

from medadv_monai.attacks.registry import _canonical, attack_kwargs, get_attack
from medadv_monai.errors import MedAdvInputError

__all__ = ["AdversarialPerturb", "AdversarialPerturbd"]


def _plain(v: Any) -> torch.Tensor:
    """``torch.as_tensor`` without tensor subclasses (``MetaTensor`` metadata is restored on the way out)."""
    t = torch.as_tensor(v)
    return t if type(t) is torch.Tensor else t.as_subclass(torch.Tensor)


def _model_device(model: Any, fallback: torch.device) -> torch.device:
    """The device of the model's first parameter (or buffer); ``fallback`` for a parameter-free callable."""
    if isinstance(model, torch.nn.Module):
        for t in model.parameters():
            return t.device
        for t in model.buffers():
            return t.device
    return fallback


class AdversarialPerturb(Transform, RandomizableTrait):
    r"""Array transform: one sample ``(C, *spatial)`` -> its adversarial version against ``model``.

    .. math::
        x' = \mathrm{attack}(f, x[\mathrm{None}], y[\mathrm{None}], m[\mathrm{None}])[0]

    Args:
        model: the frozen model, used as given (its mode is kept, its parameters get no ``.grad``).
        attack: attack name for :func:`~medadv_monai.attacks.registry.get_attack` (default ``"pgd"``).
        attack_kwargs: keyword arguments of the attack (``eps``, ``alpha``, ``steps``, ``targeted``, ``generator``,
            ``loss_fn``...); registry defaults fill in ``eps``/``alpha``/``steps``. With ``targeted=True`` the
            label passed to ``__call__`` is the target.

    Raises:
        MedAdvInputError: at construction for an unknown attack or keyword, at call time for invalid data.
    """

    backend = [TransformBackends.TORCH, TransformBackends.NUMPY]

    def __init__(self, model: Callable[[torch.Tensor], Any], attack: str = "pgd", **attack_kwargs_: Any) -> None:
        if model is None or not callable(model):
            raise MedAdvInputError(f"model must be a callable network, got {type(model).__name__}")
        if "mask" in attack_kwargs_:
            raise MedAdvInputError("pass 'mask' per sample to __call__ (or mask_key= to the dict version), not here")
        self.model = model
        self.attack = _canonical(attack)
        self.attack_fn = get_attack(self.attack)
        self.attack_kwargs = attack_kwargs(self.attack, **attack_kwargs_)

    def __call__(self, img: Any, label: Any, mask: Any = None) -> Any:
        """Attack one sample.

        Args:
            img: ``(C, *spatial)`` in ``[0, 1]`` (tensor, ``MetaTensor`` or numpy array).
            label: the sample's label (a scalar class id / 0-1 value, or a one-element array), or its target.
            mask: optional ``(1, *spatial)`` or ``(C, *spatial)`` budget mask in ``[0, 1]``.

        Returns:
            The adversarial sample, same type, shape, dtype and device as ``img``.
        """
        x = _plain(img)
        if x.ndim not in (3, 4):
            raise MedAdvInputError(
                f"image must be one sample (C, H, W) or (C, D, H, W), got shape {tuple(x.shape)}"
            )
        device = _model_device(self.model, x.device)
        xb = x.unsqueeze(0).to(device)
        y = _plain(label)
        yb = y.reshape(1) if y.numel() == 1 else y.unsqueeze(0)
        yb = yb.to(device)
        mb = None
        if mask is not None:
            m = _plain(mask)
            if m.ndim != x.ndim:
                raise MedAdvInputError(
                    f"mask of shape {tuple(m.shape)} does not match image of shape {tuple(x.shape)}; "
                    f"expected (1, *spatial) or (C, *spatial)"
                )
            mb = m.unsqueeze(0).to(device)
        out = self.attack_fn(self.model, xb, yb, mask=mb, **self.attack_kwargs)[0]
        return convert_to_dst_type(out, img)[0]


class AdversarialPerturbd(MapTransform, RandomizableTrait):
    """Dictionary version of :class:`AdversarialPerturb` (MONAI dictionary style).

    For each key in ``keys``, ``data[key]`` is attacked with label ``data[label_key]`` and, if ``mask_key`` is
    set, mask ``data[mask_key]``; the result goes to ``output_key`` (``None``: overwrite ``data[key]``, else keep
    the clean image and add the adversarial one under the new key).

    Args:
        keys: image keys to attack (default ``"image"``).
        label_key: key of the label (or of the target when ``targeted=True``).
        mask_key: optional key of a ``(1 or C, *spatial)`` budget mask in ``[0, 1]``.
        model: the frozen model (required), used as given.
        attack: attack name (default ``"pgd"``).
        output_key: ``None`` to overwrite, or a key (one per entry of ``keys``) for the adversarial image.
        allow_missing_keys: skip missing image keys instead of raising.
        attack_kwargs: keyword arguments of the attack; registry defaults fill in ``eps``/``alpha``/``steps``.
    """

    backend = AdversarialPerturb.backend

    def __init__(
        self,
        keys: KeysCollection = "image",
        label_key: Hashable = "label",
        mask_key: Hashable | None = None,
        model: Callable[[torch.Tensor], Any] | None = None,
        attack: str = "pgd",
        output_key: Hashable | Sequence[Hashable] | None = None,
        allow_missing_keys: bool = False,
        **attack_kwargs_: Any,
    ) -> None:
        super().__init__(keys, allow_missing_keys)
        if model is None:
            raise MedAdvInputError("AdversarialPerturbd needs model=<the network to attack>, got None")
        self.perturber = AdversarialPerturb(model, attack, **attack_kwargs_)
        self.label_key = label_key
        self.mask_key = mask_key
        if output_key is None:
            self.output_keys: tuple[Hashable, ...] = self.keys
        else:
            self.output_keys = ensure_tuple(output_key)
            if len(self.output_keys) != len(self.keys):
                raise MedAdvInputError(
                    f"output_key {output_key!r} must give one key per image key {list(self.keys)}"
                )

    def _get(self, d: Mapping[Hashable, Any], key: Hashable, what: str) -> Any:
        if key not in d:
            raise MedAdvInputError(f"{what} key {key!r} is missing from the data; available keys: {list(d)}")
        return d[key]

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        d = dict(data)
        for key, out_key in self.key_iterator(d, self.output_keys):
            label = self._get(d, self.label_key, "label")
            mask = self._get(d, self.mask_key, "mask") if self.mask_key is not None else None
            d[out_key] = self.perturber(d[key], label, mask)
        return d
