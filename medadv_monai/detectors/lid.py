"""Local intrinsic dimensionality (LID) detector of Ma et al. 2018, "Characterizing adversarial subspaces using local
intrinsic dimensionality".

Per layer, the maximum-likelihood estimate of a point's LID from its :math:`k` nearest neighbours in a clean
reference minibatch :math:`B` (Euclidean distances :math:`d_1 \\le \\dots \\le d_k`):

.. math::
    \\widehat{\\mathrm{LID}}(x) = -\\Big(\\frac1k \\sum_{i=1}^{k} \\log \\frac{d_i(x)}{d_k(x)}\\Big)^{-1}
                               = \\frac{-k}{\\sum_{i \\le k} \\log (d_i / d_k)}

with :math:`k = 20` and :math:`|B| = 100` as in the paper. A point that belongs to :math:`B` is not its own
neighbour: a first distance of exactly 0 is taken as the point itself and skipped (a duplicate of the point in
:math:`B` counts as the point once). Zero distances that remain (further duplicates) would make a log infinite:
distances are clamped to at least ``1e-12`` and the denominator to at most ``-1e-12``, so a degenerate
neighbourhood gives a very large but finite LID instead of a silent inf/nan. Adversarial samples lie off the data
submanifold and have higher LIDs than clean or noisy ones; the per-layer LIDs are combined by the logistic
regression of :mod:`~medadv_monai.detectors.combine` (higher = more adversarial).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import torch

from medadv_monai.detectors._common import as_binary, as_layer_matrices, as_matrix, numpy
from medadv_monai.detectors.combine import LogisticCombiner
from medadv_monai.errors import MedAdvInputError
from medadv_monai.utils.checks import check_int

__all__ = ["LIDDetector", "lid_mle"]

_TINY = 1e-12


def lid_mle(points: Any, reference: Any, k: int = 20) -> torch.Tensor:
    """``(N,)`` float64 MLE of the LID of each row of ``points`` ``(N, D)`` w.r.t. ``reference`` ``(M, D)``.

    Raises:
        MedAdvInputError: ``k < 1`` or ``k >= M`` (a point of the reference needs ``k`` other neighbours).
    """
    x, ref = as_matrix(points, "LID points"), as_matrix(reference, "LID reference")
    k = check_int(k, "LID k", 1)
    if k >= ref.shape[0]:
        raise MedAdvInputError(f"LID k = {k} must be < the reference minibatch size, got {ref.shape[0]} reference "
                               f"points")
    if x.shape[1] != ref.shape[1]:
        raise MedAdvInputError(f"LID points have {x.shape[1]} features, the reference {ref.shape[1]}")
    d = torch.cdist(x, ref, compute_mode="donot_use_mm_for_euclid_dist")  # exact: a point's distance to itself is 0
    d = torch.topk(d, k + 1, dim=1, largest=False).values  # ascending
    own = d[:, :1] == 0  # the point itself: skip its zero distance
    d = torch.where(own, d[:, 1:], d[:, :k]).clamp_min(_TINY)
    total = torch.log(d / d[:, -1:]).sum(1)
    return -k / total.clamp_max(-_TINY)


class LIDDetector:
    """LID features per layer against clean reference minibatches, combined over layers by logistic regression.

    :meth:`fit` keeps a pool of clean reference features and draws ``n_references`` reference minibatches of
    ``reference_size`` pool rows from it, once (the same rows in every layer, from a generator seeded with
    ``seed``). :meth:`layer_scores` estimates each sample's LID against every one of them and averages: a sample's
    score depends on the sample and the fitted pool only, never on its batch-mates or its position among the
    queries (so a slice's clean, noisy and adversarial versions meet the same references). Queries that are rows of
    a minibatch are skipped as their own neighbour (:func:`lid_mle`).

    Args:
        k: neighbours per estimate (``1 <= k < reference_size``).
        reference_size: size of a reference minibatch.
        n_references: reference minibatches drawn at :meth:`fit`; a sample's LID is the mean over them.
        seed: seed of the minibatch draws.

    Example:
        >>> lid = LIDDetector().fit(extract_features(model, x_clean_pool, layers))  # doctest: +SKIP
        >>> lid.fit_combiner(feats_fit, is_adv_fit)  # clean, noisy and adversarial features  # doctest: +SKIP
        >>> s = lid.score(feats_test)  # doctest: +SKIP
    """

    def __init__(self, k: int = 20, reference_size: int = 100, seed: int = 0, n_references: int = 5) -> None:
        self.k = check_int(k, "LID k", 1)
        self.reference_size = check_int(reference_size, "LID reference_size", 2)
        if self.k >= self.reference_size:
            raise MedAdvInputError(f"LID k = {self.k} must be < reference_size = {self.reference_size}")
        self.seed = check_int(seed, "LID seed", 0)
        self.n_references = check_int(n_references, "LID n_references", 1)
        self.layers: list[str] = []
        self._pool: dict[str, torch.Tensor] = {}
        self._minibatches: list[torch.Tensor] = []
        self.combiner: LogisticCombiner | None = None

    def fit(self, reference: Mapping[str, Any], layers: Sequence[str] | None = None) -> LIDDetector:
        """Keep ``{layer: (M, D_l)}`` clean features as the reference pool (``M >= reference_size``)."""
        pool = as_layer_matrices(reference, layers, "LID reference features")
        m = next(iter(pool.values())).shape[0]
        if m < self.reference_size:
            raise MedAdvInputError(f"the LID reference pool has {m} samples; expected at least reference_size = "
                                   f"{self.reference_size}")
        self.layers, self._pool, self.combiner = list(pool), pool, None
        g = torch.Generator().manual_seed(self.seed)
        self._minibatches = [torch.randperm(m, generator=g)[: self.reference_size] for _ in range(self.n_references)]
        return self

    def layer_scores(self, features: Mapping[str, Any]) -> np.ndarray:
        """``(N, L)`` float64 LID per sample and layer (columns in the order of :attr:`layers`)."""
        if not self._pool:
            raise MedAdvInputError("LIDDetector.layer_scores before fit")
        feats = as_layer_matrices(features, self.layers, "LID features")
        n = next(iter(feats.values())).shape[0]
        out = torch.zeros(n, len(self.layers), dtype=torch.float64)
        for j, name in enumerate(self.layers):
            for rows in self._minibatches:
                out[:, j] += lid_mle(feats[name], self._pool[name][rows], self.k)
        out /= len(self._minibatches)
        return numpy(out)

    def fit_combiner(self, features: Mapping[str, Any], is_adversarial: Any) -> LIDDetector:
        """Fit the logistic regression over layers on a detector-fitting set (1 = adversarial, 0 = clean/noisy)."""
        z = self.layer_scores(features)
        self.combiner = LogisticCombiner().fit(z, as_binary(is_adversarial, z.shape[0]))
        return self

    def score(self, features: Mapping[str, Any]) -> np.ndarray:
        """``(N,)`` float64, higher = more adversarial: the combiner's log-odds, or the LID itself for one layer
        without a combiner.

        Raises:
            MedAdvInputError: several layers and no :meth:`fit_combiner` yet.
        """
        z = self.layer_scores(features)
        if self.combiner is not None:
            return self.combiner.score(z)
        if z.shape[1] == 1:
            return z[:, 0]
        raise MedAdvInputError(f"LID over {len(self.layers)} layers needs fit_combiner (a logistic regression on a "
                               f"detector-fitting set) before score; or fit on a single layer")
