"""Robustness and perturbation metrics: per-sample values, outcomes, summaries and ASR by coverage; the column
keys (:mod:`medadv_monai.metrics.keys`)."""

from __future__ import annotations

from medadv_monai.metrics.core import (
    coverage_bins,
    label_probability,
    mask_attackable_samples,
    perturbation_metrics,
    prediction,
    sample_outcomes,
    score_attack,
    ssim,
    summarize,
    summarize_columns,
    total_variation,
    wilson_interval,
    youden_threshold,
)
from medadv_monai.metrics.keys import (
    LABEL_KEY,
    OUTCOME_KEYS,
    PERTURBATION_KEYS,
    PREDICTION_KEYS,
    REFERENCE_KEYS,
    SAMPLE_ID_KEYS,
    SCORE_KEYS,
    SUMMARY_COLUMNS,
    TARGET_KEY,
)

__all__ = [
    "LABEL_KEY",
    "OUTCOME_KEYS",
    "PERTURBATION_KEYS",
    "PREDICTION_KEYS",
    "REFERENCE_KEYS",
    "SAMPLE_ID_KEYS",
    "SCORE_KEYS",
    "SUMMARY_COLUMNS",
    "TARGET_KEY",
    "coverage_bins",
    "label_probability",
    "mask_attackable_samples",
    "perturbation_metrics",
    "prediction",
    "sample_outcomes",
    "score_attack",
    "ssim",
    "summarize",
    "summarize_columns",
    "total_variation",
    "wilson_interval",
    "youden_threshold",
]
