"""Detection metrics, the detection set (clean and noisy negatives, adversarial positives) and its noisy inputs.

Every detector's score is "higher = more adversarial"; a sample is flagged when its score :math:`s \\ge t`.
With :math:`P` positives (adversarial) and :math:`Q` negatives (clean and noisy):

.. math::
    \\mathrm{TPR}(t) = \\frac{|\\{p : s_p \\ge t\\}|}{P}, \\qquad
    \\mathrm{TNR}(t) = \\frac{|\\{q : s_q < t\\}|}{Q}, \\qquad
    \\mathrm{TPR@TNR}_{\\tau} = \\max \\{\\mathrm{TPR}(t) : \\mathrm{TNR}(t) \\ge \\tau\\}

over the thresholds :math:`t \\in \\{s_i\\} \\cup \\{+\\infty\\}`. TPR falls and TNR rises as :math:`t` rises, so the
maximum is the TPR at the *smallest* threshold whose TNR is still :math:`\\ge \\tau` (:math:`\\tau = 0.9`: "TPR at
90% TNR" of Lee et al. 2018 and Ma et al. 2018). ROC AUC is :math:`P(s_p > s_q) + \\tfrac12 P(s_p = s_q)`
(``sklearn.metrics.roc_auc_score``).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from sklearn.metrics import roc_auc_score

from medadv_monai.attacks._core import check_budget
from medadv_monai.attacks.checks import check_generator
from medadv_monai.detectors._common import as_binary, as_vector
from medadv_monai.errors import MedAdvInputError

__all__ = ["detection_metrics", "detection_set", "roc_auc", "tpr_at_tnr", "uniform_noise"]


def roc_auc(labels: Any, scores: Any) -> float:
    """ROC AUC of ``scores`` (higher = adversarial) for ``labels`` (1 = adversarial, 0 = clean or noisy)."""
    s = as_vector(scores, "scores")
    return float(roc_auc_score(as_binary(labels, len(s), "labels"), s))


def tpr_at_tnr(labels: Any, scores: Any, tnr: float = 0.9) -> float:
    """The largest TPR over the thresholds whose TNR is at least ``tnr`` (the module docstring's definition).

    Exact in counts: TNR :math:`\\ge \\tau` is :math:`|\\{q : s_q < t\\}| \\ge \\lceil \\tau Q \\rceil`, so
    :math:`\\tau Q` landing on an integer is not lost to rounding.
    """
    if isinstance(tnr, bool) or not isinstance(tnr, (int, float)) or not 0.0 <= tnr <= 1.0:
        raise MedAdvInputError(f"tnr must be a number in [0, 1], got {tnr!r}")
    s = as_vector(scores, "scores")
    y = as_binary(labels, len(s), "labels")
    neg, pos = np.sort(s[y == 0]), np.sort(s[y == 1])
    thresholds = np.append(np.unique(s), np.inf)
    tn = np.searchsorted(neg, thresholds, side="left")  # negatives with s < t
    tp = len(pos) - np.searchsorted(pos, thresholds, side="left")  # positives with s >= t
    need = math.ceil(tnr * len(neg) - 1e-9)
    return float(tp[tn >= need].max() / len(pos))


def detection_metrics(labels: Any, scores: Any, tnr: float = 0.9) -> dict[str, float]:
    """``{"auc": ROC AUC, "tpr_at_tnr": TPR at TNR >= tnr}``."""
    return {"auc": roc_auc(labels, scores), "tpr_at_tnr": tpr_at_tnr(labels, scores, tnr)}


def detection_set(negatives: Any | Sequence[Any], positives: Any | Sequence[Any]) -> tuple[np.ndarray, np.ndarray]:
    """``(labels, scores)`` of a detection experiment: 0 for every negative score, 1 for every positive one.

    Args:
        negatives: scores of the clean and the noisy samples (one 1-D array, or a list of them: e.g.
            ``[score(clean), score(noisy)]``, the noisy ones from :func:`uniform_noise` at the attack's eps).
        positives: scores of the adversarial samples (one 1-D array or a list of them).

    Returns:
        ``labels`` (int64, negatives first) and ``scores`` (float64), both 1-D.
    """
    def stack(parts: Any, what: str) -> np.ndarray:
        if isinstance(parts, (list, tuple)):
            arrays = [as_vector(p, f"{what}[{i}]") for i, p in enumerate(parts)]
            v = np.concatenate(arrays) if arrays else np.zeros(0)
        else:
            v = as_vector(parts, what)
        if len(v) == 0:
            raise MedAdvInputError(f"{what} must hold at least one score, got none")
        return v

    neg, pos = stack(negatives, "negatives"), stack(positives, "positives")
    labels = np.concatenate([np.zeros(len(neg), np.int64), np.ones(len(pos), np.int64)])
    return labels, np.concatenate([neg, pos])


def uniform_noise(x: torch.Tensor, eps: float, generator: torch.Generator | None = None) -> torch.Tensor:
    """The noisy negatives: :math:`\\mathrm{clip}(x + u, 0, 1)`, :math:`u \\sim U(-\\epsilon, \\epsilon)` per voxel,
    with the attack's :math:`\\epsilon` (same L-inf budget as the adversarial samples, no adversarial direction)."""
    x, budget = check_budget(x, eps, None)
    check_generator(generator)
    dev = generator.device if generator is not None else x.device
    u = torch.rand(x.shape, generator=generator, device=dev, dtype=x.dtype).to(x.device) * 2.0 - 1.0
    return torch.clamp(x + u * budget, 0.0, 1.0)
