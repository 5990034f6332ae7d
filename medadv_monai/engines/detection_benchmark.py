"""Can the attack be seen? Feature-space detectors (KD, BU, LID, Mahalanobis, KD + BU) against PGD, and the HFC
camouflage attack (Yao et al., MICCAI 2021) that hides from them.

Protocol (Ma et al. 2018 and Feinman et al. 2017: detection of the *successful* adversarial examples of *correctly
classified* clean samples; Yao et al. 2021 for HFC):

1. The training slices (at most ``max_fit_slices``, a seeded draw) are split at random into a *statistics* part and a
   *combiner* part (``combiner_fraction``). On the clean statistics slices: KD's per-class densities on
   ``kd_layer``, Mahalanobis' class means and tied covariance per layer, LID's reference pool, HFC's Gaussian
   mixtures per layer and class (true labels). KD's bandwidth maximises the likelihood of the clean validation
   slices. The parts are disjoint, so no clean slice is scored against its own density or covariance.
2. Per eps, on the combiner slices the model gets right: untargeted PGD; positives = the successful adversarial
   slices, negatives = their clean slices and uniform-noise copies (``uniform_noise`` at eps). The logistic
   regressions over LID's layers, Mahalanobis' layers and (KD, BU) are fitted on them.
3. Per eps, on the test slices the model gets right, for each attack of ``attacks``: ``pgd`` (untargeted, the
   attack the detectors were fitted on), ``pgd_targeted`` (toward the other class: the most likely wrong class;
   ``1 - y`` for a single logit) and ``pgd_hfc`` (the same targeted PGD with the HFC term of the target class added to
   its loss, :func:`~medadv_monai.losses.hfc.hfc_attack`). The three share each batch's random start. Positives =
   the successful adversarial slices ``S``; negatives = the clean slices of ``S`` and their noisy copies, so
   ``n_neg = 2 n_pos``. ASR = ``|S|`` / correctly classified test slices.

For a single-logit classifier, targeted PGD toward ``1 - y`` and untargeted PGD take the same steps (the BCE
gradients have the same sign), so ``pgd`` and ``pgd_targeted`` agree: a like-for-like check of the HFC row.

Outputs in ``output_dir``: ``detection.csv`` / ``detection.json`` (one row per eps x attack x detector: ``auc``,
``tpr_at_90tnr``, ``n_pos``, ``n_neg``, ``asr``, ``n_correct``, ``n_fit_pos``, ``note``: why a value is missing),
``figures/roc_<attack>_eps<k>.png``, ``report.md`` / ``report.html`` and ``cells/eps<k>.json``: each eps' rows and ROC
points, stamped with what made them (classifier, slices, settings, seed); a rerun reuses an eps only when all of
that is unchanged. A detector without a value (BU without dropout, no successful attack) is NaN with its reason,
never a made-up number.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import sklearn
import torch
from monai.data import Dataset
from sklearn.metrics import roc_curve

from medadv_monai.attacks import default_alpha, pgd
from medadv_monai.detectors import detection_metrics, detection_set, extract_features_and_outputs, resolve_layers
from medadv_monai.detectors import uniform_noise as noisy_copy
from medadv_monai.engines.detection_suite import DETECTORS, DetectorSuite, ScoreColumns
from medadv_monai.engines.grid_shards import batch_indices, derived_seed
from medadv_monai.errors import MedAdvInputError
from medadv_monai.handlers import model_description, network_description
from medadv_monai.losses.hfc import HFCTerm, hfc_attack, most_likely_other_class
from medadv_monai.metrics import prediction
from medadv_monai.settings import check_settings
from medadv_monai.utils import save_csv, save_json, save_text
from medadv_monai.utils.checks import check_bool, check_int, check_nonneg, check_positive
from medadv_monai.utils.fingerprint import (
    describe,
    file_digest,
    fingerprint,
    reusable,
    settings_only,
    write_stamp,
)
from medadv_monai.utils.logs import DETAIL_LOGGER
from medadv_monai.utils.provenance import portable_path, provenance, provenance_markdown
from medadv_monai.visualize import markdown_table, write_html
from medadv_monai.visualize.detection_figures import ATTACK_LABELS, detection_table, plot_roc_curves

__all__ = ["ATTACK_ROWS", "DetectionBenchmark", "check_detection_settings"]

ATTACK_ROWS: tuple[str, ...] = ("pgd", "pgd_targeted", "pgd_hfc")
DETECTION_FORMAT = 2  # raise when a cell file's layout or meaning changes
SPLIT_NAMES = ("training", "validation", "test")


def check_detection_settings(network: torch.nn.Module, layers: Sequence[str], kd_layer: str | None = None,
                             hfc_layers: Sequence[str] | None = None, attacks: Sequence[str] = ATTACK_ROWS) -> None:
    """Refuse, before anything is written, a layer name the network lacks (``layers``, ``kd_layer``, ``hfc_layers``,
    the message names the id and the value) or an unknown attack row."""
    for what, names in (("layers", layers), ("kd_layer", kd_layer), ("hfc_layers", hfc_layers)):
        if names is None and what != "layers":
            continue
        try:
            resolve_layers(network, names)
        except MedAdvInputError as e:
            raise MedAdvInputError(f"{what} {names!r}: {e}") from None
    if isinstance(attacks, str) or not attacks or any(a not in ATTACK_ROWS for a in attacks):
        raise MedAdvInputError(f"attacks: expected a non-empty list from {list(ATTACK_ROWS)}, got {attacks!r}")


@dataclass
class Slices:
    """Slices of one split as CPU tensors: ``x`` ``(N, C, H, W)``, true classes ``y`` ``(N,)``."""

    x: torch.Tensor
    y: torch.Tensor

    def take(self, rows: Any) -> Slices:
        return Slices(self.x[rows], self.y[rows])


class DetectionBenchmark:
    """Fit the detectors against PGD and score them against PGD, targeted PGD and PGD + HFC (module docstring).

    Args:
        network: the frozen classifier (eval mode), ``(N, 1)`` or ``(N, K)`` logits.
        datasets: ``{"training", "validation", "test"}`` -> MONAI ``Dataset`` of cached slices (``image``, ``label``).
        layers: LID's and Mahalanobis' layers; HFC's too unless ``hfc_layers``.
        eps: the attack budgets (L-inf, in [0, 1]).
        output_dir: where to write (module docstring).
        kd_layer: KD's layer (default: the last of ``layers``).
        attacks: attack rows, from :data:`ATTACK_ROWS`.
        pgd_steps, pgd_alpha: PGD's iterations and step (``None``: ``max(eps / 4, 1/255)``, the registry default).
        hfc_lambda, hfc_components, hfc_layers, hfc_reg_covar: the HFC term's weight, mixture components per layer and
            class, layers (at most 512 channels each are used) and covariance regularisation.
        bu_passes, lid_k, lid_batch, mahalanobis_magnitude: the detectors' settings.
        max_fit_slices, max_test_slices: caps on the training (and validation) and test slices (seeded draws).
        combiner_fraction: the part of the training slices that fits the combiners (the rest fits the statistics).
        batch_size, device, seed: as named; every random draw (slice caps, parts, PGD starts, noise, dropout masks,
            LID minibatches, mixtures) comes from ``seed``.
        resume: reuse finished eps cells whose stamp matches.
        classifier_ckpt: the classifier's file, for the stamps and the report.
    """

    def __init__(self, network: torch.nn.Module, datasets: Mapping[str, Dataset], layers: Sequence[str],
                 eps: Sequence[float], output_dir: str | os.PathLike = "eval", *, kd_layer: str | None = None,
                 attacks: Sequence[str] = ATTACK_ROWS, pgd_steps: int = 10, pgd_alpha: float | None = None,
                 hfc_lambda: float = 1.0, hfc_components: int = 1, hfc_layers: Sequence[str] | None = None,
                 hfc_reg_covar: float = 1e-6, bu_passes: int = 50, lid_k: int = 20, lid_batch: int = 100,
                 mahalanobis_magnitude: float = 0.0, max_fit_slices: int | None = None,
                 max_test_slices: int | None = None, combiner_fraction: float = 0.5, batch_size: int = 64,
                 device: torch.device | str = "cpu", seed: int = 0, resume: bool = True,
                 classifier_ckpt: str | os.PathLike | None = None) -> None:
        layers = [layers] if isinstance(layers, str) else list(layers)
        check_detection_settings(network, layers, kd_layer, hfc_layers, attacks)
        missing = [s for s in SPLIT_NAMES if s not in datasets]
        if missing:
            raise MedAdvInputError(f"datasets: expected the splits {list(SPLIT_NAMES)}, missing {missing}")
        self.eps = [float(check_settings({"eps": e})["eps"]) for e in (eps if isinstance(eps, Sequence) else [eps])]
        if not self.eps:
            raise MedAdvInputError("eps: expected a non-empty list of budgets, e.g. \"$[1/255, 2/255, 4/255]\"")
        if isinstance(combiner_fraction, bool) or not isinstance(combiner_fraction, (int, float)) \
                or not 0 < combiner_fraction < 1:
            raise MedAdvInputError(f"combiner_fraction must be in (0, 1), got {combiner_fraction!r}")
        self.network, self.datasets, self.layers = network, dict(datasets), layers
        self.kd_layer = kd_layer or layers[-1]
        self.hfc_layers = list(hfc_layers) if hfc_layers else layers
        self.attacks, self.output_dir = list(attacks), Path(output_dir)
        self.device, self.seed = torch.device(device), check_int(seed, "seed", 0)
        self.resume, self.classifier_ckpt = check_bool(resume, "resume"), classifier_ckpt
        self.settings = {
            "layers": layers, "kd_layer": self.kd_layer, "attacks": self.attacks,
            "pgd_steps": check_int(pgd_steps, "pgd_steps", 1),
            "pgd_alpha": None if pgd_alpha is None else check_positive(pgd_alpha, "pgd_alpha"),
            "hfc_lambda": check_nonneg(hfc_lambda, "hfc_lambda"),
            "hfc_components": check_int(hfc_components, "hfc_components", 1), "hfc_layers": self.hfc_layers,
            "hfc_reg_covar": check_positive(hfc_reg_covar, "hfc_reg_covar"),
            "bu_passes": check_int(bu_passes, "bu_passes", 2), "lid_k": check_int(lid_k, "lid_k", 1),
            "lid_batch": check_int(lid_batch, "lid_batch", 2),
            "mahalanobis_magnitude": check_nonneg(mahalanobis_magnitude, "mahalanobis_magnitude"),
            "max_fit_slices": None if max_fit_slices is None else check_int(max_fit_slices, "max_fit_slices", 2),
            "max_test_slices": None if max_test_slices is None else check_int(max_test_slices, "max_test_slices", 1),
            "combiner_fraction": float(combiner_fraction), "batch_size": check_int(batch_size, "batch_size", 1),
            "seed": self.seed}
        self.suite: DetectorSuite | None = None
        self.hfc: HFCTerm | None = None
        self.figures: list[Path] = []
        self.fit_info: dict[str, Any] = {}

    # ------------------------------------------------------------------------------------------ data
    def chosen(self, split: str) -> list[int]:
        """Indices of the slices of ``split`` the benchmark uses: all, or a seeded draw of the cap, in order."""
        n = len(self.datasets[split].data)
        cap = self.settings["max_test_slices" if split == "test" else "max_fit_slices"]
        if cap is None or cap >= n:
            return list(range(n))
        rng = np.random.default_rng(derived_seed(self.seed, "slices", split))
        return sorted(rng.choice(n, cap, replace=False).tolist())

    def load(self, split: str) -> Slices:
        dataset = self.datasets[split]
        items = [dataset[i] for i in self.chosen(split)]
        if not items:
            raise MedAdvInputError(f"the {split} split has 0 slices; the benchmark needs training (detector fitting), "
                                   "validation (KD's bandwidth) and test slices: give the dataset more subjects")
        x = torch.stack([torch.as_tensor(d["image"]).as_subclass(torch.Tensor).float() for d in items])
        y = torch.tensor([int(torch.as_tensor(d["label"]).reshape(-1)[0]) for d in items])
        return Slices(x, y)

    def forward(self, x: torch.Tensor) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
        """Features of every layer the detectors use, and the logits, of the same passes (CPU)."""
        names = list(dict.fromkeys([*self.layers, self.kd_layer, *self.hfc_layers]))
        return extract_features_and_outputs(self.network, x, names, batch_size=self.settings["batch_size"],
                                            device=self.device)

    def description(self, eps: float) -> dict[str, Any]:
        """What an eps cell depends on: the classifier, the chosen slices, the preprocessing and every setting."""
        slices = {}
        for split in SPLIT_NAMES:
            data = self.datasets[split].data
            picked = [data[i] for i in self.chosen(split)]
            slices[split] = {"count": len(picked), "digest": fingerprint(picked)[:16]}
        return {"format": DETECTION_FORMAT, "eps": eps, "settings": self.settings, "slices": slices,
                "classifier": model_description(self.network, self.classifier_ckpt),
                "architecture": network_description(self.network),  # dropout rates have no weights
                "preprocessing": settings_only(describe(self.datasets["test"].transform))}

    # ------------------------------------------------------------------------------------------ attacks
    def attack(self, name: str, x: torch.Tensor, y: torch.Tensor, logits: torch.Tensor, eps: float, tag: str
               ) -> torch.Tensor:
        """The adversarial slices (CPU) of attack row ``name`` on ``x`` with true classes ``y`` and clean ``logits``.
        Batch ``b``'s random start is seeded from (seed, tag, eps, b), the same for every row."""
        targeted = name != "pgd"
        target = most_likely_other_class(logits, y) if targeted else y
        model, loss_fn = (hfc_attack(self.network, self.hfc, targeted=True) if name == "pgd_hfc"
                          else (self.network, None))
        alpha = self.settings["pgd_alpha"] or default_alpha(eps)
        out = []
        for b, rows in enumerate(batch_indices(len(x), self.settings["batch_size"])):
            g = torch.Generator().manual_seed(derived_seed(self.seed, "pgd", tag, round(eps * 255, 6), b))
            out.append(pgd(model, x[rows].to(self.device), target[rows].to(self.device), eps=eps, alpha=alpha,
                           steps=self.settings["pgd_steps"], targeted=targeted, loss_fn=loss_fn, generator=g).cpu())
        return torch.cat(out)

    def noisy(self, x: torch.Tensor, eps: float, tag: str) -> torch.Tensor:
        return noisy_copy(x, eps, torch.Generator().manual_seed(derived_seed(self.seed, "noise", tag, eps)))

    def adversarial_columns(self, name: str, clean: Slices, logits: torch.Tensor, eps: float, tag: str
                            ) -> tuple[np.ndarray, ScoreColumns | None]:
        """``(success (N,) bool, the columns of the successful adversarial slices or None)``."""
        adv = self.attack(name, clean.x, clean.y, logits, eps, tag)
        feats, adv_logits = self.forward(adv)
        pred = prediction(adv_logits)
        success = (pred == most_likely_other_class(logits, clean.y)) if name != "pgd" else (pred != clean.y)
        ok = success.numpy()
        if not ok.any():
            return ok, None
        rows = torch.from_numpy(np.flatnonzero(ok))
        return ok, self.suite.columns(adv[rows], {k: v[rows] for k, v in feats.items()}, adv_logits[rows])

    # ------------------------------------------------------------------------------------------ running
    def fit(self) -> dict[str, Any]:
        """Load the slices, fit the statistics (and HFC's mixtures); return the clean data of the combiner and
        test parts (correctly classified slices only) with their columns."""
        train, val, test = (self.load(s) for s in SPLIT_NAMES)
        order = np.random.default_rng(derived_seed(self.seed, "parts")).permutation(len(train.y))
        n_comb = min(max(1, round(len(order) * self.settings["combiner_fraction"])), len(order) - 1)
        stats, comb = train.take(torch.from_numpy(np.sort(order[n_comb:]))), train.take(
            torch.from_numpy(np.sort(order[:n_comb])))
        s = self.settings
        self.suite = DetectorSuite(self.network, self.layers, self.kd_layer, bu_passes=s["bu_passes"],
                                   lid_k=s["lid_k"], lid_batch=s["lid_batch"], magnitude=s["mahalanobis_magnitude"],
                                   batch_size=s["batch_size"], device=self.device, seed=self.seed)
        stats_feats, _ = self.forward(stats.x)
        self.suite.fit(stats_feats, stats.y, self.forward(val.x)[0], val.y)
        counts = {int(c): int(n) for c, n in zip(*np.unique(stats.y.numpy(), return_counts=True))}
        self.fit_info = {"statistics_slices": len(stats.y), "combiner_slices": len(comb.y),
                         "validation_slices": len(val.y), "class_counts": {str(c): n for c, n in counts.items()},
                         "kd_bandwidth": self.suite.kd.bandwidth_}
        if "pgd_hfc" in self.attacks:
            self.hfc = HFCTerm(n_components=s["hfc_components"], lam=s["hfc_lambda"], reg_covar=s["hfc_reg_covar"],
                               seed=self.seed).fit({k: stats_feats[k] for k in self.hfc_layers}, stats.y)
            self.fit_info.update(hfc_layers=self.hfc.layers, hfc_skipped=self.hfc.skipped, hfc_underdetermined=[
                f"{k} ({stats_feats[k].shape[1]} channels), class {c}: {n} slices" for k in self.hfc.layers
                for c, n in counts.items() if n / s["hfc_components"] <= stats_feats[k].shape[1]])
        parts = {}
        for name, part in (("fit", comb), ("test", test)):
            feats, logits = self.forward(part.x)
            ok = torch.from_numpy(np.flatnonzero((prediction(logits) == part.y).numpy()))
            if len(ok) == 0:
                raise MedAdvInputError(f"the classifier gets none of the {len(part.y)} {name} slices right: there "
                                       "is nothing to attack (train it first, or check the checkpoint)")
            data = part.take(ok)
            cols = self.suite.columns(data.x, {k: v[ok] for k, v in feats.items()}, logits[ok])
            parts[name] = {"data": data, "logits": logits[ok], "columns": cols, "n": len(part.y)}
        return parts

    def run_eps(self, eps: float, parts: Mapping[str, Any]) -> dict[str, Any]:
        """One eps: fit the combiners against PGD, score every attack row on the test slices."""
        fit, test = parts["fit"], parts["test"]
        ok, adv_cols = self.adversarial_columns("pgd", fit["data"], fit["logits"], eps, "fit")
        fit_note = ""
        if adv_cols is None:
            fit_note = "no successful PGD example on the combiner-fitting slices: the combiners cannot be fitted"
            self.suite.combiners = {}
        else:
            noisy = self.noisy(fit["data"].x[torch.from_numpy(ok)], eps, "fit")
            noisy_cols = self.suite.columns(noisy, *self.forward(noisy))
            self.suite.fit_combiners(ScoreColumns.stack([fit["columns"].take(ok), noisy_cols]), adv_cols)
        noisy = self.noisy(test["data"].x, eps, "test")
        noisy_scores = self._scores(self.suite.columns(noisy, *self.forward(noisy)))
        clean_scores = self._scores(test["columns"])
        rows, curves = [], {}
        for name in self.attacks:
            success, cols = self.adversarial_columns(name, test["data"], test["logits"], eps, "test")
            adv_scores = self._scores(cols) if cols is not None else {}
            curves[name] = {}
            for det in DETECTORS:
                row = {"eps": eps, "eps_255": round(eps * 255, 3), "attack": name, "detector": det,
                       "auc": float("nan"), "tpr_at_90tnr": float("nan"), "n_pos": int(success.sum()),
                       "n_neg": 2 * int(success.sum()), "asr": float(success.mean()), "n_correct": len(success),
                       "n_fit_pos": int(ok.sum()), "note": ""}
                scores = [clean_scores.get(det), noisy_scores.get(det), adv_scores.get(det)]
                if det in ("BU", "KD+BU") and self.suite.bu_reason:
                    row["note"] = f"not applicable: {self.suite.bu_reason}"
                elif cols is None:
                    row["note"] = f"no successful {ATTACK_LABELS[name]} example among the correctly classified slices"
                elif any(s is None for s in scores):
                    row["note"] = fit_note
                else:
                    labels, values = detection_set([scores[0][success], scores[1][success]], scores[2])
                    metrics = detection_metrics(labels, values, tnr=0.9)
                    row.update(auc=metrics["auc"], tpr_at_90tnr=metrics["tpr_at_tnr"])
                    fpr, tpr, _ = roc_curve(labels, values)
                    curves[name][det] = {"fpr": np.round(fpr, 4).tolist(), "tpr": np.round(tpr, 4).tolist(),
                                         "auc": metrics["auc"]}
                rows.append(row)
        return {"rows": rows, "curves": curves, "fit": self.fit_info}

    def _scores(self, columns: ScoreColumns) -> dict[str, np.ndarray | None]:
        if self.suite.combiners:
            return self.suite.scores(columns)
        return {"KD": columns.kd, "BU": columns.bu}  # no combiners: the detectors that need none

    def _cell_file(self, eps: float) -> Path:
        return self.output_dir / "cells" / f"eps{eps * 255:g}.json"

    def run(self) -> list[dict[str, Any]]:
        """Run (or reuse) every eps; write the tables, ROC curves and report; return the rows."""
        self.network.eval()
        descriptions = {e: self.description(e) for e in self.eps}
        content = {"rows": list, "curves": dict, "fit": dict}
        found = {e: reusable(self._cell_file(e), descriptions[e], content) if self.resume else (None, "")
                 for e in self.eps}
        todo = [e for e in self.eps if found[e][0] is None]
        results = {e: found[e][0] for e in self.eps if e not in todo}
        if results:
            print(f"[detection] reused {len(results)} finished eps of {self.output_dir / 'cells'}", flush=True)
        if todo:
            start = time.perf_counter()
            parts = self.fit()
            print(f"[detection] fitted the detectors ({time.perf_counter() - start:.1f} s); correctly classified: "
                  f"{len(parts['fit']['data'].y)} of {parts['fit']['n']} combiner-fitting slices, "
                  f"{len(parts['test']['data'].y)} of {parts['test']['n']} test slices", flush=True)
            for e in todo:
                if found[e][1]:
                    print(f"[detection] eps {e * 255:g}/255: recomputing ({found[e][1]})", flush=True)
                start = time.perf_counter()
                results[e] = self.run_eps(e, parts)
                write_stamp(self._cell_file(e), descriptions[e], **results[e])
                logging.getLogger(DETAIL_LOGGER).info("eps %g/255: %s", e * 255, results[e]["rows"])
                print(f"[detection] eps {e * 255:g}/255 ({time.perf_counter() - start:.1f} s): " + "; ".join(
                    f"{ATTACK_LABELS[r['attack']]} ASR {r['asr']:.3f}" for r in results[e]["rows"]
                    if r["detector"] == DETECTORS[0]), flush=True)
        rows = [r for e in self.eps for r in results[e]["rows"]]
        self.write(rows, {e: results[e]["curves"] for e in self.eps}, results[self.eps[0]]["fit"])
        return rows

    # ------------------------------------------------------------------------------------------ outputs
    def write(self, rows: list[dict[str, Any]], curves: Mapping[float, Mapping[str, Any]],
              fit_info: Mapping[str, Any]) -> None:
        out = self.output_dir
        save_json(rows, out / "detection.json")
        save_csv(rows, out / "detection.csv")
        self.figures = []
        for e, by_attack in curves.items():
            for name, per_detector in by_attack.items():
                if per_detector:
                    self.figures.append(plot_roc_curves(
                        per_detector, out / "figures" / f"roc_{name}_eps{e * 255:g}.png",
                        title=f"{ATTACK_LABELS[name]}, eps {e * 255:g}/255"))
        text = self.report(rows, fit_info)
        save_text(text, out / "report.md")
        write_html(text, out / "report.html", title="Detection of adversarial slices")

    def report(self, rows: Sequence[Mapping[str, Any]], fit_info: Mapping[str, Any]) -> str:
        """The report: the AUC / TPR table with ASR, what is missing and why, counts, ROC curves, provenance."""
        s, f = self.settings, fit_info
        notes = sorted({(r["detector"], r["note"]) for r in rows if r["note"]})
        per_class = ", ".join(f"class {c} {n}" for c, n in f.get("class_counts", {}).items())
        lines = ["## Detection of adversarial slices (KD, BU, LID, Mahalanobis) and the HFC camouflage", "",
                 "Each cell: ROC AUC / TPR at 90% TNR; positives: the successful adversarial versions of correctly "
                 "classified test slices; negatives: their clean slices and uniform-noise copies at the same eps "
                 "(n neg = 2 n pos). ASR: successful / correctly classified test slices. Detectors fitted against "
                 f"untargeted PGD-{s['pgd_steps']}; PGD + HFC: targeted PGD with the HFC term (lambda "
                 f"{s['hfc_lambda']:g}, {s['hfc_components']} mixture component(s) per layer and class). Layers: "
                 f"{', '.join(self.layers)}; KD on {self.kd_layer} (bandwidth {f.get('kd_bandwidth')}); HFC on "
                 f"{', '.join(f.get('hfc_layers', self.hfc_layers))}. Statistics from {f.get('statistics_slices')} "
                 f"clean training slices (per class: {per_class}), combiners from "
                 f"{f.get('combiner_slices')} others.", "", detection_table(rows, DETECTORS), ""]
        if notes:
            lines += ["Missing values (n/a):", ""] + [f"- {d}: {n}" for d, n in notes] + [""]
        if f.get("hfc_underdetermined"):
            lines += ["HFC mixtures with no more slices per component than channels (a singular covariance, held "
                      f"up by reg_covar {s['hfc_reg_covar']:g} alone; raise max_fit_slices): "
                      + "; ".join(f["hfc_underdetermined"]) + ".", ""]
        counts = [{**r, "attack": ATTACK_LABELS[r["attack"]], "eps": f"{r['eps_255']:g}/255"}
                  for r in rows if r["detector"] == DETECTORS[0]]
        lines += ["### Counts", "", markdown_table(
            counts, ["eps", "attack", "n_correct", "asr", "n_pos", "n_neg", "n_fit_pos"],
            ["eps", "attack", "correct test slices", "ASR", "positives", "negatives", "PGD positives (fit)"]), ""]
        if self.figures:
            lines += ["### ROC curves", ""]
            lines += [f"![{p.stem}](figures/{p.name})" for p in self.figures] + [""]
        ckpt, checkpoint = self.classifier_ckpt, "given as a network"
        if ckpt and Path(ckpt).is_file():
            checkpoint = f"{portable_path(ckpt, self.output_dir)} (sha256 {file_digest(ckpt).split(':')[-1][:16]})"
        lines.append(provenance_markdown(provenance(self.output_dir, seed=self.seed, classifier_checkpoint=checkpoint,
                                                    scikit_learn=sklearn.__version__)))
        return "\n".join(lines)
