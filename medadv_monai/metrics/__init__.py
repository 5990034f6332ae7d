"""Robustness and perturbation metrics: per-sample values, outcomes, summaries and ASR by coverage."""

from __future__ import annotations

from medadv_monai.metrics.core import (
    OUTCOME_KEYS,
    PERTURBATION_KEYS,
    coverage_bins,
    label_probability,
    mask_attackable_samples,
    perturbation_metrics,
    prediction,
    sample_outcomes,
    score_attack,
    ssim,
    summarize,
    total_variation,
)

__all__ = [
    "OUTCOME_KEYS",
    "PERTURBATION_KEYS",
    "coverage_bins",
    "label_probability",
    "mask_attackable_samples",
    "perturbation_metrics",
    "prediction",
    "sample_outcomes",
    "score_attack",
    "ssim",
    "summarize",
    "total_variation",
]
