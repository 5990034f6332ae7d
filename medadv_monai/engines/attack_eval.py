"""Stage 3 engine: one MONAI evaluator per cell of an attack grid, and the runner that walks the grid.

A *cell* is one attack at one budget with one mask, untargeted or targeted. For each cell an
:class:`AttackEvaluator` (a MONAI ``SupervisedEvaluator`` whose inferer is the project's
:class:`~medadv_monai.attacks.AdversarialInferer`) runs over the slices; masks come from the dataset's transform
chain (an ``AttackMaskd`` per mask name), so each mask has its own data loader. Each iteration records, per
sample, the clean and adversarial predictions, the outcomes and the perturbation metrics
(:mod:`medadv_monai.metrics`); :class:`PerSampleRecorder` gathers them and puts the cell's summary into
``engine.state.metrics`` so MONAI's Stats and TensorBoard handlers log it.
"""

from __future__ import annotations

import itertools
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from ignite.engine import Engine, Events
from monai.engines import SupervisedEvaluator
from monai.engines.utils import IterationEvents
from monai.inferers import SimpleInferer
from monai.utils import CommonKeys as Keys

from medadv_monai.attacks import AdversarialInferer, PrepareAttackBatch
from medadv_monai.attacks.registry import attack_kwargs
from medadv_monai.errors import MedAdvInputError
from medadv_monai.metrics import mask_attackable_samples, score_attack, summarize

__all__ = ["CLEAN", "AttackCell", "AttackEvaluator", "PerSampleRecorder", "advgan_cells", "expand_grid"]

CLEAN = "clean"


@dataclass(frozen=True)
class AttackCell:
    """One cell of the grid.

    Attributes:
        name: row label of the attack (a key of the config's ``attacks``, e.g. ``pgd``), or ``clean``.
        attack: registry name of the attack (``fgsm``, ``bim``, ``pgd``, ``mifgsm``, ``advgan``) or ``clean``.
        eps: L-inf budget in [0, 1] (0 for ``clean``).
        mask: name of the mask transform (a key of the config's ``masks``).
        targeted: targeted attack towards the other class (``1 - label``).
        params: further attack keywords (``steps``, ``alpha``, ``decay``, ``generator``, ...).
    """

    name: str
    attack: str
    eps: float
    mask: str
    targeted: bool = False
    params: Mapping[str, Any] = field(default_factory=dict, hash=False, compare=False)

    @property
    def label(self) -> str:
        """A unique, file-name-safe label, e.g. ``pgd_eps8_seg`` or ``fgsm_eps4_ring_targeted``."""
        if self.attack == CLEAN:
            return f"{CLEAN}_{self.mask}"
        eps = f"{self.eps * 255:.4g}".replace(".", "p")
        return f"{self.name}_eps{eps}_{self.mask}" + ("_targeted" if self.targeted else "")

    def row(self) -> dict[str, Any]:
        """The cell's columns in the summary and per-sample tables."""
        return {"cell": self.label, "attack": self.name, "eps": self.eps, "eps_255": round(self.eps * 255, 4),
                "mask": self.mask, "targeted": self.targeted}


def expand_grid(
    attacks: Mapping[str, Mapping[str, Any]],
    eps: Sequence[float],
    masks: Sequence[str],
    targeted: Sequence[bool] = (False,),
    clean: bool = True,
) -> list[AttackCell]:
    """All cells ``attacks x eps x masks x targeted``, after one ``clean`` cell per mask when ``clean``.

    Args:
        attacks: row name -> attack keywords with ``attack`` naming the registry attack (defaults to the row name),
            e.g. ``{"pgd": {"steps": 10}, "pgd40": {"attack": "pgd", "steps": 40}}``.
        eps: budgets in [0, 1].
        masks: mask names.
        targeted: which of untargeted (False) / targeted (True) to run.

    Raises:
        MedAdvInputError: an unknown attack, a keyword it does not take, or eps outside [0, 1].
    """
    for e in eps:
        if not 0 <= float(e) <= 1:
            raise MedAdvInputError(f"eps {e} in the grid is outside [0, 1]; budgets are fractions of the [0, 1] range")
    cells = [AttackCell(CLEAN, CLEAN, 0.0, m) for m in masks] if clean else []
    for (name, spec), e, m, t in itertools.product(attacks.items(), eps, masks, targeted):
        params = dict(spec)
        attack = params.pop("attack", name)
        attack_kwargs(attack, eps=float(e), **params)  # validate names and keywords now, not mid-grid
        cells.append(AttackCell(name, attack, float(e), m, bool(t), params))
    return cells


def advgan_cells(
    checkpoint: str | None,
    generator: str | os.PathLike | torch.nn.Module,
    masks: Sequence[str],
    modalities: Sequence[str] | None = None,
    device: torch.device | str = "cpu",
) -> list[AttackCell]:
    """The AdvGAN rows of a grid: one cell per mask at the eps the generator was trained for (none without a
    checkpoint).

    Args:
        checkpoint: a ``brats_advgan`` generator checkpoint (``models/generator.pt``), or ``None``.
        generator: the generator network, or the path of a ``brats_advgan`` config whose ``network_def`` builds it
            (read only when there is a checkpoint).
        masks: mask names; each gets a cell (the mask scales the generator's budget).
        modalities: the classifier's input channels, checked against the generator's.
        device: where the generator runs.

    Raises:
        MedAdvInputError: an unreadable or unsafe checkpoint, not a generator, or other modalities.
    """
    if not checkpoint:
        return []
    from medadv_monai.engines.advgan import AdvGANSettings, load_generator_checkpoint

    if isinstance(generator, torch.nn.Module):
        net = generator
    else:
        from medadv_monai.bundle import load_bundle_config

        overrides = {} if modalities is None else {"classifier_overrides": {"modalities": list(modalities)}}
        net = load_bundle_config(generator, **overrides).get_parsed_content("network_def")
    config = load_generator_checkpoint(checkpoint, net)  # checks it is a generator checkpoint, loads the weights
    AdvGANSettings(eps=config["eps"], mask_kind=config.get("mask_kind", "none"),
                   targeted=bool(config.get("targeted", False)), modalities=modalities).check(
        config, source=f"generator checkpoint {str(checkpoint)!r}")  # the classifier's modalities must match
    net = net.to(device).eval().requires_grad_(False)
    return [AttackCell("advgan", "advgan", float(config["eps"]), m, bool(config.get("targeted", False)),
                       {"generator": net}) for m in masks]


class AttackEvaluator(SupervisedEvaluator):
    """A ``SupervisedEvaluator`` that attacks every batch and records per-sample outcomes and metrics.

    ``engine.state.output`` holds the batch (``image``, ``label``), the adversarial batch (``adv``), the attack
    mask, the tumour mask, the adversarial logits (``pred``) and ``per_sample``: a dict of ``(N,)`` columns
    (subject, slice_index, label, target, clean/adv probability and prediction, outcomes, metrics).

    Args:
        device: where the network runs.
        val_data_loader: batches with ``image``, ``label``, tumour ``mask`` and the attack mask.
        network: the classifier (single logit or K classes), used in eval mode.
        cell: the grid cell to run.
        mask_key: batch key of the attack mask (made by ``AttackMaskd``).
        tumour_key: batch key of the tumour mask (for coverage).
        kwargs: further ``SupervisedEvaluator`` arguments (``val_handlers``, ...).
    """

    def __init__(
        self,
        device: torch.device | str,
        val_data_loader: Any,
        network: torch.nn.Module,
        cell: AttackCell,
        mask_key: str = "attack_mask",
        tumour_key: str = "mask",
        **kwargs: Any,
    ) -> None:
        self.cell = cell
        self.tumour_key = tumour_key
        inferer = SimpleInferer() if cell.attack == CLEAN else AdversarialInferer(
            attack=cell.attack, targeted=cell.targeted, eps=cell.eps, **cell.params)
        super().__init__(device=device, val_data_loader=val_data_loader, network=network, inferer=inferer,
                         prepare_batch=PrepareAttackBatch(label_key="label", mask_key=mask_key), decollate=False,
                         **kwargs)

    def _iteration(self, engine: Engine, batchdata: dict[str, Any]) -> dict[str, Any]:
        x, y, _, kw = engine.prepare_batch(batchdata, engine.state.device, engine.non_blocking)
        mask = kw["mask"]
        labels = y.reshape(len(y)).long()
        targets = 1 - labels if self.cell.targeted else None
        attackable = mask_attackable_samples(mask, len(x)).to(x.device) if self.cell.attack != CLEAN else None
        with engine.mode(engine.network):
            clean_logits = engine.network(x)
            x_adv = x if attackable is None else self._attack(engine, x, labels, mask, targets, attackable)
            adv_logits = engine.network(x_adv)
        tumour = torch.as_tensor(batchdata[self.tumour_key]).to(x.device)
        per_sample = {
            "subject": list(batchdata.get("subject", [""] * len(x))),
            "slice_index": torch.as_tensor(batchdata.get("slice_index", torch.arange(len(x)))).reshape(-1),
            "label": labels,
            "target": targets if targets is not None else torch.full_like(labels, -1),
            **score_attack(clean_logits, adv_logits, labels, x, x_adv, mask, tumour, targets),
        }
        engine.state.output = {Keys.IMAGE: x, Keys.LABEL: y, Keys.PRED: adv_logits, "adv": x_adv,
                               "attack_mask": mask, "tumour": tumour, "per_sample": per_sample}
        engine.fire_event(IterationEvents.FORWARD_COMPLETED)
        engine.fire_event(IterationEvents.MODEL_COMPLETED)
        return engine.state.output


    @staticmethod
    def _attack(engine: Engine, x: torch.Tensor, labels: torch.Tensor, mask: torch.Tensor | None,
                targets: torch.Tensor | None, attackable: torch.Tensor) -> torch.Tensor:
        """Attack the attackable samples only: an empty mask leaves a sample unchanged by definition, and each
        sample's attack is independent of its batch-mates, so skipping the others changes no result."""
        if bool(attackable.all()):
            return engine.inferer.perturb(x, engine.network, labels=labels, mask=mask, targets=targets)
        x_adv = x.clone()
        idx = attackable.nonzero().reshape(-1)
        if len(idx):
            pick = lambda t: None if t is None else (t[idx] if t.shape[0] == len(x) else t)  # noqa: E731
            x_adv[idx] = engine.inferer.perturb(x[idx], engine.network, labels=labels[idx], mask=pick(mask),
                                                targets=pick(targets))
        return x_adv


class PerSampleRecorder:
    """Gather ``per_sample`` columns over an epoch; at its end put the cell's summary in ``engine.state.metrics``.

    Attributes:
        rows: one dict per sample (cell columns first), in data order.
        summary: the cell's summary (:func:`medadv_monai.metrics.summarize`) with the cell columns.
    """

    def __init__(self, cell: AttackCell) -> None:
        self.cell = cell
        self.rows: list[dict[str, Any]] = []
        self.summary: dict[str, Any] = {}

    def attach(self, engine: Engine) -> None:
        engine.add_event_handler(Events.EPOCH_STARTED, lambda _: self.rows.clear())
        engine.add_event_handler(Events.ITERATION_COMPLETED, self._collect)
        engine.add_event_handler(Events.EPOCH_COMPLETED, self._summarize)

    def _collect(self, engine: Engine) -> None:
        cols = engine.state.output["per_sample"]
        n = len(cols["label"])
        for i in range(n):
            row = self.cell.row()
            for key, values in cols.items():
                v = values[i]
                row[key] = v.item() if isinstance(v, torch.Tensor) else v
            self.rows.append(row)

    def _summarize(self, engine: Engine) -> None:
        columns: dict[str, list[Any]] = {}
        for row in self.rows:
            for key, value in row.items():
                columns.setdefault(key, []).append(value)
        per_sample = {k: columns[k] for k in ("clean_correct", "adv_correct", "attackable", "success")}
        per_sample.update({k: torch.tensor(columns[k], dtype=torch.float64) for k in
                           ("l0", "l2", "linf", "tv", "ssim", "coverage", "area")})
        per_sample.update(labels=columns["label"], targets=columns["target"])
        self.summary = {**self.cell.row(), **summarize(per_sample, targeted=self.cell.targeted)}
        engine.state.metrics.update({k: v for k, v in self.summary.items() if isinstance(v, (int, float))
                                     and not isinstance(v, bool)})

