"""Bayesian uncertainty (BU) detector of Feinman et al. 2017, "Detecting adversarial samples from artifacts".

Monte-Carlo dropout: :math:`T = 50` stochastic forward passes with the dropout layers in train mode (everything else,
batch norm included, in eval mode), and the variance of the predicted probabilities over the passes:

.. math::
    \\mathrm{BU}(x) = \\sum_{k} \\Big(\\frac1T \\sum_{t=1}^T p_{t,k}(x)^2
        - \\Big(\\frac1T \\sum_{t=1}^T p_{t,k}(x)\\Big)^2\\Big)

with :math:`p_t = \\mathrm{softmax}(z_t)` for ``(N, K)`` logits, :math:`K \\ge 2` (the sum over classes of the
population variance of each class probability: Feinman et al.'s :math:`\\frac1T \\sum_t p_t^\\top p_t -
\\bar p^\\top \\bar p`), and the single term :math:`p_t = \\sigma(z_t)` for a single logit ``(N, 1)`` (the variance
of the positive-class probability). Adversarial samples sit in uncertain regions: higher = more adversarial.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

import numpy as np
import torch
from torch import nn

from medadv_monai.detectors._common import numpy
from medadv_monai.errors import MedAdvInputError
from medadv_monai.utils.checks import check_int

__all__ = ["BayesianUncertaintyDetector", "bu_unavailable", "mc_dropout_mode"]


def _active_dropouts(model: nn.Module) -> list[nn.Module]:
    return [m for m in model.modules() if isinstance(m, nn.modules.dropout._DropoutNd) and float(m.p) > 0]


def bu_unavailable(model: nn.Module) -> str:
    """Why Monte-Carlo dropout cannot run on ``model`` (``""`` when it can): no dropout layer, or only layers with
    ``p = 0`` (e.g. ``SliceClassifier(dropout=0.0)``, whose passes would all be equal: a BU of exactly 0)."""
    if not isinstance(model, nn.Module):
        raise MedAdvInputError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    dropouts = [m for m in model.modules() if isinstance(m, nn.modules.dropout._DropoutNd)]
    if not dropouts:
        return (f"the model ({type(model).__name__}) has no dropout layer; expected a torch.nn.Dropout (or "
                f"Dropout1d/2d/3d, AlphaDropout) module with p > 0")
    if not _active_dropouts(model):
        return (f"every dropout layer of the model ({type(model).__name__}) has p = 0, so its passes are all equal; "
                f"train it with dropout p > 0 (e.g. SliceClassifier(dropout=0.5))")
    return ""


@contextlib.contextmanager
def mc_dropout_mode(model: nn.Module) -> Iterator[list[nn.Module]]:
    """Within the block, ``model`` is in eval mode except its dropout layers (``torch.nn`` ``Dropout``,
    ``Dropout1d/2d/3d``, ``AlphaDropout``, ``FeatureAlphaDropout``), which are in train mode; every module's mode is
    restored on exit. Yields the dropout layers with ``p > 0``.

    Raises:
        MedAdvInputError: ``model`` has no dropout layer with ``p > 0`` (:func:`bu_unavailable`: Monte-Carlo dropout
            would be deterministic).
    """
    reason = bu_unavailable(model)
    if reason:
        raise MedAdvInputError(f"BU needs Monte-Carlo dropout: {reason}")
    dropouts = _active_dropouts(model)
    modes = {m: m.training for m in model.modules()}
    try:
        model.eval()
        for m in dropouts:
            m.train()
        yield dropouts
    finally:
        for m, training in modes.items():
            m.training = training


@contextlib.contextmanager
def _seeded(seed: int, device: torch.device) -> Iterator[None]:
    """Torch's RNG of the CPU (and of ``device``) seeded with ``seed`` in the block and restored after it; no other
    device's RNG is touched (``torch.manual_seed`` would reseed every GPU)."""
    if device.type == "cpu":
        with torch.random.fork_rng(devices=[]):
            torch.default_generator.manual_seed(seed)
            yield
        return
    mod = torch.get_device_module(device.type)
    with torch.random.fork_rng(devices=[device], device_type=device.type), mod.device(device):
        torch.default_generator.manual_seed(seed)
        mod.manual_seed(seed)
        yield


def _probabilities(out: Any) -> torch.Tensor:
    if not isinstance(out, torch.Tensor) or out.ndim != 2:
        shape = tuple(out.shape) if isinstance(out, torch.Tensor) else type(out).__name__
        raise MedAdvInputError(f"BU needs (N, 1) single-logit or (N, K) class logits, got {shape}")
    out = out.double()
    return torch.sigmoid(out) if out.shape[1] == 1 else torch.softmax(out, dim=1)


class BayesianUncertaintyDetector:
    """BU score by Monte-Carlo dropout (the module docstring's formula); nothing to fit.

    Args:
        model: a classifier with at least one dropout layer, returning ``(N, 1)`` or ``(N, K)`` logits.
        passes: stochastic forward passes :math:`T`.
        seed: seed of the dropout masks. Torch's global RNG is seeded inside ``torch.random.fork_rng``, so the
            caller's RNG state is the same after :meth:`score` as before, and a call is reproducible.
        batch_size: inputs per forward pass (the masks depend on it, the distribution of the score does not).

    Example:
        >>> bu = BayesianUncertaintyDetector(model, passes=50, seed=0)  # doctest: +SKIP
        >>> s = bu.score(x)  # (N,) numpy, higher = more adversarial  # doctest: +SKIP
    """

    def __init__(self, model: nn.Module, passes: int = 50, seed: int = 0, batch_size: int = 64) -> None:
        if not isinstance(model, nn.Module):
            raise MedAdvInputError(f"model must be a torch.nn.Module, got {type(model).__name__}")
        self.model = model
        self.passes = check_int(passes, "BU passes", 2)
        self.seed = check_int(seed, "BU seed", 0)
        self.batch_size = check_int(batch_size, "batch_size", 1)

    def fit(self, *args: Any, **kwargs: Any) -> BayesianUncertaintyDetector:
        """Nothing to fit (kept for the detectors' common ``fit``/``score`` interface); returns ``self``."""
        return self

    def score(self, x: torch.Tensor) -> np.ndarray:
        """``(N,)`` float64 BU of each input ``(N, C, *spatial)``; higher = more adversarial.

        Raises:
            MedAdvInputError: a model without dropout, an output that is not ``(N, 1)`` or ``(N, K)``.
        """
        if not isinstance(x, torch.Tensor) or x.ndim < 2 or x.shape[0] == 0:
            raise MedAdvInputError(f"x must be a non-empty batch (N, C, *spatial), got {getattr(x, 'shape', x)!r}")
        out = []
        with mc_dropout_mode(self.model), torch.no_grad(), _seeded(self.seed, x.device):
            for batch in torch.split(x, self.batch_size):
                p = torch.stack([_probabilities(self.model(batch)) for _ in range(self.passes)])  # (T, n, K)
                out.append(p.var(0, unbiased=False).sum(1).cpu())
        return numpy(torch.cat(out))
