"""The one attack evaluator: attacks every batch and records per-sample outcomes and perturbation metrics.

It serves AdvGAN's validation and inference (stage 2) and every cell of the attack grid (stage 3). The attack is
an :class:`~medadv_monai.attacks.AdversarialInferer` (any attack of the registry, AdvGAN included) or none (the
clean cell); the attack mask comes from the batch (an ``AttackMaskd`` in the data chain). Summarise the recorded
columns with :class:`~medadv_monai.handlers.AttackSummary`; write them with
:class:`~medadv_monai.handlers.PerSampleRecorder`.
"""

from __future__ import annotations

import contextlib
from collections.abc import Mapping, Sequence
from typing import Any

import torch
from ignite.engine import Engine
from monai.engines import SupervisedEvaluator
from monai.engines.utils import IterationEvents
from monai.utils import CommonKeys as Keys

from medadv_monai.attacks.inferer import AdversarialInferer, PrepareAttackBatch
from medadv_monai.attacks.targets import default_targets
from medadv_monai.engines.grid_shards import seed_batch
from medadv_monai.errors import MedAdvInputError
from medadv_monai.metrics import LABEL_KEY, REFERENCE_KEYS, TARGET_KEY, mask_attackable_samples, score_attack

__all__ = ["AttackEvaluator"]


class AttackEvaluator(SupervisedEvaluator):
    """A ``SupervisedEvaluator`` that attacks every batch and records per-sample columns.

    Per batch: the clean logits, the attack of the attackable samples (an empty mask leaves a sample unchanged by
    definition, and each sample's attack is independent of its batch-mates, so skipping the others changes no
    result), the adversarial logits and :func:`~medadv_monai.metrics.score_attack`. Each ``reference_attacks``
    entry attacks the same batch with the same mask; its columns carry the name as prefix (``pgd10_success``), so
    one run compares two attacks slice by slice.

    ``engine.state.output``: ``image``, ``label``, ``pred`` (adversarial logits), ``adv``, ``attack_mask``,
    ``tumour`` and ``per_sample``: ``subject``, ``slice_index``, ``label``, ``target`` (-1 when untargeted) and the
    :data:`~medadv_monai.metrics.SCORE_KEYS`, each ``(N,)``.

    Args:
        device: where the network runs.
        val_data_loader: batches with ``image``, ``label``, the tumour mask and the attack mask.
        network: the model under attack (single logit or K classes), run in eval mode.
        inferer: the attack; ``None`` runs the clean model (x' = x). Targeted attacks take their targets from the
            batch (``prepare_batch``'s ``targets``) or the other class (:func:`~medadv_monai.attacks.targets.
            default_targets`).
        reference_attacks: ``name -> AdversarialInferer`` run on the same batches.
        mask_key: batch key of the attack mask (made by ``AttackMaskd``); ``None``: no mask.
        tumour_key: batch key of the tumour mask (for coverage); ``None``: no coverage.
        eval_modules: further modules put in eval mode while the evaluator runs (an AdvGAN generator in training).
        batch_seeds: one seed per batch of an epoch: torch's random number generator is seeded with
            ``batch_seeds[i]`` before batch ``i`` is attacked, so the random draws of an attack (PGD's random start)
            depend on the batch alone, not on what ran before it (the attack grid gives each batch a seed made from
            its index in the whole split, so a rank attacking only some batches draws what a single process does).
            ``None``: the generator runs on as it is.
        prepare_batch: default ``PrepareAttackBatch(label_key="label", mask_key=mask_key)``.
        kwargs: further ``SupervisedEvaluator`` arguments (``val_handlers``, ``key_val_metric``, ``amp``, ...).
    """

    def __init__(
        self,
        device: torch.device | str,
        val_data_loader: Any,
        network: torch.nn.Module,
        inferer: AdversarialInferer | None = None,
        reference_attacks: Mapping[str, AdversarialInferer] | None = None,
        mask_key: str | None = "attack_mask",
        tumour_key: str | None = "mask",
        eval_modules: Sequence[torch.nn.Module] = (),
        batch_seeds: Sequence[int] | None = None,
        prepare_batch: Any = None,
        **kwargs: Any,
    ) -> None:
        for name, ref in {"inferer": inferer, **dict(reference_attacks or {})}.items():
            if ref is not None and not isinstance(ref, AdversarialInferer):
                raise MedAdvInputError(f"AttackEvaluator {name}: expected an AdversarialInferer, got {ref!r}")
        self.attack = inferer
        self.reference_attacks = dict(reference_attacks or {})
        self.tumour_key = tumour_key
        self.eval_modules = list(eval_modules)
        self.batch_seeds = None if batch_seeds is None else [int(s) for s in batch_seeds]
        prepare_batch = prepare_batch or PrepareAttackBatch(label_key="label", mask_key=mask_key)
        super().__init__(device=device, val_data_loader=val_data_loader, network=network, prepare_batch=prepare_batch,
                         decollate=False, **kwargs)

    @property
    def targeted(self) -> bool:
        """Whether the attack is targeted."""
        return self.attack is not None and self.attack.targeted

    def _iteration(self, engine: Engine, batchdata: dict[str, Any]) -> dict[str, Any]:
        if self.batch_seeds is not None:
            self._seed_batch(engine)
        x, y, _, kw = engine.prepare_batch(batchdata, engine.state.device, engine.non_blocking, **engine.to_kwargs)
        x = x.as_subclass(torch.Tensor) if type(x) is not torch.Tensor else x
        mask = kw.get("mask")
        labels = torch.as_tensor(y).reshape(len(x)).long()
        tumour = None if self.tumour_key is None else torch.as_tensor(batchdata[self.tumour_key]).to(x.device)
        amp = torch.autocast("cuda", **engine.amp_kwargs) if engine.amp else contextlib.nullcontext()
        with engine.mode(engine.network, *self.eval_modules), amp:
            clean_logits = engine.network(x).float()
            targets = None
            if self.targeted:
                targets = default_targets(labels, clean_logits.shape[1], kw.get("targets")).reshape(len(x)).long()
            attackable = mask_attackable_samples(mask, len(x)).to(x.device)
            x_adv = x if self.attack is None else self._attack(self.attack, x, labels, mask, targets, attackable)
            adv_logits = engine.network(x_adv).float()
            references = {name: self._attack(ref, x, labels, mask, targets, attackable)
                          for name, ref in self.reference_attacks.items()}
            reference_logits = {name: engine.network(adv).float() for name, adv in references.items()}
        per_sample: dict[str, Any] = {
            "subject": list(batchdata.get("subject", [""] * len(x))),
            "slice_index": torch.as_tensor(batchdata.get("slice_index", torch.arange(len(x)))).reshape(-1),
            LABEL_KEY: labels,
            TARGET_KEY: targets if targets is not None else torch.full_like(labels, -1),
            **score_attack(clean_logits, adv_logits, labels, x, x_adv, mask, tumour, targets),
        }
        for name, adv in references.items():
            cols = score_attack(clean_logits, reference_logits[name], labels, x, adv, mask, tumour, targets)
            per_sample.update({f"{name}_{k}": cols[k] for k in REFERENCE_KEYS})
        engine.state.output = {Keys.IMAGE: x, Keys.LABEL: y, Keys.PRED: adv_logits, "adv": x_adv,
                               "attack_mask": mask, "tumour": tumour, "per_sample": per_sample}
        engine.fire_event(IterationEvents.FORWARD_COMPLETED)
        engine.fire_event(IterationEvents.MODEL_COMPLETED)
        return engine.state.output

    def _seed_batch(self, engine: Engine) -> None:
        """Seed torch's generator with this batch's entry of ``batch_seeds`` (the batch's index in the epoch)."""
        seed_batch(engine, self.batch_seeds, "AttackEvaluator")

    def _attack(self, inferer: AdversarialInferer, x: torch.Tensor, labels: torch.Tensor, mask: torch.Tensor | None,
                targets: torch.Tensor | None, attackable: torch.Tensor) -> torch.Tensor:
        """Attack the attackable samples only (see the class docstring)."""
        if bool(attackable.all()):
            return inferer.perturb(x, self.network, labels=labels, mask=mask, targets=targets)
        x_adv = x.clone()
        idx = attackable.nonzero().reshape(-1)
        if len(idx):
            pick = lambda t: None if t is None else (t[idx] if t.shape[0] == len(x) else t)  # noqa: E731
            x_adv[idx] = inferer.perturb(x[idx], self.network, labels=labels[idx], mask=pick(mask),
                                         targets=pick(targets))
        return x_adv
