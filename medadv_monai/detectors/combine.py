"""Logistic-regression combination of several scores into one detector score.

Given per-sample score columns :math:`z \\in \\mathbb{R}^{F}` (the per-layer scores of LID or Mahalanobis, or KD's
density score and BU's uncertainty), each column is standardised on the detector-fitting set and a logistic
regression (``sklearn.linear_model.LogisticRegression``, L2, ``C = 1``) is fitted to the labels
(1 = adversarial, 0 = clean or noisy):

.. math::
    \\mathrm{score}(z) = w^\\top \\frac{z - m}{s} + b = \\log \\frac{P(\\text{adv} \\mid z)}{1 - P(\\text{adv} \\mid z)}

the log-odds (``decision_function``), which ranks as the probability but does not saturate to ties at 0 or 1.
This is the combination of Feinman et al. 2017 (KD + BU), Ma et al. 2018 (LID over layers) and Lee et al. 2018
(Mahalanobis over layers).
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from sklearn.linear_model import LogisticRegression
from sklearn.pipeline import Pipeline, make_pipeline
from sklearn.preprocessing import StandardScaler

from medadv_monai.detectors._common import as_binary, as_matrix, as_vector
from medadv_monai.errors import MedAdvInputError

__all__ = ["KDBUCombiner", "LogisticCombiner"]


class LogisticCombiner:
    """Standardisation and logistic regression over score columns; :meth:`score` is the log-odds of adversarial.

    Example:
        >>> comb = LogisticCombiner().fit(layer_scores_fit, is_adv_fit)  # doctest: +SKIP
        >>> s = comb.score(layer_scores_test)  # (N,), higher = more adversarial  # doctest: +SKIP
    """

    def __init__(self) -> None:
        self.pipeline: Pipeline | None = None
        self.n_features: int | None = None

    def fit(self, scores: Any, is_adversarial: Any) -> LogisticCombiner:
        """Fit on ``scores`` ``(N, F)`` (or ``(N,)``) and 0/1 labels ``(N,)`` with both classes present."""
        z = self._columns(scores, fitting=True)
        y = as_binary(is_adversarial, z.shape[0])
        self.pipeline = make_pipeline(StandardScaler(), LogisticRegression()).fit(z, y)
        return self

    def score(self, scores: Any) -> np.ndarray:
        """``(N,)`` float64 log-odds of adversarial for ``scores`` ``(N, F)`` with the fitted ``F``."""
        if self.pipeline is None:
            raise MedAdvInputError("LogisticCombiner.score before fit: fit it on a detector-fitting set first")
        return np.asarray(self.pipeline.decision_function(self._columns(scores)), dtype=np.float64)

    @property
    def coefficients(self) -> np.ndarray:
        """The weights :math:`w` on the standardised columns (``(F,)``)."""
        if self.pipeline is None:
            raise MedAdvInputError("LogisticCombiner has no coefficients before fit")
        return self.pipeline[-1].coef_[0].copy()

    def _columns(self, scores: Any, fitting: bool = False) -> np.ndarray:
        if isinstance(scores, (torch.Tensor, np.ndarray)) and scores.ndim == 1:
            scores = scores.reshape(-1, 1)
        z = as_matrix(scores, "scores").numpy()
        if fitting:
            self.n_features = z.shape[1]
        elif z.shape[1] != self.n_features:
            raise MedAdvInputError(f"scores have {z.shape[1]} columns; the combiner was fitted on {self.n_features}")
        return z


class KDBUCombiner(LogisticCombiner):
    """Feinman et al. 2017's detector: a logistic regression on the pair (KD score, BU score).

    ``kd`` from :class:`~medadv_monai.detectors.kd.KernelDensityDetector`, ``bu`` from
    :class:`~medadv_monai.detectors.bu.BayesianUncertaintyDetector`, each ``(N,)`` for the same samples.
    """

    def fit(self, kd: Any, bu: Any, is_adversarial: Any) -> KDBUCombiner:  # type: ignore[override]
        super().fit(self._pair(kd, bu), is_adversarial)
        return self

    def score(self, kd: Any, bu: Any) -> np.ndarray:  # type: ignore[override]
        return super().score(self._pair(kd, bu))

    @staticmethod
    def _pair(kd: Any, bu: Any) -> np.ndarray:
        k = as_vector(kd, "kd scores")
        return np.stack([k, as_vector(bu, "bu scores", len(k))], axis=1)
