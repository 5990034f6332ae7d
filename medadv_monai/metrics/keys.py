"""The names of the per-sample columns and summary values, defined once for every engine, table and report."""

from __future__ import annotations

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
]

#: which slice a row is about
SAMPLE_ID_KEYS: tuple[str, ...] = ("subject", "slice_index")
#: the true class; the target of a targeted attack (-1 when untargeted)
LABEL_KEY, TARGET_KEY = "label", "target"
#: the model's outputs on the clean and the adversarial input
PREDICTION_KEYS: tuple[str, ...] = ("clean_prob", "adv_prob", "clean_pred", "adv_pred")
#: per-sample outcomes (bool)
OUTCOME_KEYS: tuple[str, ...] = ("clean_correct", "adv_correct", "attackable", "success")
#: per-sample perturbation metrics (float); the summary has ``mean_<key>`` of each; ``kspace_energy``, ``field_lo``
#: and ``field_hi`` measure the MRI-physics attacks (:mod:`medadv_monai.metrics.core`) but are computed for every attack
PERTURBATION_KEYS: tuple[str, ...] = ("l0", "l2", "linf", "tv", "ssim", "coverage", "area", "kspace_energy", "field_lo",
                                      "field_hi")
#: what :func:`~medadv_monai.metrics.score_attack` returns
SCORE_KEYS: tuple[str, ...] = PREDICTION_KEYS + OUTCOME_KEYS + PERTURBATION_KEYS
#: the columns a reference attack adds with its name as prefix (``pgd10_success``); clean predictions, outcomes
#: and mask statistics are shared with the main attack
REFERENCE_KEYS: tuple[str, ...] = ("adv_prob", "adv_pred", "adv_correct", "success", "linf", "l2", "ssim", "l0", "tv",
                                   "kspace_energy", "field_lo", "field_hi")
#: the columns of a summary table, in order (cell columns, then :func:`~medadv_monai.metrics.summarize`'s values)
SUMMARY_COLUMNS: tuple[str, ...] = (
    "cell", "attack", "budget", "eps", "eps_255", "mask", "targeted", "grad_evals", "queries", "n", "n_attackable",
    "n_asr", "n_targeted",
    *(f"{rate}{end}" for rate in ("clean_acc", "robust_acc", "asr") for end in ("", "_lo", "_hi")), "asr_all",
    "targeted_success", "targeted_success_lo", "targeted_success_hi", *(f"mean_{k}" for k in PERTURBATION_KEYS))
