"""Ignite metric: the summary of an attack over every sample of an epoch."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

import torch
from ignite.engine import Engine
from ignite.metrics import Metric

from medadv_monai.errors import MedAdvInputError
from medadv_monai.metrics import LABEL_KEY, OUTCOME_KEYS, PERTURBATION_KEYS, TARGET_KEY, summarize_columns

__all__ = ["AttackSummary"]

_KEYS = (*OUTCOME_KEYS, *PERTURBATION_KEYS, LABEL_KEY, TARGET_KEY)


class AttackSummary(Metric):
    """:func:`~medadv_monai.metrics.summarize_columns` over every sample of an epoch (means over samples, never
    over batches), from the ``per_sample`` columns of an :class:`~medadv_monai.engines.AttackEvaluator` output.

    At the end of the epoch the metric's own name gets ``summary[key]`` (so it can be a key metric, e.g.
    ``{"val_asr": AttackSummary("asr")}``) and every summary value is also stored as
    ``engine.state.metrics[prefix + name]``: ``clean_acc``, ``robust_acc``, ``asr``, ``asr_all`` (or
    ``targeted_success``), ``n``, ``n_attackable``, ``mean_l2``, ``mean_linf``, ``mean_ssim``, ...

    Args:
        key: the summary value returned as the metric's value.
        prefix: prefix of the summary entries in ``engine.state.metrics``.
        column_prefix: prefix of the per-sample columns to read (a reference attack's, e.g. ``"pgd10_"``).
        targeted: summarise as a targeted attack.
        output_transform: engine output -> what :meth:`update` reads (default: its ``per_sample`` columns).
    """

    def __init__(
        self,
        key: str = "asr",
        prefix: str = "val_",
        column_prefix: str = "",
        targeted: bool = False,
        output_transform: Callable = lambda out: out["per_sample"],
        device: str | torch.device = "cpu",
    ) -> None:
        self.key, self.prefix, self.column_prefix, self.targeted = key, prefix, column_prefix, bool(targeted)
        self._cols: dict[str, list[torch.Tensor]] = {}
        super().__init__(output_transform=output_transform, device=device, skip_unrolling=True)

    @classmethod
    def for_references(cls, names: Sequence[str] | Mapping[str, Any], key: str = "asr", targeted: bool = False,
                       prefix: str = "") -> dict[str, AttackSummary]:
        """One summary per reference attack: ``{"<prefix><name>_<key>": AttackSummary(key,
        prefix="<prefix><name>_", column_prefix="<name>_")}`` (pass ``reference_attacks`` itself; its keys are
        used)."""
        return {f"{prefix}{n}_{key}": cls(key, prefix=f"{prefix}{n}_", column_prefix=f"{n}_", targeted=targeted)
                for n in names}

    def reset(self) -> None:
        self._cols = {}

    def update(self, columns: Mapping[str, Any]) -> None:
        """Append one batch's per-sample columns."""
        if self.column_prefix + "success" not in columns:
            raise MedAdvInputError(f"AttackSummary: the engine output has no per-sample column "
                                   f"{self.column_prefix + 'success'!r}; use AttackEvaluator to produce it")
        for k in _KEYS:
            for name in dict.fromkeys((self.column_prefix + k, k)):
                if name in columns:
                    self._cols.setdefault(name, []).append(torch.as_tensor(columns[name]).detach().reshape(-1).cpu())

    def iteration_completed(self, engine: Engine) -> None:
        """Read the columns of this iteration (Ignite's default expects ``(y_pred, y)``)."""
        self.update(self._output_transform(engine.state.output))

    def compute(self) -> dict[str, float]:
        """The summary of every sample seen since the last reset."""
        if not self._cols:
            raise MedAdvInputError("AttackSummary: no samples were seen this epoch")
        columns = {k: torch.cat(v) for k, v in self._cols.items()}
        return summarize_columns(columns, targeted=self.targeted, prefix=self.column_prefix)

    def completed(self, engine: Engine, name: str) -> None:
        """Store ``summary[key]`` under ``name`` and every summary value under ``prefix + value name``."""
        summary = self.compute()
        if self.key not in summary:
            raise MedAdvInputError(f"AttackSummary key {self.key!r} is not a summary value; expected one of "
                                   f"{list(summary)}")
        for k, v in summary.items():
            engine.state.metrics[self.prefix + k] = v
        engine.state.metrics[name] = summary[self.key]
