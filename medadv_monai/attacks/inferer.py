"""Adversarial evaluation inside MONAI engines: an ``Inferer`` that attacks each batch, and its ``prepare_batch``.

Typical use::

    evaluator = SupervisedEvaluator(
        device=device,
        val_data_loader=loader,                       # dicts with "image", "label", "mask"
        network=net,
        inferer=AdversarialInferer("pgd", eps=4 / 255),
        prepare_batch=PrepareAttackBatch(label_key="label", mask_key="mask"),
    )

``PrepareAttackBatch`` returns ``(image, label, (), {"labels": label, "mask": mask})``; ``SupervisedEvaluator``
passes that dict as keyword arguments to the inferer, which attacks the batch (the core opens
``torch.enable_grad`` even though the evaluator runs under ``torch.no_grad``) and returns ``network(x_adv)``.
"""

from __future__ import annotations

import weakref
from typing import Any, Callable, Hashable, Mapping

import torch
from monai.engines.utils import PrepareBatch
from monai.inferers import Inferer
from monai.utils import convert_to_dst_type

from medadv_monai.attacks.registry import _canonical, attack_kwargs, get_attack
from medadv_monai.attacks.targets import default_targets
from medadv_monai.errors import MedAdvInputError

__all__ = ["AdversarialInferer", "PrepareAttackBatch"]


class AdversarialInferer(Inferer):
    r"""Run ``network`` on adversarial versions of the inputs: :math:`f(\mathrm{attack}(f, x, y, m))`.

    Args:
        attack: attack name (default ``"pgd"``), see :func:`~medadv_monai.attacks.registry.get_attack`.
        targeted: targeted attack. Targets come from ``targets=`` (``PrepareAttackBatch(target_key=...)``);
            without them, for a single-logit or 2-class model the target defaults to ``1 - label`` (the other
            class; this costs one extra forward on one sample, once per network, to learn the number of
            outputs); for ``K > 2`` classes targets are required.
        attack_kwargs: keyword arguments of the attack (``eps``, ``alpha``, ``steps``, ``generator``,
            ``loss_fn``...); registry defaults fill in ``eps``/``alpha``/``steps``.

    Raises:
        MedAdvInputError: at construction for an unknown attack or keyword; at call time for missing labels or
            targets and for invalid data.
    """

    def __init__(self, attack: str = "pgd", targeted: bool = False, **attack_kwargs_: Any) -> None:
        super().__init__()
        if "mask" in attack_kwargs_:
            raise MedAdvInputError("pass 'mask' per batch (PrepareAttackBatch(mask_key=...)), not to the constructor")
        self.attack = _canonical(attack)
        self.attack_fn = get_attack(self.attack)
        self.targeted = bool(targeted)
        self.attack_kwargs = attack_kwargs(self.attack, targeted=self.targeted, **attack_kwargs_)
        self._n_outputs: weakref.WeakKeyDictionary[Any, int] = weakref.WeakKeyDictionary()

    def _num_outputs(self, key: Any, model: Callable[..., Any], inputs: torch.Tensor) -> int:
        try:
            return self._n_outputs[key]
        except (KeyError, TypeError):
            pass
        with torch.no_grad():
            out = model(inputs[:1])
        if not isinstance(out, torch.Tensor) or out.ndim != 2:
            shape = tuple(out.shape) if isinstance(out, torch.Tensor) else type(out).__name__
            raise MedAdvInputError(f"model output must be a tensor of shape (N, K), got {shape}")
        k = int(out.shape[1])
        try:
            self._n_outputs[key] = k
        except TypeError:  # not weak-referenceable: just do not cache
            pass
        return k

    def _targets(self, key: Any, model: Callable[..., Any], inputs: torch.Tensor, labels: Any, targets: Any) -> Any:
        if targets is not None:
            return targets
        if labels is None:
            raise MedAdvInputError(
                "a targeted AdversarialInferer needs targets= (PrepareAttackBatch(target_key=...)) or, for a "
                "single-logit or 2-class model, labels= to flip; got neither"
            )
        return default_targets(labels, self._num_outputs(key, model, inputs))

    def _perturb(
        self, inputs: torch.Tensor, model: Callable[..., Any], key: Any, labels: Any, mask: Any, targets: Any
    ) -> torch.Tensor:
        if self.targeted:
            y = self._targets(key, model, inputs, labels, targets)
        else:
            if labels is None:
                raise MedAdvInputError(
                    "AdversarialInferer needs labels= for an untargeted attack; use "
                    "prepare_batch=PrepareAttackBatch(label_key=...) in the engine"
                )
            y = labels
        x_adv = self.attack_fn(model, inputs, y, mask=mask, **self.attack_kwargs)
        return convert_to_dst_type(x_adv, inputs)[0] if type(inputs) is not torch.Tensor else x_adv

    def perturb(
        self,
        inputs: torch.Tensor,
        network: Callable[..., Any],
        labels: Any = None,
        mask: Any = None,
        targets: Any = None,
    ) -> torch.Tensor:
        """Return the adversarial batch ``x_adv`` (same type, dtype and device as ``inputs``).

        Args:
            inputs: ``(N, C, *spatial)`` batch in ``[0, 1]``.
            network: the model, used as given.
            labels: ``(N,)`` or ``(N, 1)`` labels (required unless ``targets`` are given for a targeted attack).
            mask: optional budget mask in ``[0, 1]`` broadcastable to ``inputs``.
            targets: targets for a targeted attack.
        """
        return self._perturb(inputs, network, network, labels, mask, targets)

    def __call__(  # type: ignore[override]
        self,
        inputs: torch.Tensor,
        network: Callable[..., Any],
        *args: Any,
        labels: Any = None,
        mask: Any = None,
        targets: Any = None,
        **kwargs: Any,
    ) -> Any:
        """Attack ``inputs`` and return ``network(x_adv, *args, **kwargs)`` (in the caller's grad mode).

        Extra ``args``/``kwargs`` go to ``network`` both during the attack and for the final prediction.
        """
        model = network if not args and not kwargs else (lambda t: network(t, *args, **kwargs))
        x_adv = self._perturb(inputs, model, network, labels, mask, targets)
        return network(x_adv, *args, **kwargs)


class PrepareAttackBatch(PrepareBatch):
    """``prepare_batch`` for engines using :class:`AdversarialInferer` (after MONAI's ``PrepareBatchExtraInput``).

    Returns ``(image, label, (), kwargs)`` where ``kwargs`` holds ``"labels"`` and, when their keys are set,
    ``"mask"`` and ``"targets"``; ``SupervisedEvaluator``/``SupervisedTrainer`` pass them to the inferer. Every
    tensor is moved to the engine's device with ``non_blocking`` and the engine's ``to_kwargs``.

    Args:
        label_key: key of the labels in the batch dict.
        mask_key: optional key of the budget mask.
        target_key: optional key of the targets (targeted attacks).
        image_key: key of the images (default ``"image"``).
    """

    def __init__(
        self,
        label_key: Hashable = "label",
        mask_key: Hashable | None = None,
        target_key: Hashable | None = None,
        image_key: Hashable = "image",
    ) -> None:
        self.label_key = label_key
        self.mask_key = mask_key
        self.target_key = target_key
        self.image_key = image_key

    def __call__(
        self,
        batchdata: Mapping[Hashable, Any],
        device: str | torch.device | None = None,
        non_blocking: bool = False,
        **kwargs: Any,
    ) -> tuple[torch.Tensor, Any, tuple, dict[str, Any]]:
        """Split a batch dict into ``(image, label, (), {"labels": ..., "mask": ..., "targets": ...})``."""
        if not isinstance(batchdata, Mapping):
            raise MedAdvInputError(f"PrepareAttackBatch expects a dict batch, got {type(batchdata).__name__}")

        def get(key: Hashable, what: str) -> Any:
            if key not in batchdata:
                raise MedAdvInputError(
                    f"{what} key {key!r} is missing from the batch; available keys: {list(batchdata)}"
                )
            v = batchdata[key]
            if isinstance(v, torch.Tensor):
                v = v.to(device=device, non_blocking=non_blocking, **kwargs)
            return v

        image = get(self.image_key, "image")
        label = get(self.label_key, "label")
        extra: dict[str, Any] = {"labels": label}
        if self.mask_key is not None:
            extra["mask"] = get(self.mask_key, "mask")
        if self.target_key is not None:
            extra["targets"] = get(self.target_key, "target")
        return image, label, (), extra
