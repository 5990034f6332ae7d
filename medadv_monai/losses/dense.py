"""Dense (segmentation) attack losses: a per-voxel loss reduced to one value per sample.

Any attack of the core takes one of these as ``loss_fn``, so a segmentation attack is the classification attack
with a dense loss: the gradient is that of the sum over samples of per-sample losses, and a sample's attack never
depends on its batch-mates. Untargeted attacks ascend the loss against the ground truth; targeted attacks descend
it towards a target mask (:func:`~medadv_monai.attacks.seg_targets.seg_targets`).

Outputs are logits ``(N, R, *spatial)`` with 2 or 3 spatial dims; targets are masks of the same shape with values in
``{0, 1}`` (``activation="sigmoid"``: one channel per region, multi-label, as MONAI's BraTS bundles) or, for
``activation="softmax"``, a class map ``(N, 1, *spatial)`` or its one-hot ``(N, K, *spatial)``.

=================  =====================================================================================
loss               per sample (``p``: probabilities, ``g``: target, reductions over channels and voxels)
=================  =====================================================================================
``bce``/``ce``     mean over voxels (and channels) of binary cross-entropy on the logits / cross-entropy
``dice``           :math:`1 - \\overline{D}`, :math:`D_r = 2\\sum p g / (\\sum p + \\sum g)`, 1 when both are
                   empty, mean over the region channels (softmax: the foreground channels)
``logcosh_dice``   :math:`\\log\\cosh(1 - \\overline{D})` (Jadon 2020)
``bce_dice``       ``bce`` + ``dice`` (softmax: ``ce`` + ``dice``)
``lovasz``         Lovasz hinge on the logits (Berman et al. 2018), all channels and voxels of a sample as one
                   binary problem (sigmoid only)
``combo``          :math:`\\sum_k w_k L_k` over the losses above (default: equal weights summing to 1; without
                   ``lovasz`` for softmax)
=================  =====================================================================================

These are the MedIS surrogates (:func:`~medadv_monai.attacks.medis.medis`) and the survey's CE and Dice losses.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import torch
import torch.nn.functional as F

from medadv_monai.errors import MedAdvInputError

__all__ = ["DENSE_LOSSES", "MEDIS_LOSSES", "DenseLoss", "lovasz_hinge", "medis_losses", "soft_dice"]

DENSE_LOSSES = ("bce", "ce", "dice", "logcosh_dice", "bce_dice", "lovasz", "combo")
_COMBINED = ("bce", "dice", "logcosh_dice", "bce_dice", "lovasz")  # the parts of ``combo`` (MedIS's set)
MEDIS_LOSSES = (*_COMBINED, "combo")
"""The MedIS surrogate set: BCE, soft Dice, log-cosh Dice, BCE + Dice, Lovasz hinge and their weighted sum."""


def soft_dice(p: torch.Tensor, g: torch.Tensor) -> torch.Tensor:
    """Soft Dice per sample and channel, ``(N, C)``: :math:`2\\sum p g / (\\sum p + \\sum g)`, 1 where both are empty.

    Args:
        p: probabilities (or a hard mask) ``(N, C, *spatial)``.
        g: target mask of the same shape.
    """
    dims = tuple(range(2, p.ndim))
    inter = (p * g).sum(dims)
    den = p.sum(dims) + g.sum(dims)
    empty = den <= 0
    return torch.where(empty, torch.ones_like(den), 2 * inter / torch.where(empty, torch.ones_like(den), den))


def lovasz_hinge(logits: torch.Tensor, g: torch.Tensor) -> torch.Tensor:
    """Lovasz hinge per sample, ``(N,)``: every channel and voxel of a sample is one binary problem.

    :math:`\\sum_i \\max(e_{(i)}, 0)\\,\\nabla J_{(i)}` with errors :math:`e = 1 - z (2g - 1)` sorted in decreasing
    order and :math:`\\nabla J` the Lovasz extension's gradient of the Jaccard loss at the sorted targets.
    """
    z = logits.flatten(1)
    t = g.flatten(1).to(z.dtype)
    errors = 1.0 - z * (2.0 * t - 1.0)
    errors_sorted, order = torch.sort(errors, dim=1, descending=True)
    gt_sorted = torch.gather(t, 1, order)
    total = gt_sorted.sum(1, keepdim=True)
    intersection = total - gt_sorted.cumsum(1)
    union = total + (1.0 - gt_sorted).cumsum(1)
    jaccard = 1.0 - intersection / union
    grad = torch.cat([jaccard[:, :1], jaccard[:, 1:] - jaccard[:, :-1]], dim=1)
    return (F.relu(errors_sorted) * grad).sum(1)


class DenseLoss:
    """A dense loss reduced per sample, ``(logits, target) -> (N,)``: the ``loss_fn`` of a segmentation attack.

    Args:
        loss: one of :data:`DENSE_LOSSES` (the table in the module docstring).
        activation: ``"sigmoid"`` (multi-label regions, the default) or ``"softmax"`` (classes).
        weights: for ``combo``, ``{loss: weight}`` over ``bce``, ``dice``, ``logcosh_dice``, ``bce_dice``,
            ``lovasz`` (default: 1/5 each).

    Raises:
        MedAdvInputError: an unknown loss or activation, ``lovasz`` with softmax, bad weights; at call time a
            target that does not match the logits.

    Example:
        >>> loss = DenseLoss("dice")
        >>> x_adv = pgd(seg_net, x, gt_masks, eps=4 / 255, loss_fn=loss)
    """

    def __init__(self, loss: str = "bce", activation: str = "sigmoid", weights: Mapping[str, float] | None = None):
        if loss not in DENSE_LOSSES:
            raise MedAdvInputError(f"dense loss {loss!r}: expected one of {list(DENSE_LOSSES)}")
        if activation not in ("sigmoid", "softmax"):
            raise MedAdvInputError(f"activation {activation!r}: expected 'sigmoid' or 'softmax'")
        if activation == "softmax" and "lovasz" in (loss, *(weights or {})):
            raise MedAdvInputError("the Lovasz hinge is a binary (sigmoid) loss; use activation='sigmoid'")
        if weights is not None and loss != "combo":
            raise MedAdvInputError(f"weights are for the 'combo' loss, got loss {loss!r}")
        if loss == "combo":
            parts = [k for k in _COMBINED if activation == "sigmoid" or k != "lovasz"]
            weights = dict(weights) if weights is not None else {k: 1.0 / len(parts) for k in parts}
            bad = [k for k in weights if k not in parts]
            numbers = all(isinstance(w, (int, float)) and not isinstance(w, bool) and math.isfinite(w) and w >= 0
                          for w in weights.values())
            if bad or not weights or not numbers or sum(weights.values()) <= 0:
                raise MedAdvInputError(f"combo weights {dict(weights)}: expected finite non-negative numbers, not all "
                                       f"0, for some of {parts}")
        self.loss, self.activation, self.weights = loss, activation, weights
        self._last: tuple[Any, torch.Tensor] | None = None  # (target object, checked target): one check per target

    def __repr__(self) -> str:
        extra = f", weights={self.weights}" if self.weights else ""
        return f"DenseLoss({self.loss!r}, activation={self.activation!r}{extra})"

    def _target(self, logits: torch.Tensor, target: Any) -> torch.Tensor:
        if not isinstance(logits, torch.Tensor) or logits.ndim not in (4, 5):
            shape = tuple(logits.shape) if isinstance(logits, torch.Tensor) else type(logits).__name__
            raise MedAdvInputError(f"a dense loss needs logits (N, C, *spatial) with 2 or 3 spatial dims, got {shape}")
        last = self._last
        if last is not None and last[0] is target and last[1].shape == logits.shape \
                and last[1].dtype == logits.dtype and last[1].device == logits.device:
            return last[1]  # an attack passes the same (unchanged) target every step: check and convert it once
        g = self._check_target(logits, target)
        self._last = (target, g)
        return g

    def _check_target(self, logits: torch.Tensor, target: Any) -> torch.Tensor:
        g = torch.as_tensor(target).to(device=logits.device)
        if self.activation == "softmax" and g.shape[1:2] == (1,) and logits.shape[1] > 1:
            if g.shape[2:] != logits.shape[2:] or g.shape[0] != logits.shape[0]:
                raise MedAdvInputError(f"class map of shape {tuple(g.shape)} does not match logits "
                                       f"{tuple(logits.shape)}; expected (N, 1, *spatial)")
            k = logits.shape[1]
            lo, hi = int(g.min()), int(g.max())
            if lo < 0 or hi > k - 1:
                raise MedAdvInputError(f"class map values must be class ids in [0, {k - 1}] for {k} logits, got "
                                       f"[{lo}, {hi}]")
            g = F.one_hot(g[:, 0].long(), k).movedim(-1, 1)
        if g.shape != logits.shape:
            raise MedAdvInputError(f"target mask of shape {tuple(g.shape)} does not match logits "
                                   f"{tuple(logits.shape)}; expected one channel per region (or, for softmax, a "
                                   f"class map (N, 1, *spatial))")
        return g.to(logits.dtype)

    def __call__(self, logits: torch.Tensor, target: Any) -> torch.Tensor:
        g = self._target(logits, target)
        if self.loss == "combo":
            return sum(w * self._one(k, logits, g) for k, w in self.weights.items())  # type: ignore[union-attr]
        return self._one(self.loss, logits, g)

    def _one(self, loss: str, logits: torch.Tensor, g: torch.Tensor) -> torch.Tensor:
        if loss in ("bce", "ce"):
            return self._xent(logits, g)
        if loss == "lovasz":
            return lovasz_hinge(logits, g)
        dice = self._dice(logits, g)
        if loss == "dice":
            return 1.0 - dice
        if loss == "logcosh_dice":
            return torch.log(torch.cosh(1.0 - dice))
        return self._xent(logits, g) + (1.0 - dice)  # bce_dice

    def _xent(self, logits: torch.Tensor, g: torch.Tensor) -> torch.Tensor:
        if self.activation == "sigmoid":
            per_voxel = F.binary_cross_entropy_with_logits(logits, g, reduction="none")
        else:
            per_voxel = -(g * F.log_softmax(logits, dim=1)).sum(1)
        return per_voxel.flatten(1).mean(1)

    def _dice(self, logits: torch.Tensor, g: torch.Tensor) -> torch.Tensor:
        if self.activation == "sigmoid":
            return soft_dice(torch.sigmoid(logits), g).mean(1)
        p = torch.softmax(logits, dim=1)
        return soft_dice(p[:, 1:], g[:, 1:]).mean(1)  # foreground classes: background never enters the mean


def medis_losses(names: Sequence[str] = MEDIS_LOSSES,
                 weights: Mapping[str, float] | None = None) -> dict[str, DenseLoss]:
    """``{name: DenseLoss(name)}`` for :func:`~medadv_monai.attacks.medis.medis` (default: the MedIS set);
    ``weights`` go to ``combo``."""
    if isinstance(names, str) or not names:
        raise MedAdvInputError(f"MedIS losses must be a non-empty list of {list(DENSE_LOSSES)}, got {names!r}")
    return {n: DenseLoss(n, weights=weights if n == "combo" else None) for n in names}
