"""The random baselines of the MRI-physics attacks with the attack signature, so the registry, the
:class:`~medadv_monai.attacks.AdversarialInferer` and the attack grid run them as they run an attack.

:func:`random_bias_field_attack` is :func:`~medadv_monai.attacks.bias_field.random_bias_field` (a smooth field
spanning exactly :math:`[1 - \\epsilon, 1 + \\epsilon]`) and :func:`random_kspace_attack` is
:func:`~medadv_monai.attacks.kspace.random_kspace` (a random k-space change of exactly the budget): the same family
and the same eps as :func:`~medadv_monai.attacks.bias_field.bias_field` and :func:`~medadv_monai.attacks.kspace.
kspace`, drawn at random, so robust accuracy under the attack and under its baseline differ only by the
optimisation (the adversarial gain). Both ignore ``model`` and ``y`` and refuse ``targeted=True`` (a random draw has
no target).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Callable

import torch

from medadv_monai.attacks.bias_field import random_bias_field
from medadv_monai.attacks.kspace import random_kspace
from medadv_monai.errors import MedAdvInputError
from medadv_monai.utils.checks import check_bool

__all__ = ["random_bias_field_attack", "random_kspace_attack"]


def _untargeted(targeted: Any, name: str) -> None:
    if check_bool(targeted, "targeted"):
        raise MedAdvInputError(f"{name} is a random draw and a random draw has no target: got targeted=True; run it "
                               "untargeted (targeted: [false]) beside the targeted attack it is the baseline of")


def random_bias_field_attack(
    model: Callable[[torch.Tensor], Any] | None,
    x: torch.Tensor,
    y: Any = None,
    *,
    eps: float | torch.Tensor = 0.3,
    spacing: int = 64,
    downsample: int = 2,
    shared_across_channels: bool = True,
    generator: torch.Generator | None = None,
    targeted: bool = False,
    mask: torch.Tensor | None = None,
) -> torch.Tensor:
    """:func:`~medadv_monai.attacks.bias_field.random_bias_field` of ``x`` (``model`` and ``y`` are ignored).

    Raises:
        MedAdvInputError: ``targeted=True``, or an invalid argument of the draw.
    """
    _untargeted(targeted, "random_bias_field")
    return random_bias_field(x, eps=eps, spacing=spacing, downsample=downsample,
                             shared_across_channels=shared_across_channels, generator=generator, mask=mask)


def random_kspace_attack(
    model: Callable[[torch.Tensor], Any] | None,
    x: torch.Tensor,
    y: Any = None,
    *,
    eps: float | torch.Tensor = 0.05,
    band: tuple[float, float] | None = None,
    spikes: Sequence[Sequence[int]] | None = None,
    per_slice: bool = False,
    generator: torch.Generator | None = None,
    targeted: bool = False,
    mask: torch.Tensor | None = None,
) -> torch.Tensor:
    """:func:`~medadv_monai.attacks.kspace.random_kspace` of ``x`` (``model`` and ``y`` are ignored).

    Raises:
        MedAdvInputError: ``targeted=True``, or an invalid argument of the draw.
    """
    _untargeted(targeted, "random_kspace")
    return random_kspace(x, eps=eps, band=band, spikes=spikes, per_slice=per_slice, generator=generator, mask=mask)
