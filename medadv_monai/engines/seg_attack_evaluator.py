"""Segmentation under attack: a dense attack (any gradient attack of the core on a dense loss) or MedIS per batch,
and per sample the region Dice and IoU before and after, the success rule and the perturbation metrics.

The attacks are callables ``attack(model, x, y, mask) -> (x_adv, extra per-sample columns)``:
:class:`DenseAttack` wraps :func:`~medadv_monai.attacks.registry.run_attack` with a
:class:`~medadv_monai.losses.dense.DenseLoss`; :class:`MedISAttack` wraps :func:`~medadv_monai.attacks.medis.medis`
and adds each surrogate's steps to success and the fused choice. The evaluator holds no attack or metric
mathematics.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, Callable

import torch
from ignite.engine import Engine
from monai.engines import SupervisedEvaluator
from monai.engines.utils import IterationEvents
from monai.utils import CommonKeys as Keys

from medadv_monai.attacks.medis import medis
from medadv_monai.attacks.registry import attack_kwargs, get_attack
from medadv_monai.engines.grid_shards import seed_batch
from medadv_monai.errors import MedAdvInputError
from medadv_monai.losses.dense import MEDIS_LOSSES, DenseLoss, medis_losses
from medadv_monai.metrics import perturbation_metrics
from medadv_monai.metrics.segmentation import hard_masks, region_iou, region_scores, seg_success

__all__ = ["DENSE_ATTACKS", "MEDIS_ARGS", "DenseAttack", "MedISAttack", "SegAttackEvaluator"]

DENSE_ATTACKS = ("fgsm", "bim", "pgd", "mifgsm", "apgd")
"""The gradient attacks that take a dense ``loss_fn``."""
MEDIS_ARGS = ("losses", "weights", "alpha", "steps")
"""What a MedIS row may set besides the grid's eps, mask and target."""

SegAttack = Callable[[Callable, torch.Tensor, torch.Tensor, Any], tuple[torch.Tensor, dict[str, Any]]]


class DenseAttack:
    """A gradient attack of the registry on a dense loss: ``(model, x, y, mask) -> (x_adv, {})``.

    Args:
        attack: ``fgsm``, ``bim``, ``pgd``, ``mifgsm`` or ``apgd``.
        loss: a :data:`~medadv_monai.losses.dense.DENSE_LOSSES` name (e.g. ``bce`` or ``dice``).
        targeted: descend the loss towards ``y`` (target masks) instead of ascending it.
        weights: the ``combo`` loss's weights.
        kwargs: the attack's own arguments (``eps``, ``alpha``, ``steps``, ...; registry defaults fill the rest).

    It calls the attack function directly rather than through :class:`~medadv_monai.attacks.AdversarialInferer`,
    whose labels and default targets are those of a classifier.
    """

    def __init__(self, attack: str = "pgd", loss: str = "bce", targeted: bool = False,
                 weights: Mapping[str, float] | None = None, **kwargs: Any) -> None:
        if attack not in DENSE_ATTACKS:
            raise MedAdvInputError(f"dense attack {attack!r}: expected one of {list(DENSE_ATTACKS)} (the gradient "
                                   "attacks that take a loss_fn)")
        self.attack, self.loss_fn, self.targeted = attack, DenseLoss(loss, weights=weights), bool(targeted)
        self.kwargs = attack_kwargs(attack, targeted=self.targeted, **kwargs)  # unknown arguments: refused now

    def __call__(self, model: Callable, x: torch.Tensor, y: torch.Tensor, mask: Any) -> tuple[torch.Tensor, dict]:
        return get_attack(self.attack)(model, x, y, mask=mask, loss_fn=self.loss_fn, **self.kwargs), {}


class MedISAttack:
    """MedIS parallel fusion: ``(model, x, y, mask) -> (x_adv, columns)`` with ``steps_<loss>`` (-1: no success),
    ``fused_loss`` and ``fused_steps`` per sample.

    Args:
        eps: L-inf budget.
        losses: the surrogate names (default the MedIS set, :data:`~medadv_monai.losses.MEDIS_LOSSES`).
        targeted: towards ``y`` (target masks).
        weights: weights of the ``combo`` loss (default equal).
        kwargs: ``alpha`` and ``steps`` of :func:`~medadv_monai.attacks.medis.medis`.
    """

    def __init__(self, eps: float, losses: Sequence[str] = MEDIS_LOSSES, targeted: bool = False,
                 weights: Mapping[str, float] | None = None, **kwargs: Any):
        unknown = sorted(set(kwargs) - set(MEDIS_ARGS))
        if unknown:
            raise MedAdvInputError(f"MedIS does not take {unknown}; expected some of {list(MEDIS_ARGS)}")
        self.eps, self.losses, self.targeted, self.kwargs = eps, medis_losses(losses, weights), bool(targeted), kwargs

    def __call__(self, model: Callable, x: torch.Tensor, y: torch.Tensor, mask: Any) -> tuple[torch.Tensor, dict]:
        res = medis(model, x, y, eps=self.eps, losses=self.losses, targeted=self.targeted, mask=mask, **self.kwargs)
        columns: dict[str, Any] = {f"steps_{name}": res.steps[i] for i, name in enumerate(res.losses)}
        columns["fused_loss"] = [res.losses[int(c)] for c in res.chosen]
        columns["fused_steps"] = res.fused_steps
        return res.x_adv, columns


class SegAttackEvaluator(SupervisedEvaluator):
    """A ``SupervisedEvaluator`` that attacks every batch of a multi-label segmentation model and records per-sample
    region scores.

    Per batch: the clean logits, the attack (``None``: the clean cell), the adversarial logits, and per sample
    ``subject``, ``slice_index``, ``label`` (the first region is present), per region ``present_<R>``,
    ``clean_dice_<R>``, ``adv_dice_<R>``, ``clean_iou_<R>``, ``adv_iou_<R>``; ``success`` (untargeted:
    IoU(adv prediction, ground truth) <= 0.5 on the first region; targeted: IoU(adv prediction, target) >= 0.45,
    also as ``target_iou``); the perturbation metrics ``linf``, ``l2``, ``l0``, ``tv``, ``ssim``, ``coverage`` (of
    the tumour, the union of the regions, by the attack mask) and ``area``; and the attack's own columns.
    ``engine.state.output``: ``image``, ``label``, ``pred`` (adversarial logits), ``clean_pred``, ``adv``,
    ``attack_mask``, ``per_sample``.

    Args:
        device: where the network runs.
        val_data_loader: batches with ``image``, ``label`` (region masks), optionally ``attack_mask`` and ``target``.
        network: the segmentation model (logits ``(N, R, *spatial)``), run in eval mode.
        regions: region names in channel order.
        attack: a :class:`DenseAttack`, :class:`MedISAttack` or any callable of the same shape; ``None``: clean.
        targeted: the attack moves towards the batch's ``target`` masks.
        mask_key: batch key of the attack mask (``None``: no mask).
        target_key: batch key of the target masks.
        batch_seeds: a seed per batch for torch's generator (PGD's random start depends on the batch alone).
        kwargs: further ``SupervisedEvaluator`` arguments (``val_handlers``, ...).
    """

    def __init__(self, device: torch.device | str, val_data_loader: Any, network: torch.nn.Module,
                 regions: Sequence[str], attack: SegAttack | None = None, targeted: bool = False,
                 mask_key: str | None = "attack_mask", target_key: str = "target",
                 batch_seeds: Sequence[int] | None = None, **kwargs: Any) -> None:
        self.regions, self.attack, self.targeted = list(regions), attack, bool(targeted)
        self.mask_key, self.target_key = mask_key, target_key
        self.batch_seeds = None if batch_seeds is None else [int(s) for s in batch_seeds]
        super().__init__(device=device, val_data_loader=val_data_loader, network=network, decollate=False, **kwargs)

    def _get(self, batch: Mapping[str, Any], key: str, device: Any) -> torch.Tensor:
        if key not in batch:
            raise MedAdvInputError(f"the batch has no {key!r}; available keys: {list(batch)}")
        return torch.as_tensor(batch[key]).to(device).as_subclass(torch.Tensor).float()

    def _iteration(self, engine: Engine, batchdata: dict[str, Any]) -> dict[str, Any]:
        if self.batch_seeds is not None:
            seed_batch(engine, self.batch_seeds, "SegAttackEvaluator")
        device = engine.state.device
        x = self._get(batchdata, Keys.IMAGE, device)
        gt = self._get(batchdata, Keys.LABEL, device)
        if gt.shape[1] != len(self.regions):
            raise MedAdvInputError(f"the batch's label has {gt.shape[1]} channels, expected one per region "
                                   f"{self.regions}")
        mask = None if self.mask_key is None else self._get(batchdata, self.mask_key, device)
        target = self._get(batchdata, self.target_key, device) if self.targeted else None
        extra: dict[str, Any] = {}
        with engine.mode(engine.network):
            clean = engine.network(x).float()
            if clean.shape != gt.shape:
                raise MedAdvInputError(f"the model's output has shape {tuple(clean.shape)}, the region masks "
                                       f"{tuple(gt.shape)}; expected one logit channel per region {self.regions}")
            x_adv = x
            if self.attack is not None:
                x_adv, extra = self.attack(engine.network, x, target if self.targeted else gt, mask)
            adv = clean if self.attack is None else engine.network(x_adv).float()
        per_sample = self._columns(batchdata, x, x_adv, gt, clean, adv, mask, target)
        per_sample.update(extra)
        engine.state.output = {Keys.IMAGE: x, Keys.LABEL: gt, Keys.PRED: adv, "clean_pred": clean, "adv": x_adv,
                               "attack_mask": mask, "per_sample": per_sample}
        engine.fire_event(IterationEvents.FORWARD_COMPLETED)
        engine.fire_event(IterationEvents.MODEL_COMPLETED)
        return engine.state.output

    def _columns(self, batchdata: Mapping[str, Any], x: torch.Tensor, x_adv: torch.Tensor, gt: torch.Tensor,
                 clean: torch.Tensor, adv: torch.Tensor, mask: torch.Tensor | None,
                 target: torch.Tensor | None) -> dict[str, Any]:
        n = len(x)
        clean_dice, clean_iou = region_scores(hard_masks(clean), gt)
        adv_dice, adv_iou = region_scores(hard_masks(adv), gt)
        present = gt.flatten(2).amax(2) > 0
        cols: dict[str, Any] = {
            "subject": list(batchdata.get("subject", [""] * n)),
            "slice_index": torch.as_tensor(batchdata.get("slice_index", torch.arange(n))).reshape(-1),
            "label": present[:, 0].long(),
        }
        for i, r in enumerate(self.regions):
            cols[f"present_{r}"] = present[:, i].long()
            cols[f"clean_dice_{r}"], cols[f"adv_dice_{r}"] = clean_dice[:, i], adv_dice[:, i]
            cols[f"clean_iou_{r}"], cols[f"adv_iou_{r}"] = clean_iou[:, i], adv_iou[:, i]
        if target is not None:
            target_iou = region_iou(hard_masks(adv), target)
            cols["target_iou"] = target_iou[:, 0]
            cols["success"] = seg_success(target_iou, True).long()
        else:
            cols["success"] = seg_success(adv_iou, False).long()
        metrics = perturbation_metrics(x, x_adv, mask, tumour=gt.amax(1, keepdim=True))
        cols.update({k: metrics[k] for k in ("linf", "l2", "l0", "tv", "ssim", "coverage", "area")})
        return cols
