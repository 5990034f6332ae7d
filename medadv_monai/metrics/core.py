"""Robustness and perturbation metrics, per sample, and their summaries.

Per sample, on :math:`d = x' - x` (over all channels and voxels of the sample):

- ``l0``: fraction of voxels with :math:`d \\ne 0`;
- ``l2``: :math:`\\lVert d \\rVert_2`; ``linf``: :math:`\\max |d|`;
- ``tv``: anisotropic L1 total variation per voxel, :math:`\\frac{1}{|d|} \\sum_{a} \\sum |\\nabla_a d|` over the
  spatial axes :math:`a`;
- ``ssim``: SSIM of :math:`x'` against :math:`x` (MONAI's ``SSIMMetric``: Gaussian window 11, sigma 1.5,
  data range 1), averaged over channels;
- ``coverage``: :math:`\\sum m T / \\sum T` for the tumour :math:`T` (NaN without tumour); ``area``: mean of
  :math:`m`;
- ``kspace_energy``: :math:`\\lVert x' - x \\rVert_2 / \\lVert x \\rVert_2`, equal by Parseval to the relative
  energy :math:`\\lVert \\mathcal{F}(x') - \\mathcal{F}(x) \\rVert_2 / \\lVert \\mathcal{F}(x) \\rVert_2` of the
  realised k-space change (orthonormal FFT over the spatial axes; NaN when :math:`\\lVert x \\rVert_2 = 0`);
  the budget of :func:`~medadv_monai.attacks.kspace.kspace` bounds the nominal change, this is the one realised
  after the magnitude, the clip and the mask;
- ``field_lo``, ``field_hi``: min and max of :math:`x' / x` over the voxels :math:`\\{x > 0.01,\\ 0 < x' < 1\\}`
  (``FIELD_MIN_INTENSITY``): the realised multiplicative field where it is observable (not background, not
  clipped); NaN when no voxel qualifies. For a bias field of range :math:`[1 - \\epsilon, 1 + \\epsilon]` they lie
  in that range; unchanged voxels (outside a mask, or any clean image) give 1.

Outcomes and summaries (means over samples, never over batches):

- ``clean_acc``, ``robust_acc``: over all N samples;
- untargeted ``asr``: flipped / clean-correct, counting only attackable samples (mask not empty); ``asr_all``:
  flipped / all clean-correct samples (the reference code's definition);
- targeted ``targeted_success``: reached target / attackable samples whose label is not the target.

Each of these rates comes with its denominator (``n``, ``n_asr``, ``n_targeted``) and a 95% Wilson score interval
(``<rate>_lo``, ``<rate>_hi``; :func:`wilson_interval`), which stays inside [0, 1] and is sound for rates near 0 or 1
and for small counts, where the normal approximation is not.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import torch
from monai.metrics import SSIMMetric

from medadv_monai.masks import area as mask_area
from medadv_monai.masks import attackable as mask_attackable
from medadv_monai.masks import coverage as mask_coverage
from medadv_monai.metrics.keys import LABEL_KEY, OUTCOME_KEYS, PERTURBATION_KEYS, TARGET_KEY

__all__ = [
    "FIELD_MIN_INTENSITY",
    "coverage_bins",
    "field_extent",
    "label_probability",
    "score_attack",
    "mask_attackable_samples",
    "prediction",
    "perturbation_metrics",
    "sample_outcomes",
    "summarize",
    "summarize_columns",
    "total_variation",
    "ssim",
    "wilson_interval",
    "youden_threshold",
]

CONFIDENCE_Z = 1.959963984540054
"""The standard normal quantile of a two-sided 95% interval."""

FIELD_MIN_INTENSITY = 0.01
"""Clean intensities at or below it are background for ``field_lo`` / ``field_hi`` (:math:`x' / x` is undefined or
dominated by noise there)."""


def prediction(logits: torch.Tensor) -> torch.Tensor:
    """Predicted class ``(N,)``: ``logit > 0`` for a single-logit ``(N, 1)`` model, else the arg-max."""
    logits = torch.as_tensor(logits)
    if logits.ndim == 1 or logits.shape[1] == 1:
        return (logits.reshape(len(logits)) > 0).long()
    return logits.argmax(dim=1)


def total_variation(delta: torch.Tensor) -> torch.Tensor:
    """Anisotropic L1 total variation per voxel of each sample ``(N,)``: mean of summed absolute differences."""
    n = delta.shape[0]
    tv = torch.zeros(n, dtype=delta.dtype, device=delta.device)
    for axis in range(2, delta.ndim):
        tv = tv + delta.diff(dim=axis).abs().reshape(n, -1).sum(dim=1)
    return tv / delta[0].numel()


def ssim(x: torch.Tensor, x_adv: torch.Tensor) -> torch.Tensor:
    """SSIM of ``x_adv`` against ``x`` per sample ``(N,)`` (Gaussian window 11, sigma 1.5, data range 1)."""
    metric = SSIMMetric(spatial_dims=x.ndim - 2, data_range=1.0, kernel_type="gaussian", win_size=11,
                        kernel_sigma=1.5, reduction="none")
    values = metric(x_adv.float(), x.float())  # (N, C)
    return values.reshape(len(x), -1).mean(dim=1)


def field_extent(x: torch.Tensor, x_adv: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``(field_lo, field_hi)``, each ``(N,)``: min and max of :math:`x' / x` over the voxels with
    :math:`x >` :data:`FIELD_MIN_INTENSITY` and :math:`0 < x' < 1` (all channels), NaN where there is none."""
    n = x.shape[0]
    xs, xa = x.detach().float().reshape(n, -1), x_adv.detach().float().reshape(n, -1)
    seen = (xs > FIELD_MIN_INTENSITY) & (xa > 0) & (xa < 1)
    ratio = xa / xs.clamp_min(FIELD_MIN_INTENSITY)
    nan = torch.full((n,), math.nan, device=xs.device)
    lo = torch.where(seen, ratio, math.inf).amin(dim=1)
    hi = torch.where(seen, ratio, -math.inf).amax(dim=1)
    any_seen = seen.any(dim=1)
    return torch.where(any_seen, lo, nan), torch.where(any_seen, hi, nan)


def perturbation_metrics(
    x: torch.Tensor,
    x_adv: torch.Tensor,
    mask: torch.Tensor | None = None,
    tumour: torch.Tensor | None = None,
) -> dict[str, torch.Tensor]:
    """Per-sample perturbation metrics (see the module docstring), each an ``(N,)`` float tensor.

    Args:
        x: clean batch ``(N, C, *spatial)`` in [0, 1].
        x_adv: adversarial batch, same shape.
        mask: the attack mask ``(N or 1, 1 or C, *spatial)``; ``None`` means no mask (area 1).
        tumour: tumour mask ``(N, 1, *spatial)`` for coverage; ``None`` gives NaN coverage.
    """
    x, x_adv = x.detach().float(), x_adv.detach().float()
    n = x.shape[0]
    d = (x_adv - x).reshape(n, -1)
    nan = torch.full((n,), math.nan, device=x.device)
    x_norm = x.reshape(n, -1).norm(dim=1)
    field_lo, field_hi = field_extent(x, x_adv)
    m = None if mask is None else torch.as_tensor(mask, device=x.device).float().expand(n, *mask.shape[1:])
    out = {
        "l0": (d != 0).float().mean(dim=1),
        "l2": d.norm(dim=1),
        "linf": d.abs().amax(dim=1),
        "tv": total_variation(x_adv - x),
        "ssim": ssim(x, x_adv),
        "coverage": nan if m is None or tumour is None else mask_coverage(m, tumour.to(x.device).float()),
        "area": torch.ones(n, device=x.device) if m is None else mask_area(m),
        "kspace_energy": torch.where(x_norm > 0, d.norm(dim=1) / x_norm.clamp_min(torch.finfo(x.dtype).tiny), nan),
        "field_lo": field_lo,
        "field_hi": field_hi,
    }
    return {k: v.float() for k, v in out.items()}


def sample_outcomes(
    labels: torch.Tensor,
    clean_pred: torch.Tensor,
    adv_pred: torch.Tensor,
    attackable: torch.Tensor | None = None,
    targets: torch.Tensor | None = None,
) -> dict[str, torch.Tensor]:
    """Per-sample outcomes ``(N,)`` bool: ``clean_correct``, ``adv_correct``, ``attackable``, ``success``.

    Untargeted success: attackable, clean-correct and no longer correct. Targeted success (``targets`` given):
    attackable, label not the target, and the adversarial prediction is the target.
    """
    labels = torch.as_tensor(labels).reshape(-1).long()
    clean_pred = torch.as_tensor(clean_pred).reshape(-1).long().to(labels.device)
    adv_pred = torch.as_tensor(adv_pred).reshape(-1).long().to(labels.device)
    n = len(labels)
    ok = torch.ones(n, dtype=torch.bool, device=labels.device) if attackable is None else \
        torch.as_tensor(attackable).reshape(-1).bool().to(labels.device)
    clean_correct, adv_correct = clean_pred == labels, adv_pred == labels
    if targets is None:
        success = ok & clean_correct & ~adv_correct
    else:
        t = torch.as_tensor(targets).reshape(-1).long().to(labels.device)
        success = ok & (labels != t) & (adv_pred == t)
    return {"clean_correct": clean_correct, "adv_correct": adv_correct, "attackable": ok, "success": success}


def mask_attackable_samples(mask: torch.Tensor | None, n: int) -> torch.Tensor:
    """Attackable samples ``(N,)``: the attack mask is not empty (all samples without a mask)."""
    if mask is None:
        return torch.ones(n, dtype=torch.bool)
    return mask_attackable(torch.as_tensor(mask).expand(n, *mask.shape[1:]))


def _ratio(num: float, den: float) -> float:
    return num / den if den else math.nan


def wilson_interval(successes: float, n: float, z: float = CONFIDENCE_Z) -> tuple[float, float]:
    """The Wilson score interval of a binomial proportion ``successes / n`` (95% with the default ``z``).

    :math:`\\frac{\\hat p + z^2/2n \\pm z \\sqrt{\\hat p (1 - \\hat p)/n + z^2/4n^2}}{1 + z^2/n}`; ``(nan, nan)``
    when ``n`` is 0.
    """
    if n <= 0:
        return math.nan, math.nan
    p = successes / n
    centre = p + z * z / (2 * n)
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n))
    den = 1 + z * z / n
    # the interval holds p exactly (rounding can put a bound a hair past p = 0 or 1)
    return max(0.0, min(p, (centre - half) / den)), min(1.0, max(p, (centre + half) / den))


def _rate(out: dict[str, float], name: str, successes: float, n: float) -> None:
    """``out[name]`` = successes / n, with its Wilson interval as ``name_lo`` and ``name_hi``."""
    out[name] = _ratio(successes, n)
    out[f"{name}_lo"], out[f"{name}_hi"] = wilson_interval(successes, n)


def summarize(per_sample: Mapping[str, Any], targeted: bool = False) -> dict[str, float]:
    """Summary over samples of per-sample outcomes and metrics.

    Args:
        per_sample: the :data:`~medadv_monai.metrics.keys.OUTCOME_KEYS` (bool sequences) and, optionally, any of
            the :data:`~medadv_monai.metrics.keys.PERTURBATION_KEYS` and ``label`` / ``target`` (for targeted).
        targeted: summarise as a targeted attack (``targeted_success``) instead of ``asr`` / ``asr_all``.

    Returns:
        ``n``, ``n_attackable``, ``clean_acc``, ``robust_acc``, then ``asr`` and ``asr_all`` (untargeted) or
        ``targeted_success`` (targeted; needs ``label`` and ``target``), and ``mean_<k>`` for every perturbation
        metric given (NaN-ignoring; NaN when no value). ``clean_acc``, ``robust_acc``, ``asr`` and
        ``targeted_success`` come with their 95% Wilson interval (``_lo``, ``_hi``) and ``asr`` and
        ``targeted_success`` with their denominator (``n_asr``, ``n_targeted``).
    """
    col = {k: torch.as_tensor(per_sample[k]) for k in OUTCOME_KEYS}
    clean, adv = col["clean_correct"].bool(), col["adv_correct"].bool()
    ok, success = col["attackable"].bool(), col["success"].bool()
    n = len(clean)
    out: dict[str, float] = {"n": n, "n_attackable": int(ok.sum())}
    _rate(out, "clean_acc", float(clean.sum()), n)
    _rate(out, "robust_acc", float(adv.sum()), n)
    if targeted:
        labels = torch.as_tensor(per_sample[LABEL_KEY]).reshape(-1)
        targets = torch.as_tensor(per_sample[TARGET_KEY]).reshape(-1)
        out["n_targeted"] = int((ok & (labels != targets)).sum())
        _rate(out, "targeted_success", float(success.sum()), out["n_targeted"])
    else:
        out["n_asr"] = int((clean & ok).sum())
        _rate(out, "asr", float(success.sum()), out["n_asr"])
        out["asr_all"] = _ratio(float((clean & ~adv).sum()), float(clean.sum()))
    for key in PERTURBATION_KEYS:
        if key in per_sample:
            values = torch.as_tensor(per_sample[key], dtype=torch.float64)
            finite = values[~torch.isnan(values)]
            out[f"mean_{key}"] = float(finite.mean()) if len(finite) else math.nan
    return out


def summarize_columns(columns: Mapping[str, Any], targeted: bool = False, prefix: str = "") -> dict[str, float]:
    """:func:`summarize` of per-sample columns as the engines record them (``per_sample`` of an evaluator output).

    With ``prefix`` (a reference attack's, e.g. ``"pgd10_"``) the prefixed columns are read, falling back to the
    unprefixed ones for what every attack on the batch shares (clean outcomes, attackable, coverage, area).
    """
    pick = {k: columns[prefix + k] if prefix + k in columns else columns.get(k)
            for k in (*OUTCOME_KEYS, *PERTURBATION_KEYS, LABEL_KEY, TARGET_KEY)}
    return summarize({k: v for k, v in pick.items() if v is not None}, targeted=targeted)


def label_probability(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """``(N,)``: the tumour (positive-class) probability of a single-logit model; for an ``(N, K)`` model the
    probability of the labelled class."""
    if logits.shape[1] == 1:
        return torch.sigmoid(logits[:, 0].float())
    return logits.float().softmax(dim=1).gather(1, labels.reshape(-1, 1).long())[:, 0]


def score_attack(
    clean_logits: torch.Tensor,
    adv_logits: torch.Tensor,
    labels: torch.Tensor,
    x: torch.Tensor,
    x_adv: torch.Tensor,
    mask: torch.Tensor | None = None,
    tumour: torch.Tensor | None = None,
    targets: torch.Tensor | None = None,
) -> dict[str, torch.Tensor]:
    """Per-sample columns ``(N,)`` of one attacked batch: the one place every engine scores an attack.

    ``clean_prob`` and ``adv_prob`` (:func:`label_probability`), ``clean_pred`` and ``adv_pred``
    (:func:`prediction`), the outcomes of :func:`sample_outcomes` (a sample is attackable when its mask is not
    empty) and the metrics of :func:`perturbation_metrics`.
    """
    n = x.shape[0]
    y = torch.as_tensor(labels).reshape(n).long()
    clean_pred, adv_pred = prediction(clean_logits), prediction(adv_logits)
    attackable = mask_attackable_samples(mask, n).to(y.device)
    cols = {"clean_prob": label_probability(clean_logits, y), "adv_prob": label_probability(adv_logits, y),
            "clean_pred": clean_pred, "adv_pred": adv_pred}
    cols.update(sample_outcomes(y, clean_pred, adv_pred, attackable, targets))
    cols.update(perturbation_metrics(x, x_adv, mask, tumour))
    return {k: v.detach() for k, v in cols.items()}


def coverage_bins(
    coverage: Sequence[float] | torch.Tensor,
    success: Sequence[bool] | torch.Tensor,
    eligible: Sequence[bool] | torch.Tensor,
    edges: Sequence[float] = (0, 0.05, 0.1, 0.2, 0.3, 0.4, 0.5, 0.75, 1.0),
) -> list[dict[str, float]]:
    """ASR by coverage bin: for each ``[lo, hi)`` bin (the last one closed) the eligible samples (clean-correct
    and attackable, with a tumour) whose coverage falls in it (``n``), the share of them the attack flipped
    (``asr``) and its 95% Wilson interval (``asr_lo``, ``asr_hi``)."""
    cov = torch.as_tensor(coverage, dtype=torch.float64).reshape(-1)
    suc = torch.as_tensor(success).reshape(-1).bool()
    ok = torch.as_tensor(eligible).reshape(-1).bool() & ~torch.isnan(cov)
    rows = []
    for i, (lo, hi) in enumerate(zip(edges[:-1], edges[1:])):
        last = i == len(edges) - 2
        inside = ok & (cov >= lo) & ((cov <= hi) if last else (cov < hi))
        k = int(inside.sum())
        row = {"bin_lo": float(lo), "bin_hi": float(hi), "n": k}
        _rate(row, "asr", float((suc & inside).sum()), k)
        rows.append(row)
    return rows


def youden_threshold(scores: Sequence[float] | torch.Tensor, labels: Sequence[int] | torch.Tensor) -> float:
    """The decision threshold on ``scores`` that maximises Youden's J = sensitivity + specificity - 1.

    Candidates are the midpoints between consecutive distinct scores (a slice is positive when its score is above
    the threshold); among equally good ones the one closest to 0 (a logit of 0 is probability 0.5) is taken. With a
    single class present there is nothing to balance and the threshold is 0.

    Args:
        scores: ``(N,)`` scores, e.g. logits, higher meaning positive.
        labels: ``(N,)`` 0/1 labels.
    """
    z = torch.as_tensor(scores, dtype=torch.float64).reshape(-1)
    y = torch.as_tensor(labels).reshape(-1).bool()
    n_pos, n_neg = int(y.sum()), int((~y).sum())
    if n_pos == 0 or n_neg == 0:
        return 0.0
    values = torch.unique(z)  # sorted
    if len(values) == 1:
        return float(values[0])
    cands = (values[:-1] + values[1:]) / 2
    above = z[None, :] > cands[:, None]  # (candidates, N)
    j = (above & y).sum(1) / n_pos + (~above & ~y).sum(1) / n_neg - 1
    best = j == j.max()
    return float(cands[best][cands[best].abs().argmin()])
