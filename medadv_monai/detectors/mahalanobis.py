"""Mahalanobis detector of Lee et al. 2018, "A simple unified framework for detecting out-of-distribution samples and
adversarial attacks".

Per layer :math:`l`, class means :math:`\\mu_c` and ONE covariance :math:`\\Sigma` tied across classes, from the
clean training features :math:`f_i` with labels :math:`y_i`:

.. math::
    \\mu_c = \\frac{1}{N_c} \\sum_{y_i = c} f_i, \\qquad
    \\Sigma = \\frac1N \\sum_i (f_i - \\mu_{y_i})(f_i - \\mu_{y_i})^\\top, \\qquad
    M_l(x) = \\max_c -(f_l(x) - \\mu_c)^\\top \\Sigma^{-1} (f_l(x) - \\mu_c)

:math:`\\Sigma` is ``sklearn.covariance.EmpiricalCovariance(assume_centered=True)`` of the class-centred features
(the maximum-likelihood estimate, divided by :math:`N`), and :math:`\\Sigma^{-1}` its ``precision_``, the
pseudo-inverse (``scipy.linalg.pinvh``), so a rank-deficient :math:`\\Sigma` (fewer samples than channels, dead
channels) does not fail. :math:`M_l` is a confidence: high on clean inputs. It is negated here, so that the detector
score is "higher = more adversarial".

Input pre-processing (Lee et al., eq. 4) moves the input to increase the confidence score, then scores it:

.. math::
    \\hat x = \\mathrm{clip}\\Big(x - \\epsilon\\, \\mathrm{sign}\\, \\nabla_x \\min_c
        (f_l(x) - \\mu_c)^\\top \\Sigma^{-1} (f_l(x) - \\mu_c),\\ 0,\\ 1\\Big)

(clean samples gain more from it than adversarial ones). The per-layer confidences :math:`M_l(\\hat x)`
(:meth:`MahalanobisDetector.confidence`) are combined by the logistic regression of
:mod:`~medadv_monai.detectors.combine`, fitted on the detector-fitting set, into a score that is higher for
adversarial inputs.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import torch
from sklearn.covariance import EmpiricalCovariance
from torch import nn

from medadv_monai.detectors._common import as_binary, as_labels, as_layer_matrices, numpy
from medadv_monai.detectors.combine import LogisticCombiner
from medadv_monai.detectors.features import extract_features, features_with_grad, resolve_layers
from medadv_monai.errors import MedAdvInputError
from medadv_monai.utils.checks import check_int, check_nonneg

__all__ = ["MahalanobisDetector", "tied_gaussian"]


def tied_gaussian(features: torch.Tensor, labels: np.ndarray) -> tuple[torch.Tensor, torch.Tensor, list[int]]:
    """Class means ``(K, D)``, the tied precision ``(D, D)`` (pseudo-inverse of the pooled within-class covariance)
    and the class ids, from float64 features ``(N, D)`` and labels ``(N,)``."""
    classes = sorted(np.unique(labels).tolist())
    f = features.numpy()
    means = np.stack([f[labels == c].mean(0) for c in classes])
    centred = f - means[np.searchsorted(classes, labels)]
    precision = EmpiricalCovariance(assume_centered=True).fit(centred).precision_
    return torch.from_numpy(means), torch.from_numpy(np.asarray(precision, dtype=np.float64)), classes


class MahalanobisDetector:
    """Mahalanobis scores on ``layers`` of ``model``, with optional input pre-processing and a logistic combiner.

    Args:
        model: the classifier (used in its current mode: call ``model.eval()``). Only :meth:`fit_features` and
            :meth:`confidence_from_features` work without one (``None``).
        layers: names of ``dict(model.named_modules())`` whose pooled features are scored.
        magnitude: the pre-processing step :math:`\\epsilon \\ge 0` (0: no pre-processing).
        batch_size: inputs per forward pass.

    Example:
        >>> det = MahalanobisDetector(model, ["layer1", "layer2"], magnitude=0.001)  # doctest: +SKIP
        >>> det.fit(x_train, y_train)  # doctest: +SKIP
        >>> det.fit_combiner(x_fit, is_adv_fit)  # doctest: +SKIP
        >>> s = det.score(x_test)  # (N,), higher = more adversarial  # doctest: +SKIP
    """

    def __init__(self, model: nn.Module | None, layers: Sequence[str], *, magnitude: float = 0.0,
                 batch_size: int = 64) -> None:
        self.layers = [layers] if isinstance(layers, str) else list(layers)
        if model is not None:
            resolve_layers(model, self.layers)
        elif not self.layers:
            raise MedAdvInputError("layers must name at least one layer")
        self.model = model
        self.magnitude = check_nonneg(magnitude, "Mahalanobis magnitude")
        self.batch_size = check_int(batch_size, "batch_size", 1)
        self.means: dict[str, torch.Tensor] = {}
        self.precisions: dict[str, torch.Tensor] = {}
        self.classes: list[int] = []
        self.combiner: LogisticCombiner | None = None

    # ---------------------------------------------------------------------------------------------- features
    def fit_features(self, features: Mapping[str, Any], labels: Any) -> MahalanobisDetector:
        """Class means and the tied precision per layer from clean training features ``{layer: (N, D_l)}``."""
        feats = as_layer_matrices(features, self.layers, "Mahalanobis training features")
        y = as_labels(labels, next(iter(feats.values())).shape[0], "Mahalanobis training labels")
        for name, f in feats.items():
            self.means[name], self.precisions[name], self.classes = tied_gaussian(f, y)
        self.combiner = None
        return self

    def distances(self, f: torch.Tensor, layer: str) -> torch.Tensor:
        """``(N, K)`` squared Mahalanobis distances :math:`(f - \\mu_c)^\\top \\Sigma^{-1} (f - \\mu_c)`, float64,
        differentiable in ``f``."""
        if layer not in self.means:
            raise MedAdvInputError(f"no Mahalanobis statistics for layer {layer!r}: fit first (layers {self.layers})")
        mu = self.means[layer].to(f.device)
        if f.ndim != 2 or f.shape[1] != mu.shape[1]:
            raise MedAdvInputError(f"layer {layer!r} features have shape {tuple(f.shape)}; expected "
                                   f"(N, {mu.shape[1]}), the channels it was fitted on")
        diff = f.to(torch.float64)[:, None, :] - mu[None]
        return torch.einsum("nkd,de,nke->nk", diff, self.precisions[layer].to(f.device), diff)

    def confidence_from_features(self, features: Mapping[str, Any]) -> np.ndarray:
        """``(N, L)`` float64 confidences :math:`M_l = \\max_c -(f_l - \\mu_c)^\\top \\Sigma^{-1} (f_l - \\mu_c)`
        (higher = closer to a clean class), without pre-processing."""
        feats = as_layer_matrices(features, self.layers, "Mahalanobis features")
        return numpy(torch.stack([-self.distances(feats[name], name).min(1).values for name in self.layers], 1))

    # ------------------------------------------------------------------------------------------------- inputs
    def _model(self) -> nn.Module:
        if self.model is None:
            raise MedAdvInputError("this MahalanobisDetector has no model: use fit_features and "
                                   "confidence_from_features")
        return self.model

    def fit(self, x: torch.Tensor, labels: Any) -> MahalanobisDetector:
        """:meth:`fit_features` on the features of the clean training inputs ``x``."""
        return self.fit_features(extract_features(self._model(), x, self.layers, batch_size=self.batch_size), labels)

    def preprocess(self, x: torch.Tensor, layer: str) -> torch.Tensor:
        """Lee et al.'s :math:`\\hat x` for ``layer`` (see the module docstring); ``x`` itself when magnitude is 0."""
        if self.magnitude == 0:
            return x
        with torch.inference_mode(False), torch.enable_grad():
            xr = x.detach().clone().requires_grad_(True)
            feats, _ = features_with_grad(self._model(), xr, [layer])
            closest = self.distances(feats[layer], layer).min(1).values
            (g,) = torch.autograd.grad(closest.sum(), xr)
        return torch.clamp(xr.detach() - self.magnitude * g.sign(), 0.0, 1.0)

    def confidence(self, x: torch.Tensor) -> np.ndarray:
        """``(N, L)`` float64 confidences :math:`M_l(\\hat x)` per input and layer (``x`` itself when magnitude
        is 0); higher = closer to a clean class."""
        model = self._model()
        if not self.means:
            raise MedAdvInputError("MahalanobisDetector.confidence before fit")
        out = []
        for batch in torch.split(x, self.batch_size):
            if self.magnitude == 0:  # one pass for every layer
                with torch.no_grad():
                    feats = features_with_grad(model, batch, self.layers)[0]
            else:  # each layer scores its own pre-processed input
                feats = {}
                for name in self.layers:
                    xb = self.preprocess(batch, name)
                    with torch.no_grad():
                        feats[name] = features_with_grad(model, xb, [name])[0][name]
            out.append(torch.stack([-self.distances(feats[n], n).min(1).values.cpu() for n in self.layers], 1))
        return numpy(torch.cat(out))

    def fit_combiner(self, x: torch.Tensor, is_adversarial: Any) -> MahalanobisDetector:
        """Fit the logistic regression over layers on a detector-fitting set (1 = adversarial, 0 = clean/noisy)."""
        z = self.confidence(x)
        self.combiner = LogisticCombiner().fit(z, as_binary(is_adversarial, z.shape[0]))
        return self

    def score(self, x: torch.Tensor) -> np.ndarray:
        """``(N,)`` float64, higher = more adversarial: the combiner's log-odds, or :math:`-M_l(\\hat x)` for one
        layer without a combiner.

        Raises:
            MedAdvInputError: several layers and no :meth:`fit_combiner` yet.
        """
        z = self.confidence(x)
        if self.combiner is not None:
            return self.combiner.score(z)
        if z.shape[1] == 1:
            return -z[:, 0]
        raise MedAdvInputError(f"Mahalanobis over {len(self.layers)} layers needs fit_combiner (a logistic "
                               f"regression on a detector-fitting set) before score; or use a single layer")
