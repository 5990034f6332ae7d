"""The default target of a targeted attack: the other class, ``1 - label``, for binary models only."""

from __future__ import annotations

from typing import Any

import torch

from medadv_monai.errors import MedAdvInputError

__all__ = ["default_targets"]


def default_targets(labels: Any, num_outputs: int, targets: Any = None) -> torch.Tensor:
    """Targets of a targeted attack: ``targets`` when given, else ``1 - labels``.

    The default exists only for a single-logit or two-class model (``num_outputs <= 2``), whose labels are 0 or 1;
    every engine and inferer that runs a targeted attack takes its targets from here.

    Args:
        labels: ``(N,)`` or ``(N, 1)`` class ids.
        num_outputs: the model's number of outputs (1 for a single logit).
        targets: explicit targets, returned as a tensor unchanged.

    Raises:
        MedAdvInputError: no targets for a model with more than two classes, or labels that are not 0 or 1.
    """
    if targets is not None:
        return torch.as_tensor(targets)
    if num_outputs > 2:
        raise MedAdvInputError(
            f"a targeted attack on a {num_outputs}-class model needs explicit targets "
            "(PrepareAttackBatch(target_key=...)); the default 1 - label only exists for a single-logit or "
            "two-class model"
        )
    lab = torch.as_tensor(labels)
    if not bool(((lab == 0) | (lab == 1)).all()):
        raise MedAdvInputError(
            f"default targets 1 - label need labels in {{0, 1}}, got values in "
            f"[{lab.min().item():.6g}, {lab.max().item():.6g}]"
        )
    return 1 - lab
