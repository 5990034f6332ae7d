"""Transfer attacks: adversarial images crafted on one model (the surrogate) scored on other models (the targets).

A :class:`SliceModel` is a frozen slice classifier with the cached slices it reads (its own modalities, region and
labels), found by ``(subject, slice_index)``. :class:`TransferScorer`, attached to an
:class:`~medadv_monai.engines.AttackEvaluator` before the handlers that read its output, scores every batch's
adversarial images on each target and adds the target's columns to the batch's ``per_sample`` with the prefix
``to_<name>_`` (:func:`transfer_prefix`); :func:`~medadv_monai.metrics.summarize_columns` with that prefix gives
the target's clean accuracy, robust accuracy and ASR.

What a target is shown, per slice: where it reads exactly the surrogate's clean input (the same modalities of the
same slice), the adversarial image itself, so a model scored against itself gets its white-box result; otherwise
(other modalities) the surrogate's perturbation :math:`d = x' - x` added to its own input channel by channel (in order),
:math:`x'_t = \\mathrm{clip}(x_t + d, 0, 1)` (a T2 perturbation lands on a FLAIR model's FLAIR channel; clipping
only shrinks it, so the budget and the mask hold). The truth is the target's own label (a model of another region
is judged on its own task); the attack mask and the tumour for coverage are the surrogate's.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from ignite.engine import Engine, Events
from monai.data import Dataset
from monai.utils import CommonKeys as Keys

from medadv_monai.errors import MedAdvInputError
from medadv_monai.metrics import LABEL_KEY, OUTCOME_KEYS, PREDICTION_KEYS, score_attack, summarize_columns
from medadv_monai.utils.fingerprint import describe, file_digest, fingerprint

__all__ = ["TRANSFER_KEYS", "SliceModel", "TransferScorer", "model_description", "transfer_prefix",
           "transfer_summaries"]

#: the per-sample columns a target adds (with :func:`transfer_prefix`); coverage and area are the surrogate's mask's
TRANSFER_KEYS: tuple[str, ...] = (LABEL_KEY, *PREDICTION_KEYS, *OUTCOME_KEYS, "linf", "l2", "ssim", "l0", "tv")


def transfer_prefix(name: str) -> str:
    """The prefix of target ``name``'s per-sample columns and summary values: ``to_<name>_``."""
    return f"to_{name}_"


def transfer_summaries(rows: Sequence[Mapping[str, Any]], names: Sequence[str]) -> dict[str, float]:
    """Each target's summary (:func:`~medadv_monai.metrics.summarize_columns` of its prefixed columns) from
    per-sample rows, every value under the target's prefix: ``{"to_<name>_robust_acc": ..., ...}``."""
    columns = {k: [row[k] for row in rows] for k in (rows[0] if rows else ())}
    return {transfer_prefix(name) + k: v for name in names
            for k, v in summarize_columns(columns, prefix=transfer_prefix(name)).items()}


def model_description(network: torch.nn.Module, checkpoint: str | Path | None = None) -> dict[str, Any]:
    """What identifies a model in a stamp: the digest of its checkpoint file (``None`` when it was given as a
    network) and of the weights loaded (the decision threshold included)."""
    return {"checkpoint": file_digest(checkpoint) if checkpoint and Path(checkpoint).is_file() else None,
            "weights": fingerprint(network.state_dict())[:16]}


class SliceModel:
    """A frozen slice classifier and the cached slices it reads.

    Args:
        network: the classifier, in eval mode with frozen parameters (``medadv_monai.networks.load_frozen``).
        dataset: its slices: a MONAI ``Dataset`` of cached-slice entries (``SliceCache.slices``: ``subject``,
            ``slice_index``, ``label``, ...) whose ``transform`` loads them with the model's modalities
            (``LoadCachedSliced``).
        checkpoint: the file the weights came from (for stamps and reports).
        name: what messages call it.
        training: how it was trained (``{"method": "standard"}``, or an adversarial training's ``method``, ``eps``,
            ...; ``{}`` when unknown), for reports.
    """

    def __init__(self, network: torch.nn.Module, dataset: Dataset, checkpoint: str | Path | None = None,
                 name: str = "model", training: Mapping[str, Any] | None = None) -> None:
        self.network, self.dataset, self.checkpoint, self.name = network, dataset, checkpoint, name
        self.training = dict(training or {})
        self._index: dict[tuple[str, int], int] | None = None

    def description(self) -> dict[str, Any]:
        """The stamp of this model as a transfer target: its weights, preprocessing and slices."""
        data = list(self.dataset.data)
        return {**model_description(self.network, self.checkpoint),
                "preprocessing": describe(self.dataset.transform),
                "slices": {"count": len(data), "digest": fingerprint(data)[:16]}}

    def inputs(self, subjects: Sequence[str], slice_indices: Sequence[int]) -> tuple[torch.Tensor, torch.Tensor]:
        """The model's clean inputs ``(N, C, H, W)`` and labels ``(N,)`` of the given slices.

        Raises:
            MedAdvInputError: a slice this model's data does not have (another split, data or slice size).
        """
        if self._index is None:
            self._index = {(str(e["subject"]), int(e["slice_index"])): i for i, e in enumerate(self.dataset.data)}
        rows = []
        for subject, z in zip(subjects, slice_indices):
            key = (str(subject), int(z))
            if key not in self._index:
                raise MedAdvInputError(
                    f"transfer target {self.name!r} has no slice {key[1]} of subject {key[0]!r} in its data "
                    f"({len(self._index)} slices): surrogate and target must read the same split of the same "
                    "dataset (same dataset_dir, split_fractions and split_seed)")
            rows.append(self.dataset[self._index[key]])
        x = torch.stack([torch.as_tensor(r["image"]).as_subclass(torch.Tensor) for r in rows])
        labels = torch.as_tensor([int(torch.as_tensor(r["label"]).reshape(-1)[0]) for r in rows])
        return x, labels

    @torch.no_grad()
    def score(self, x: torch.Tensor, x_adv: torch.Tensor, subjects: Sequence[str], slice_indices: Sequence[int],
              mask: torch.Tensor | None = None, tumour: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
        """The :data:`TRANSFER_KEYS` columns ``(N,)`` of the surrogate's clean and adversarial batch ``x``,
        ``x_adv`` scored on this model (the module docstring says what it is shown)."""
        x_t, labels = self.inputs(subjects, slice_indices)
        x_t, labels = x_t.to(x.device, x.dtype), labels.to(x.device)
        if x_t.shape != x.shape:
            raise MedAdvInputError(
                f"transfer target {self.name!r} reads inputs of shape {tuple(x_t.shape[1:])}, the surrogate "
                f"{tuple(x.shape[1:])}: a perturbation moves only between models with as many channels of the same "
                "slice size")
        same = (x_t == x).flatten(1).all(1).reshape(-1, *([1] * (x.ndim - 1)))
        x_t_adv = torch.where(same, x_adv, (x_t + (x_adv - x)).clamp(0.0, 1.0))
        cols = score_attack(self.network(x_t).float(), self.network(x_t_adv).float(), labels, x_t, x_t_adv, mask,
                            tumour)
        return {LABEL_KEY: labels, **{k: cols[k] for k in TRANSFER_KEYS if k != LABEL_KEY}}


class TransferScorer:
    """Score each batch's adversarial images on every target (an Ignite handler for an ``AttackEvaluator``).

    On every ``ITERATION_COMPLETED`` it adds each target's :data:`TRANSFER_KEYS` columns to the engine output's
    ``per_sample``, prefixed with :func:`transfer_prefix`. Attach it before the handlers that read ``per_sample``
    (a ``PerSampleRecorder``): Ignite runs the handlers of one event in the order they were attached.

    Args:
        targets: target name -> :class:`SliceModel`.

    Raises:
        MedAdvInputError: a target that is not a ``SliceModel``.
    """

    def __init__(self, targets: Mapping[str, SliceModel]) -> None:
        for name, target in targets.items():
            if not isinstance(target, SliceModel):
                raise MedAdvInputError(f"transfer target {name!r}: expected a SliceModel, got {type(target).__name__}")
        self.targets = dict(targets)

    def attach(self, engine: Engine) -> None:
        engine.add_event_handler(Events.ITERATION_COMPLETED, self)

    def __call__(self, engine: Engine) -> None:
        out = engine.state.output
        per_sample = out["per_sample"]
        subjects, slices = per_sample["subject"], [int(z) for z in per_sample["slice_index"]]
        for name, target in self.targets.items():
            cols = target.score(out[Keys.IMAGE], out["adv"], subjects, slices, out["attack_mask"], out["tumour"])
            per_sample.update({transfer_prefix(name) + k: v for k, v in cols.items()})
