"""The hierarchical feature constraint (HFC) of Yao et al., MICCAI 2021, "A hierarchical feature constraint to
camouflage medical adversarial attacks": an attack term that keeps the adversarial features inside the clean
feature distribution of the target class, so that feature-space detectors (KD, LID, Mahalanobis) miss them.

Per layer :math:`l` (only layers with at most 512 channels) and class :math:`c`, a Gaussian mixture
(``sklearn.mixture.GaussianMixture``, full covariances) is fitted on the pooled clean training features of class
:math:`c`. During the attack, per sample, the component of the target class :math:`t` with the highest weighted
likelihood is chosen without gradient (as ``GaussianMixture.predict``),

.. math::
    k^* = \\arg\\max_k\\ \\pi_{t,k}\\, \\mathcal N(f_l; \\mu_{t,k}, \\Sigma_{t,k}),

and the term is the squared Mahalanobis distance to it divided by the channel count :math:`d_l`:

.. math::
    \\mathrm{HFC}(x) = \\lambda \\sum_l \\frac{1}{d_l} \\sum_{j=1}^{d_l}
        \\big[((f_l - \\mu_{k^*})^\\top P_{k^*})_j\\big]^2
      = \\lambda \\sum_l \\frac{(f_l - \\mu_{k^*})^\\top \\Sigma_{k^*}^{-1} (f_l - \\mu_{k^*})}{d_l}

with :math:`P_k` the Cholesky factor of the precision, :math:`P_k P_k^\\top = \\Sigma_k^{-1}` (sklearn's
``precisions_cholesky_``) and :math:`\\lambda = 1` by default.

With the attacks of :mod:`~medadv_monai.attacks`: :func:`hfc_attack` returns a model wrapper that records the
features of each forward pass (:class:`~medadv_monai.detectors.features.FeatureRecorder`) and a ``loss_fn`` that adds
the term to the attack loss with the sign that makes the attack *decrease* it. The core ascends ``loss_fn``
untargeted and descends it targeted, so the loss is :math:`L + \\mathrm{HFC}` targeted (class :math:`t` = the
target) and :math:`L - \\mathrm{HFC}` untargeted (class = the most likely wrong class, chosen without gradient).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any, Callable

import numpy as np
import torch
import torch.nn.functional as F
from sklearn.mixture import GaussianMixture
from torch import nn

from medadv_monai.attacks._core import LossFn
from medadv_monai.detectors._common import as_labels, as_layer_matrices
from medadv_monai.detectors.features import FeatureRecorder
from medadv_monai.errors import MedAdvInputError
from medadv_monai.utils.checks import check_bool, check_int, check_nonneg, check_positive

__all__ = ["HFCLoss", "HFCTerm", "hfc_attack", "most_likely_other_class"]


class HFCTerm:
    """The HFC term (module docstring), fitted from clean features and labels; callable on features with graph.

    Args:
        n_components: mixture components per layer and class.
        lam: the weight :math:`\\lambda \\ge 0`.
        max_channels: layers with more channels are skipped (listed in :attr:`skipped`).
        reg_covar: added to the covariance diagonals (``GaussianMixture``'s regularisation).
        seed: ``random_state`` of the mixtures' k-means initialisation.

    Attributes:
        layers: the layers the term uses (fitted); skipped: those left out (too many channels); classes: class ids.
        mixtures: ``{layer: {class: fitted GaussianMixture}}``.

    Example:
        >>> term = HFCTerm(n_components=2).fit(extract_features(model, x_train, layers), y_train)  # doctest: +SKIP
        >>> hfc = term(features_with_grad(model, x_adv, layers)[0], targets)  # (N,)  # doctest: +SKIP
    """

    def __init__(self, n_components: int = 1, lam: float = 1.0, max_channels: int = 512, reg_covar: float = 1e-6,
                 seed: int = 0) -> None:
        self.n_components = check_int(n_components, "HFC n_components", 1)
        self.lam = check_nonneg(lam, "HFC lambda")
        self.max_channels = check_int(max_channels, "HFC max_channels", 1)
        self.reg_covar = check_positive(reg_covar, "HFC reg_covar")
        self.seed = check_int(seed, "HFC seed", 0)
        self.layers: list[str] = []
        self.skipped: list[str] = []
        self.classes: list[int] = []
        self.mixtures: dict[str, dict[int, GaussianMixture]] = {}
        self._cpu: dict[str, tuple[torch.Tensor, ...]] = {}  # layer -> (mu P, P, log pi + log det P), float64
        self._cache: dict[tuple[str, torch.device, torch.dtype], tuple[torch.Tensor, ...]] = {}
        self._target: tuple[Any, torch.Tensor] | None = None

    def fit(self, features: Mapping[str, Any], labels: Any) -> HFCTerm:
        """One mixture per layer (``<= max_channels`` channels) and class on ``{layer: (N, C_l)}`` clean features."""
        feats = as_layer_matrices(features, None, "HFC training features")
        y = as_labels(labels, next(iter(feats.values())).shape[0], "HFC training labels")
        self.classes = sorted(np.unique(y).tolist())
        counts = {c: int((y == c).sum()) for c in self.classes}
        if min(counts.values()) < max(self.n_components, 2):
            raise MedAdvInputError(f"HFC needs at least max(n_components, 2) = {max(self.n_components, 2)} training "
                                   f"samples per class, got counts {counts}")
        self.layers = [n for n, f in feats.items() if f.shape[1] <= self.max_channels]
        self.skipped = [n for n in feats if n not in self.layers]
        if not self.layers:
            widths = {n: f.shape[1] for n, f in feats.items()}
            raise MedAdvInputError(f"every layer has more than max_channels = {self.max_channels} channels "
                                   f"({widths}); HFC has nothing to constrain")
        self.mixtures, self._cpu, self._cache, self._target = {}, {}, {}, None
        for name in self.layers:
            f = feats[name].numpy()
            self.mixtures[name] = {c: GaussianMixture(self.n_components, covariance_type="full",
                                                      reg_covar=self.reg_covar, random_state=self.seed).fit(f[y == c])
                                   for c in self.classes}
            gms = [self.mixtures[name][c] for c in self.classes]
            prec = torch.from_numpy(np.stack([g.precisions_cholesky_ for g in gms]))  # (J, K, C, C)
            mu = torch.from_numpy(np.stack([g.means_ for g in gms]))  # (J, K, C)
            log_det = torch.diagonal(prec, dim1=-2, dim2=-1).log().sum(-1)
            log_w = torch.from_numpy(np.log(np.stack([g.weights_ for g in gms])))
            self._cpu[name] = (torch.einsum("jkc,jkcd->jkd", mu, prec), prec, log_w + log_det)
        return self

    def _params(self, layer: str, ref: torch.Tensor) -> tuple[torch.Tensor, ...]:
        key = (layer, ref.device, ref.dtype)
        if key not in self._cache:
            self._cache[key] = tuple(t.to(device=ref.device, dtype=ref.dtype) for t in self._cpu[layer])
        return self._cache[key]

    def _class_index(self, target: Any, n: int, device: torch.device) -> torch.Tensor:
        """Row of :attr:`classes` for each target, checked once per target object (an attack reuses it)."""
        last = self._target
        if last is not None and last[0] is target and last[1].shape == (n,) and last[1].device == device:
            return last[1]
        t = torch.as_tensor(as_labels(target, n, "HFC target classes"))
        unknown = sorted(set(t.tolist()) - set(self.classes))
        if unknown:
            raise MedAdvInputError(f"HFC target class {unknown[0]} has no fitted mixture; classes with clean "
                                   f"training features: {self.classes}")
        idx = torch.as_tensor(np.searchsorted(self.classes, t.numpy()), device=device)
        self._target = (target, idx)
        return idx

    def _projected(self, f: torch.Tensor, layer: str, idx: torch.Tensor) -> torch.Tensor:
        """``(N, K, C)``: :math:`(f - \\mu_k)^\\top P_k` for every component of each sample's class."""
        mu_p, prec, _ = self._params(layer, f)
        rows = torch.arange(f.shape[0], device=f.device)
        return torch.einsum("nc,jkcd->njkd", f, prec)[rows, idx] - mu_p[idx]  # no (N, K, C, C) gather

    def _checked(self, features: Mapping[str, torch.Tensor], target: Any) -> tuple[dict, torch.Tensor]:
        if not self.layers:
            raise MedAdvInputError("HFCTerm is not fitted: call fit(features, labels) first")
        missing = [n for n in self.layers if n not in features]
        if missing:
            raise MedAdvInputError(f"HFC features lack the fitted layers {missing}; got {list(features)}")
        feats = {n: features[n] for n in self.layers}
        n = next(iter(feats.values())).shape[0]
        for name, f in feats.items():
            c = self.mixtures[name][self.classes[0]].means_.shape[1]
            if not isinstance(f, torch.Tensor) or f.ndim != 2 or f.shape != (n, c):
                shape = tuple(f.shape) if isinstance(f, torch.Tensor) else type(f).__name__
                raise MedAdvInputError(f"HFC features of layer {name!r} must be a tensor ({n}, {c}), got {shape}")
        return feats, self._class_index(target, n, next(iter(feats.values())).device)

    def _choose(self, projected: torch.Tensor, layer: str, idx: torch.Tensor) -> torch.Tensor:
        """``(N,)`` :math:`k^* = \\arg\\max_k \\log \\pi_k + \\log\\det P_k - \\tfrac12 \\lVert (f - \\mu_k)^\\top
        P_k \\rVert^2` (``GaussianMixture.predict``), computed without gradient."""
        with torch.no_grad():
            y = projected.detach()
            return (self._params(layer, y)[2][idx] - 0.5 * y.pow(2).sum(-1)).argmax(1)

    def components(self, features: Mapping[str, torch.Tensor], target: Any) -> dict[str, torch.Tensor]:
        """``{layer: (N,)}`` the chosen component :math:`k^*` per sample (no gradient)."""
        feats, idx = self._checked(features, target)
        with torch.no_grad():
            return {name: self._choose(self._projected(f, name, idx), name, idx) for name, f in feats.items()}

    def __call__(self, features: Mapping[str, torch.Tensor], target: Any) -> torch.Tensor:
        """``(N,)`` HFC term of ``{layer: (N, C_l)}`` features (the graph is kept) for ``target`` classes ``(N,)``.

        Layers of ``features`` the term was not fitted on (skipped ones included) are ignored.
        """
        feats, idx = self._checked(features, target)
        total = None
        for name, f in feats.items():
            y = self._projected(f, name, idx)  # (N, K, C), with graph
            sel = y[torch.arange(y.shape[0], device=y.device), self._choose(y, name, idx)]
            term = sel.pow(2).mean(1)
            total = term if total is None else total + term
        return self.lam * total


def _default_loss(out: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """The core's default: cross-entropy for ``(N, K)`` logits, BCE-with-logits for a single logit ``(N, 1)``."""
    if out.shape[1] == 1:
        return F.binary_cross_entropy_with_logits(out[:, 0], y.reshape(-1).to(out.dtype), reduction="none")
    return F.cross_entropy(out, y.reshape(-1).long(), reduction="none")


def most_likely_other_class(out: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """The most likely class other than ``y`` (``1 - y`` for a single logit), without gradient."""
    with torch.no_grad():
        y = y.reshape(-1).long()
        if out.shape[1] == 1:
            return 1 - y
        return out.detach().scatter(1, y[:, None], -math.inf).argmax(1)


class HFCLoss:
    """``loss_fn(output, y) -> (N,)`` for the core attacks: the attack loss plus the HFC term of the same forward pass.

    .. math::
        \\text{targeted: } L(z, t) + \\mathrm{HFC}(x'; t), \\qquad
        \\text{untargeted: } L(z, y) - \\mathrm{HFC}(x'; \\arg\\max_{j \\ne y} z_j)

    The core descends the targeted loss and ascends the untargeted one, so both decrease the HFC term. ``targeted``
    must match the attack's. The model given to the attack must be ``recorder``; the loss checks that ``output`` is
    the recorder's latest output.

    Args:
        term: a fitted :class:`HFCTerm`.
        recorder: a :class:`~medadv_monai.detectors.features.FeatureRecorder` over ``term.layers`` (at least).
        targeted: the attack's ``targeted``.
        base_loss: ``(output, y) -> (N,)``; default CE (BCE for a single logit), the core's default.
    """

    def __init__(self, term: HFCTerm, recorder: FeatureRecorder, *, targeted: bool = True,
                 base_loss: LossFn | None = None) -> None:
        if not term.layers:
            raise MedAdvInputError("HFCLoss needs a fitted HFCTerm")
        missing = [n for n in term.layers if n not in recorder.layers]
        if missing:
            raise MedAdvInputError(f"the recorder does not hook the HFC layers {missing}; it hooks {recorder.layers}")
        self.term, self.recorder = term, recorder
        self.targeted = check_bool(targeted, "targeted")
        self.base_loss: Callable[[Any, Any], torch.Tensor] = base_loss or _default_loss

    def __call__(self, output: Any, y: Any) -> torch.Tensor:
        if output is not self.recorder.output:
            raise MedAdvInputError("HFCLoss got an output that its FeatureRecorder did not produce: pass the "
                                   "recorder (from hfc_attack) as the attack's model")
        base = self.base_loss(output, y)
        if self.targeted:
            return base + self.term(self.recorder.features, y)
        return base - self.term(self.recorder.features, most_likely_other_class(output, torch.as_tensor(y)))


def hfc_attack(model: nn.Module, term: HFCTerm, *, targeted: bool = True, base_loss: LossFn | None = None
               ) -> tuple[FeatureRecorder, HFCLoss]:
    """``(recorder, loss_fn)`` to run any core attack with the HFC term.

    Example:
        >>> hfc_model, hfc_loss = hfc_attack(model.eval(), term, targeted=True)  # doctest: +SKIP
        >>> x_adv = pgd(hfc_model, x, targets, eps=4 / 255, alpha=1 / 255, steps=20, targeted=True,
        ...             loss_fn=hfc_loss)  # doctest: +SKIP
    """
    recorder = FeatureRecorder(model, term.layers)
    return recorder, HFCLoss(term, recorder, targeted=targeted, base_loss=base_loss)

