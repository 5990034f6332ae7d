"""Kernel density (KD) detector of Feinman et al. 2017, "Detecting adversarial samples from artifacts".

Per class :math:`c`, a Gaussian kernel density on the last-layer features :math:`X_c` of the clean training samples
of class :math:`c` (``sklearn.neighbors.KernelDensity``):

.. math::
    \\hat p_c(f) = \\frac{1}{|X_c|} \\sum_{x \\in X_c} (2\\pi h^2)^{-D/2}
        \\exp\\Big(-\\frac{\\lVert f - x \\rVert^2}{2 h^2}\\Big),
    \\qquad \\mathrm{score}(f) = -\\log \\hat p_{\\hat y}(f)

with :math:`\\hat y` the model's *predicted* class of the sample: an adversarial sample is predicted as a class
whose clean features lie far from its own, so its density is low and its score high (higher = more adversarial).

The bandwidth :math:`h` is chosen on a validation set of **clean** samples from a small grid: the :math:`h` that
maximises their mean log-likelihood :math:`\\frac1n \\sum_i \\log \\hat p_{y_i}(f_i)` under the density of their
(true) class. This needs no adversarial samples, so it cannot overfit an attack.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
from sklearn.neighbors import KernelDensity

from medadv_monai.detectors._common import as_labels, as_matrix
from medadv_monai.errors import MedAdvInputError
from medadv_monai.utils.checks import check_positive

__all__ = ["BANDWIDTH_GRID", "KernelDensityDetector"]

BANDWIDTH_GRID: tuple[float, ...] = (0.01, 0.03, 0.1, 0.3, 1.0, 3.0, 10.0)
"""The default grid of bandwidths (feature units). Feinman et al. fixed :math:`h` per data set (0.26 for CIFAR-10)."""


class KernelDensityDetector:
    """KD detector on last-layer features (see the module docstring for the formula and the bandwidth rule).

    Args:
        bandwidths: one bandwidth, or a grid to choose from with :meth:`fit`'s validation set.

    Attributes:
        bandwidth_: the bandwidth in use (after :meth:`fit`).
        val_log_likelihood_: ``{h: mean validation log-likelihood}`` over the grid (when one was searched).

    Example:
        >>> feats, logits = extract_features_and_outputs(model, x_train, ["fc1"])  # doctest: +SKIP
        >>> kd = KernelDensityDetector().fit(feats["fc1"], y_train, val_feats, y_val)  # doctest: +SKIP
        >>> s = kd.score(test_feats, test_logits.argmax(1))  # doctest: +SKIP
    """

    def __init__(self, bandwidths: float | Sequence[float] = BANDWIDTH_GRID) -> None:
        grid = [bandwidths] if isinstance(bandwidths, (int, float)) else list(bandwidths)
        if not grid:
            raise MedAdvInputError("bandwidths must hold at least one value > 0, got an empty grid")
        self.bandwidths = [check_positive(h, "KD bandwidth") for h in grid]
        self.bandwidth_: float | None = None
        self.val_log_likelihood_: dict[float, float] = {}
        self._train: dict[int, np.ndarray] = {}
        self._kdes: dict[int, KernelDensity] = {}

    def fit(self, features: Any, labels: Any, val_features: Any = None, val_labels: Any = None
            ) -> KernelDensityDetector:
        """One density per class of ``labels`` on ``features`` ``(N, D)``; with a grid, the bandwidth is the one
        that maximises the mean log-likelihood of the clean ``val_features`` (their true ``val_labels``).

        Raises:
            MedAdvInputError: bad shapes or labels; a grid of several bandwidths without a validation set; a
                validation class with no training sample.
        """
        f = as_matrix(features, "KD training features").numpy()
        y = as_labels(labels, f.shape[0], "KD training labels")
        self._train = {int(c): f[y == c] for c in np.unique(y)}
        self.val_log_likelihood_ = {}
        if len(self.bandwidths) == 1:
            self._kdes = self._densities(self.bandwidths[0])
            self.bandwidth_ = self.bandwidths[0]
            return self
        if val_features is None or val_labels is None:
            raise MedAdvInputError(f"a bandwidth grid {self.bandwidths} needs clean val_features and val_labels to "
                                   f"choose from; pass them, or a single bandwidth")
        fv = as_matrix(val_features, "KD validation features")
        if fv.shape[1] != f.shape[1]:
            raise MedAdvInputError(f"KD validation features have {fv.shape[1]} columns, training features {f.shape[1]}")
        yv = as_labels(val_labels, fv.shape[0], "KD validation labels")
        best = None
        for h in self.bandwidths:
            kdes = self._densities(h)
            ll = float(np.mean(self._log_density(kdes, fv.numpy(), yv, "validation label")))
            self.val_log_likelihood_[h] = ll
            if best is None or ll > best[0]:
                best = (ll, h, kdes)
        _, self.bandwidth_, self._kdes = best  # type: ignore[misc]
        return self

    def score(self, features: Any, predicted: Any) -> np.ndarray:
        """``(N,)`` float64 :math:`-\\log \\hat p_{\\hat y}(f)` for features ``(N, D)`` and predicted classes
        ``(N,)``; higher = more adversarial.

        Raises:
            MedAdvInputError: a predicted class with no training sample (it has no density).
        """
        if not self._kdes:
            raise MedAdvInputError("KernelDensityDetector.score before fit")
        f = as_matrix(features, "KD features").numpy()
        dim = next(iter(self._train.values())).shape[1]
        if f.shape[1] != dim:
            raise MedAdvInputError(f"KD features have {f.shape[1]} columns; the detector was fitted on {dim}")
        return -self._log_density(self._kdes, f, as_labels(predicted, f.shape[0], "predicted classes"),
                                  "predicted class")

    def _densities(self, h: float) -> dict[int, KernelDensity]:
        return {c: KernelDensity(kernel="gaussian", bandwidth=h).fit(fc) for c, fc in self._train.items()}

    def _log_density(self, kdes: dict[int, KernelDensity], f: np.ndarray, classes: np.ndarray, what: str
                     ) -> np.ndarray:
        unknown = sorted(set(np.unique(classes).tolist()) - set(kdes))
        if unknown:
            raise MedAdvInputError(f"{what} {unknown[0]} has no clean training sample, so no density; the KD "
                                   f"densities exist for classes {sorted(kdes)}")
        out = np.empty(len(f), dtype=np.float64)
        for c in np.unique(classes):
            rows = classes == c
            out[rows] = kdes[int(c)].score_samples(f[rows])
        return out
