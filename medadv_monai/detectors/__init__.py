"""Feature-space detectors of adversarial inputs and their metrics.

Every detector has ``fit(...)`` on clean training data and ``score(...) -> (N,)`` float64 numpy array, higher = more
adversarial:

=====================================  ==============================  ============================================
detector                               fit on                          score of
=====================================  ==============================  ============================================
:class:`KernelDensityDetector`         last-layer features, labels     features, predicted classes (Feinman 2017)
:class:`BayesianUncertaintyDetector`   nothing (MC dropout)            inputs (Feinman et al. 2017)
:class:`LIDDetector`                   ``{layer: features}`` pool      ``{layer: features}`` (Ma et al. 2018)
:class:`MahalanobisDetector`           inputs, labels (or features)    inputs (Lee et al. 2018)
=====================================  ==============================  ============================================

LID and Mahalanobis over several layers, and KD with BU (:class:`KDBUCombiner`), are combined by a logistic
regression (:mod:`~medadv_monai.detectors.combine`) fitted with ``fit_combiner`` on a detector-fitting set of clean
and noisy (:func:`uniform_noise` at the attack's eps) negatives and adversarial positives (:func:`detection_set`).
Features come from :func:`extract_features` (forward hooks, global average pooling per channel);
:func:`roc_auc` and :func:`tpr_at_tnr` score a detector.
"""

from __future__ import annotations

from medadv_monai.detectors.bu import BayesianUncertaintyDetector, bu_unavailable, mc_dropout_mode
from medadv_monai.detectors.combine import KDBUCombiner, LogisticCombiner
from medadv_monai.detectors.features import (
    FeatureRecorder,
    extract_features,
    extract_features_and_outputs,
    features_with_grad,
    global_average_pool,
    hooked_features,
    resolve_layers,
)
from medadv_monai.detectors.kd import BANDWIDTH_GRID, KernelDensityDetector
from medadv_monai.detectors.lid import LIDDetector, lid_mle
from medadv_monai.detectors.mahalanobis import MahalanobisDetector, tied_gaussian
from medadv_monai.detectors.scores import detection_metrics, detection_set, roc_auc, tpr_at_tnr, uniform_noise

__all__ = [
    "BANDWIDTH_GRID",
    "BayesianUncertaintyDetector",
    "FeatureRecorder",
    "KDBUCombiner",
    "KernelDensityDetector",
    "LIDDetector",
    "LogisticCombiner",
    "MahalanobisDetector",
    "bu_unavailable",
    "detection_metrics",
    "detection_set",
    "extract_features",
    "extract_features_and_outputs",
    "features_with_grad",
    "global_average_pool",
    "hooked_features",
    "lid_mle",
    "mc_dropout_mode",
    "resolve_layers",
    "roc_auc",
    "tied_gaussian",
    "tpr_at_tnr",
    "uniform_noise",
]
