"""The five detectors of the detection benchmark fitted together on one classifier, and the score columns they share.

:class:`DetectorSuite` holds KD (Feinman et al. 2017), BU (MC dropout, Feinman et al. 2017), LID (Ma et al. 2018),
Mahalanobis (Lee et al. 2018) and KD + BU, in three steps:

1. :meth:`DetectorSuite.fit`: the detectors' statistics on clean features of training slices (KD: one Gaussian
   density per true class on the features of ``kd_layer``, bandwidth chosen on the clean validation slices;
   Mahalanobis: class means and the tied covariance per layer; LID: the clean reference pool).
2. :meth:`DetectorSuite.columns`: the raw score columns of a set of slices, :class:`ScoreColumns`: KD's
   :math:`-\\log \\hat p_{\\hat y}(f)` at the predicted class, BU's MC-dropout variance, one LID and one
   Mahalanobis confidence :math:`M_l` per layer.
3. :meth:`DetectorSuite.fit_combiners` on the columns of negatives (clean and noisy) and positives (adversarial):
   the logistic regressions over LID's layers, Mahalanobis' layers and (KD, BU); then :meth:`DetectorSuite.scores`
   gives each detector's score (higher = more adversarial).

Columns are computed once per set of slices and subset by rows (:meth:`ScoreColumns.take`), so the clean slices are
scored once for every eps and attack. BU is *not applicable* to a classifier without dropout (or only ``p = 0``):
its score and KD + BU's are then ``None`` and :attr:`DetectorSuite.bu_reason` says why.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from medadv_monai.detectors import (
    BayesianUncertaintyDetector,
    KDBUCombiner,
    KernelDensityDetector,
    LIDDetector,
    LogisticCombiner,
    MahalanobisDetector,
    bu_unavailable,
)
from medadv_monai.errors import MedAdvInputError
from medadv_monai.metrics import prediction

__all__ = ["DETECTORS", "DetectorSuite", "ScoreColumns"]

DETECTORS: tuple[str, ...] = ("KD", "BU", "LID", "Mahalanobis", "KD+BU")
"""The detectors, in the order of every table."""


@dataclass
class ScoreColumns:
    """Raw detector columns of ``N`` slices: ``kd`` ``(N,)``, ``bu`` ``(N,)`` (``None``: BU not applicable),
    ``lid`` ``(N, L)`` and ``maha`` ``(N, L)`` (confidences, higher = closer to a clean class)."""

    kd: np.ndarray
    bu: np.ndarray | None
    lid: np.ndarray
    maha: np.ndarray

    def take(self, rows: np.ndarray) -> ScoreColumns:
        """The columns of ``rows`` (indices or a boolean mask)."""
        return ScoreColumns(self.kd[rows], None if self.bu is None else self.bu[rows], self.lid[rows],
                            self.maha[rows])

    @staticmethod
    def stack(parts: Sequence[ScoreColumns]) -> ScoreColumns:
        """Rows of ``parts`` one after the other."""
        bu = None if any(p.bu is None for p in parts) else np.concatenate([p.bu for p in parts])
        return ScoreColumns(np.concatenate([p.kd for p in parts]), bu, np.concatenate([p.lid for p in parts]),
                            np.concatenate([p.maha for p in parts]))

    def __len__(self) -> int:
        return len(self.kd)


class DetectorSuite:
    """KD, BU, LID, Mahalanobis and KD + BU on the features of ``layers`` of ``model`` (module docstring).

    Args:
        model: the frozen classifier (eval mode), ``(N, 1)`` or ``(N, K)`` logits.
        layers: the layers of LID and Mahalanobis (names of ``dict(model.named_modules())``).
        kd_layer: the layer of KD's densities (the last features before the classifier's head).
        bu_passes: MC-dropout passes of BU.
        lid_k, lid_batch: LID's neighbours and reference minibatch size.
        magnitude: Mahalanobis' input pre-processing step (0: none).
        batch_size: slices per forward pass.
        device: where the model runs.
        seed: seeds BU's dropout masks and LID's reference draws.
    """

    def __init__(self, model: nn.Module, layers: Sequence[str], kd_layer: str, *, bu_passes: int = 50,
                 lid_k: int = 20, lid_batch: int = 100, magnitude: float = 0.0, batch_size: int = 64,
                 device: torch.device | str = "cpu", seed: int = 0) -> None:
        self.model, self.layers, self.kd_layer = model, list(layers), kd_layer
        self.device = torch.device(device)
        self.kd = KernelDensityDetector()
        self.lid = LIDDetector(k=lid_k, reference_size=lid_batch, seed=seed)
        self.maha = MahalanobisDetector(model, self.layers, magnitude=magnitude, batch_size=batch_size)
        self.bu_reason = bu_unavailable(model)
        self.bu = None if self.bu_reason else BayesianUncertaintyDetector(model, passes=bu_passes, seed=seed,
                                                                          batch_size=batch_size)
        self.combiners: dict[str, LogisticCombiner] = {}

    def fit(self, features: Mapping[str, torch.Tensor], labels: torch.Tensor,
            val_features: Mapping[str, torch.Tensor], val_labels: torch.Tensor) -> DetectorSuite:
        """Fit the statistics on clean training features ``{layer: (N, C)}`` with their true ``labels``; KD's
        bandwidth on the clean validation features.

        Raises:
            MedAdvInputError: fewer training slices than LID's reference minibatch, a validation class with no
                training slice.
        """
        n = len(labels)
        if n < self.lid.reference_size:
            raise MedAdvInputError(f"LID's reference minibatch (lid_batch = {self.lid.reference_size}) needs at "
                                   f"least as many clean training slices for the detector statistics, got {n}; raise "
                                   f"max_fit_slices (or lower combiner_fraction), or lower lid_batch")
        self.kd.fit(features[self.kd_layer], labels, val_features[self.kd_layer], val_labels)
        self.maha.fit_features(features, labels)
        self.lid.fit(features, self.layers)
        self.combiners = {}
        return self

    def columns(self, x: torch.Tensor, features: Mapping[str, torch.Tensor], logits: torch.Tensor) -> ScoreColumns:
        """The raw columns of slices ``x`` (CPU) whose features and logits were extracted in the same passes."""
        predicted = prediction(logits)
        if self.maha.magnitude == 0:
            maha = self.maha.confidence_from_features(features)
        else:  # pre-processing needs the input gradient of each layer's score
            maha = self.maha.confidence(x.to(self.device))
        bu = None if self.bu is None else self.bu.score(x.to(self.device))
        return ScoreColumns(self.kd.score(features[self.kd_layer], predicted), bu, self.lid.layer_scores(features),
                            maha)

    def fit_combiners(self, negatives: ScoreColumns, positives: ScoreColumns) -> DetectorSuite:
        """The logistic regressions of LID, Mahalanobis and KD + BU on negatives (label 0) and positives (1)."""
        both = ScoreColumns.stack([negatives, positives])
        labels = np.r_[np.zeros(len(negatives)), np.ones(len(positives))]
        self.combiners = {"LID": LogisticCombiner().fit(both.lid, labels),
                          "Mahalanobis": LogisticCombiner().fit(both.maha, labels)}
        if both.bu is not None:
            self.combiners["KD+BU"] = KDBUCombiner().fit(both.kd, both.bu, labels)
        return self

    def scores(self, columns: ScoreColumns) -> dict[str, np.ndarray | None]:
        """Each detector's ``(N,)`` score, higher = more adversarial (``None`` where BU is not applicable).

        Raises:
            MedAdvInputError: before :meth:`fit_combiners`.
        """
        if not self.combiners:
            raise MedAdvInputError("DetectorSuite.scores before fit_combiners")
        kdbu = self.combiners.get("KD+BU")
        return {"KD": columns.kd, "BU": columns.bu, "LID": self.combiners["LID"].score(columns.lid),
                "Mahalanobis": self.combiners["Mahalanobis"].score(columns.maha),
                "KD+BU": None if kdbu is None else kdbu.score(columns.kd, columns.bu)}  # type: ignore[attr-defined]
