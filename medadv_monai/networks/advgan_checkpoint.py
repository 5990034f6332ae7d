"""The generator-checkpoint contract of AdvGAN: the attack a generator was trained for travels with its weights.

A ``brats_advgan`` generator checkpoint is ``{"generator": state_dict, "advgan_config": AdvGANSettings.state_dict()}``.
:func:`load_generator_checkpoint` reads one (``torch.load(weights_only=True)``) and checks its settings against the
caller's, so a generator is never used at another eps or on other modalities than it was trained for.
"""

from __future__ import annotations

import logging
import math
import os
from collections.abc import Mapping, Sequence
from typing import Any

import torch

from medadv_monai.errors import MedAdvInputError
from medadv_monai.masks import MASK_KINDS
from medadv_monai.networks.io import load_checkpoint, load_weights
from medadv_monai.utils.checks import check_bool, check_choice, check_eps, check_int, format_eps

__all__ = ["AdvGANSettings", "load_generator_checkpoint"]

logger = logging.getLogger(__name__)


class AdvGANSettings:
    """The attack a generator was trained for, saved with every checkpoint and checked when one is loaded.

    It has ``state_dict`` / ``load_state_dict``, so it goes into MONAI's ``CheckpointSaver(save_dict=...)`` and
    ``CheckpointLoader(load_dict=...)`` beside the generator (stored under ``advgan_config``). Loading compares the
    saved values with these: a different ``eps`` or ``modalities`` (or ``targeted``) is an error, a different
    ``mask_kind`` / ``ring_width`` only a warning (a generator trained without a mask may be evaluated with one:
    the mask scales its budget).

    Args:
        eps: L-inf budget in [0, 1].
        mask_kind: the kind of the attack mask (``"none"``, ``"seg"``, ``"ring"`` or ``"patch"``: the ``kind`` of the
            ``AttackMaskd`` in the bundle's data chain).
        ring_width: ring width in pixels (``ring``).
        targeted: trained as a targeted attack.
        modalities: input channels the generator was trained on (checked when given on both sides).

    Raises:
        MedAdvInputError: ``eps`` outside [0, 1], unknown ``mask_kind``, ``ring_width < 1``.
    """

    def __init__(
        self,
        eps: float,
        mask_kind: str = "none",
        ring_width: int = 3,
        targeted: bool = False,
        modalities: Sequence[str] | None = None,
    ) -> None:
        self.eps = check_eps(eps)
        self.mask_kind = check_choice(mask_kind, MASK_KINDS, "AdvGAN mask_kind")
        self.ring_width = check_int(ring_width, "ring_width", 1)
        self.targeted = check_bool(targeted, "targeted")
        self.modalities = None if modalities is None else [str(m) for m in (
            [modalities] if isinstance(modalities, str) else modalities)]

    def state_dict(self) -> dict[str, Any]:
        """Plain values only, so checkpoints load with ``torch.load(weights_only=True)``."""
        return {"eps": self.eps, "mask_kind": self.mask_kind, "ring_width": self.ring_width,
                "targeted": self.targeted, "modalities": self.modalities}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Check a saved configuration against this one (nothing is overwritten)."""
        self.check(state)

    def check(self, state: Any, source: str = "generator checkpoint") -> None:
        """Raise :class:`MedAdvInputError` if the saved ``state`` does not match (see the class docstring)."""
        if not isinstance(state, Mapping) or "eps" not in state:
            raise MedAdvInputError(f"{source}: advgan_config must be a dict with 'eps', got {state!r}")
        saved = float(state["eps"])
        if not math.isclose(saved, self.eps, rel_tol=1e-6, abs_tol=1e-9):
            raise MedAdvInputError(
                f"{source}: the generator was trained for eps={format_eps(saved)} but the config asks for "
                f"eps={format_eps(self.eps)}; set eps to {saved:.6g} or train a generator for {self.eps:.6g}"
            )
        if bool(state.get("targeted", False)) != self.targeted:
            raise MedAdvInputError(f"{source}: the generator was trained with targeted={bool(state.get('targeted'))}"
                                   f" but the config has targeted={self.targeted}")
        saved_mod = state.get("modalities")
        if saved_mod is not None and self.modalities is not None and list(saved_mod) != self.modalities:
            raise MedAdvInputError(f"{source}: the generator was trained on modalities {list(saved_mod)} but the "
                                   f"config has modalities {self.modalities}")
        kind, width = state.get("mask_kind", "none"), state.get("ring_width", self.ring_width)
        if kind != self.mask_kind or (kind == "ring" and width != self.ring_width):
            logger.warning(f"{source}: the generator was trained with mask_kind={kind!r} (ring_width={width}); "
                           f"it is used with mask_kind={self.mask_kind!r} (ring_width={self.ring_width})")

    def __repr__(self) -> str:
        return f"AdvGANSettings({self.state_dict()})"


def load_generator_checkpoint(
    path: str | os.PathLike,
    generator: torch.nn.Module,
    settings: AdvGANSettings | None = None,
    map_location: Any = None,
    strict: bool = True,
) -> dict[str, Any]:
    """Load a generator checkpoint (``models/generator.pt`` or a training checkpoint) into ``generator``.

    The file must hold ``{"generator": state_dict, "advgan_config": {...}}`` (what the bundle's ``CheckpointSaver``
    writes); its ``advgan_config`` is checked against ``settings`` first. Read with ``torch.load(weights_only=True)``.

    Returns:
        The saved ``advgan_config``.

    Raises:
        MedAdvInputError: a missing file, a file without ``generator``/``advgan_config``, or a configuration that
            does not match ``settings`` (e.g. another eps; the message names both values and the file).
    """
    ckpt = load_checkpoint(path, map_location=map_location)
    if not isinstance(ckpt, Mapping) or "generator" not in ckpt or "advgan_config" not in ckpt:
        keys = list(ckpt) if isinstance(ckpt, Mapping) else type(ckpt).__name__
        raise MedAdvInputError(f"generator checkpoint {str(path)!r}: expected keys 'generator' and 'advgan_config' "
                               f"(eps and mask of the attack), got {keys}; it is not a brats_advgan generator")
    if settings is not None:
        settings.check(ckpt["advgan_config"], source=f"generator checkpoint {str(path)!r}")
    load_weights(generator, path, key="generator", strict=strict)
    return dict(ckpt["advgan_config"])
