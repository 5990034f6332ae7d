"""Adversarial-training losses as published: PGD-AT, TRADES and MART, as functions and as one callable.

Notation: :math:`f` the classifier, :math:`p(x) = \\mathrm{softmax}(f(x))`, :math:`B` the batch size, :math:`y` the
labels, :math:`x'` the adversarial batch inside the L-inf ball :math:`\\lVert x' - x \\rVert_\\infty \\le \\epsilon`
intersected with :math:`[0, 1]`, and :math:`\\mathrm{KL}(p \\Vert q) = \\sum_k p_k (\\log p_k - \\log q_k)`.

.. math::
    \\text{PGD-AT (Madry et al., 2018): } & L = \\tfrac1B \\textstyle\\sum_i \\mathrm{CE}(f(x'_i), y_i) \\\\
    \\text{TRADES (Zhang et al., 2019): } & L = \\tfrac1B \\textstyle\\sum_i \\mathrm{CE}(f(x_i), y_i)
        + \\beta \\tfrac1B \\sum_i \\mathrm{KL}(p(x_i) \\Vert p(x'_i)) \\\\
    \\text{MART (Wang et al., 2020): } & L = \\tfrac1B \\textstyle\\sum_i \\big[\\mathrm{CE}(f(x'_i), y_i)
        - \\log(1 - p_{y'_i}(x'_i))\\big] + \\beta \\tfrac1B \\sum_i \\mathrm{KL}(p(x_i) \\Vert p(x'_i))
        (1 - p_{y_i}(x_i))

with :math:`y'_i = \\arg\\max_{k \\ne y_i} p_k(x'_i)`, the most likely wrong class on the adversarial input. The inner
maximisation is :func:`~medadv_monai.attacks.pgd.pgd` with the model in eval mode: on CE from a uniform random start
(PGD-AT), on CE from :math:`x + 0.001\\,\\mathcal N(0, 1)` (MART, as its reference code), on
:math:`\\sum_i \\mathrm{KL}(p(x_i) \\Vert p(x'_i))` (:func:`trades_kl`) from :math:`x + 0.001\\,\\mathcal N(0, 1)`
(TRADES). A single-logit ``(N, 1)`` model is the two-class model with logits
:math:`(0, z)` (:func:`~medadv_monai.attacks.margin.as_two_logits`), so :math:`p = (1 - \\sigma(z), \\sigma(z))`.

:class:`AdversarialTrainingLoss` holds every setting; the stage-1 trainer calls it as ``loss, x_adv = loss_fn(model,
x, y)`` and ramps its :attr:`~AdversarialTrainingLoss.eps` between calls for an eps warm-up.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from medadv_monai.attacks._core import check_budget
from medadv_monai.attacks.checks import check_generator
from medadv_monai.attacks.margin import as_two_logits
from medadv_monai.attacks.pgd import pgd
from medadv_monai.errors import MedAdvInputError
from medadv_monai.losses.advgan import class_ids
from medadv_monai.utils.checks import check_choice, check_eps, check_int, check_nonneg, check_positive

__all__ = [
    "AT_METHODS",
    "AdversarialTrainingLoss",
    "eval_mode",
    "mart_loss",
    "mart_wrong_class",
    "pgd_at_loss",
    "trades_kl",
    "trades_loss",
    "training_alpha",
]

AT_METHODS: tuple[str, ...] = ("pgd_at", "trades", "mart")

TRADES_INIT_STD = 0.001
"""Standard deviation of TRADES' Gaussian start :math:`x + 0.001\\,\\mathcal N(0, 1)`."""


def training_alpha(eps: float) -> float:
    """The survey's (Adv_MIA) training step size :math:`\\alpha = \\max(\\epsilon / 4, 0.5/255)`.

    For :math:`\\epsilon \\in \\{1, 2, 4, 8\\}/255` this is :math:`\\{0.5, 0.5, 1, 2\\}/255`. (The evaluation attacks'
    default, :func:`~medadv_monai.attacks.registry.default_alpha`, floors at 1/255 instead.)
    """
    return max(float(eps) / 4, 0.5 / 255)


def _logits(logits: Any, what: str) -> torch.Tensor:
    """``(N, 1)`` or ``(N, K)`` logits as float ``(N, max(K, 2))`` logits (single logit :math:`z` -> :math:`(0, z)`)."""
    if not isinstance(logits, torch.Tensor) or logits.ndim != 2 or logits.shape[0] == 0:
        shape = tuple(logits.shape) if isinstance(logits, torch.Tensor) else type(logits).__name__
        raise MedAdvInputError(f"{what} must be (N, 1) single-logit or (N, K) class logits with N >= 1, got {shape}")
    if type(logits) is not torch.Tensor:  # e.g. a MONAI MetaTensor: plain, still in the graph
        logits = logits.as_subclass(torch.Tensor)
    return as_two_logits(logits.float())


def _pair(logits_clean: Any, logits_adv: Any) -> tuple[torch.Tensor, torch.Tensor]:
    clean, adv = _logits(logits_clean, "logits_clean"), _logits(logits_adv, "logits_adv")
    if clean.shape != adv.shape:
        raise MedAdvInputError(f"logits_clean and logits_adv must have the same shape, got "
                               f"{tuple(logits_clean.shape)} and {tuple(logits_adv.shape)}")
    return clean, adv


def _labels(y: Any, raw_logits: torch.Tensor, two: torch.Tensor) -> torch.Tensor:
    """Labels as ``(N,)`` long class ids of the two-logit view ``two`` (0/1 for a single logit)."""
    if isinstance(y, torch.Tensor) and type(y) is not torch.Tensor:
        y = y.as_subclass(torch.Tensor)
    return class_ids(y, raw_logits, "labels").to(two.device)


def trades_kl(logits_adv: torch.Tensor, logits_clean: torch.Tensor) -> torch.Tensor:
    """Per-sample :math:`\\mathrm{KL}(p(x_i) \\Vert p(x'_i))` ``(N,)``: TRADES' inner objective and robust term.

    As the inner objective it is a :func:`~medadv_monai.attacks.pgd.pgd` ``loss_fn(output, target)`` with the clean
    logits (eval mode, detached) as its target; PGD ascends :math:`\\sum_i \\mathrm{KL}_i`, the reference's
    ``KLDivLoss(reduction="sum")``. Computed from log-softmaxes (``kl_div(..., log_target=True)``), equal to the
    reference's ``KLDivLoss(log_softmax(f(x')), softmax(f(x)))`` but finite where a probability underflows.
    """
    clean, adv = _pair(logits_clean, logits_adv)
    return F.kl_div(F.log_softmax(adv, dim=1), F.log_softmax(clean, dim=1), reduction="none",
                    log_target=True).sum(dim=1)


def pgd_at_loss(logits_adv: torch.Tensor, y: Any) -> torch.Tensor:
    """PGD-AT's loss :math:`\\frac1B \\sum_i \\mathrm{CE}(f(x'_i), y_i)`, a scalar.

    Args:
        logits_adv: ``(N, 1)`` or ``(N, K)`` logits on the adversarial batch (single logit: BCE on :math:`z`).
        y: ``(N,)`` or ``(N, 1)`` class ids (0/1 for a single logit).
    """
    adv = _logits(logits_adv, "logits_adv")
    return F.cross_entropy(adv, _labels(y, logits_adv, adv))


def trades_loss(logits_clean: torch.Tensor, logits_adv: torch.Tensor, y: Any, beta: float = 6.0) -> torch.Tensor:
    """TRADES' loss :math:`\\frac1B \\sum_i \\mathrm{CE}(f(x_i), y_i) + \\beta \\frac1B \\sum_i
    \\mathrm{KL}(p(x_i) \\Vert p(x'_i))`, a scalar.

    As in the reference (``yaodongyu/TRADES``, ``trades.py``) nothing is detached: the gradient flows through both
    :math:`p(x)` (the KL target) and :math:`p(x')`. With :math:`x' = x` (same logits) the KL is 0 and this is CE.

    Args:
        logits_clean, logits_adv: ``(N, 1)`` or ``(N, K)`` logits on the clean and the adversarial batch.
        y: ``(N,)`` or ``(N, 1)`` class ids (0/1 for a single logit).
        beta: the robustness weight :math:`\\beta \\ge 0` (6 in the paper's experiments and the survey).
    """
    beta = check_nonneg(beta, "beta")
    clean, adv = _pair(logits_clean, logits_adv)
    ce = F.cross_entropy(clean, _labels(y, logits_clean, clean))
    return ce + beta * trades_kl(adv, clean).sum() / clean.shape[0]


def mart_wrong_class(logits_adv: torch.Tensor, y: Any) -> torch.Tensor:
    """MART's :math:`y'_i = \\arg\\max_{k \\ne y_i} p_k(x'_i)` ``(N,)``: the most likely wrong class on :math:`x'`.

    The reference takes the top two of ``argsort(p(x'))`` and picks the second where the first is :math:`y`; this
    is the same class (ties aside). For two classes (and a single logit) :math:`y' = 1 - y`.
    """
    adv = _logits(logits_adv, "logits_adv")
    return _wrong_class(adv, _labels(y, logits_adv, adv))


def _wrong_class(scores: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Per row, the index of the largest score other than column ``y`` (no gradient)."""
    return scores.detach().masked_fill(F.one_hot(y, scores.shape[1]).bool(), float("-inf")).argmax(dim=1)


def mart_loss(logits_clean: torch.Tensor, logits_adv: torch.Tensor, y: Any, beta: float = 6.0) -> torch.Tensor:
    """MART's loss (module docstring), a scalar, computed as the reference (``YisenWang/MART``, ``mart.py``).

    .. math::
        L = \\underbrace{\\tfrac1B \\textstyle\\sum_i \\mathrm{CE}(f(x'_i), y_i)
            - \\tfrac1B \\sum_i \\log(1.0001 - p_{y'_i}(x'_i) + 10^{-12})}_{\\mathrm{BCE}_{adv}}
            + \\beta \\tfrac1B \\textstyle\\sum_i \\sum_k p_k(x_i)
            \\big(\\log p_k(x_i) - \\log(p_k(x'_i) + 10^{-12})\\big) \\,(1.0000001 - p_{y_i}(x_i))

    The constants 1.0001, :math:`10^{-12}` and 1.0000001 are the reference's numerical guards: they keep the logs
    finite as a probability reaches 0 or 1, and matter only within about :math:`10^{-4}` of those. As in the
    reference nothing is detached: the gradient flows through :math:`p(x')`, through the KL target :math:`p(x)`
    and through the weight :math:`1 - p_y(x)`; only the index :math:`y'` (:func:`mart_wrong_class`) carries none.

    Args:
        logits_clean, logits_adv: ``(N, 1)`` or ``(N, K)`` logits on the clean and the adversarial batch.
        y: ``(N,)`` or ``(N, 1)`` class ids (0/1 for a single logit).
        beta: the weight :math:`\\beta \\ge 0` of the misclassification-aware KL term (6 in the paper).
    """
    beta = check_nonneg(beta, "beta")
    clean, adv = _pair(logits_clean, logits_adv)
    yy = _labels(y, logits_clean, clean)
    p_adv = F.softmax(adv, dim=1)
    bce_adv = F.cross_entropy(adv, yy) + F.nll_loss(torch.log(1.0001 - p_adv + 1e-12), _wrong_class(p_adv, yy))
    p_clean = F.softmax(clean, dim=1)
    p_true = p_clean.gather(1, yy[:, None])[:, 0]
    kl = F.kl_div(torch.log(p_adv + 1e-12), p_clean, reduction="none").sum(dim=1)
    return bce_adv + beta * (kl * (1.0000001 - p_true)).sum() / clean.shape[0]


@contextlib.contextmanager
def eval_mode(model: nn.Module) -> Iterator[nn.Module]:
    """``model`` in eval mode inside the block; afterwards every submodule has exactly the mode it had before
    (a submodule kept in eval mode on purpose, e.g. frozen batch norm, stays so), also on an exception."""
    modes = [(m, m.training) for m in model.modules()]
    model.eval()
    try:
        yield model
    finally:
        for m, mode in modes:
            m.training = mode


class AdversarialTrainingLoss(nn.Module):
    """PGD-AT, TRADES or MART (module docstring) as one callable: ``loss, x_adv = loss_fn(model, x, y)``.

    A call crafts :math:`x'` with :meth:`attack` (the model in eval mode, so batch-norm statistics are neither used
    from the batch nor updated by the inner loop, and no parameter ``.grad`` is written), restores every submodule's
    mode, then evaluates the method's loss with the model in the mode it had (training): PGD-AT forwards
    :math:`x'` once, TRADES and MART forward :math:`x` and then :math:`x'` (the reference order; the reference
    TRADES forwards :math:`x` a second time for the KL target, which changes only the batch-norm running averages).
    The returned loss has a graph to the parameters; ``x_adv`` is detached.

    With :math:`\\epsilon = 0` there is no inner attack and :math:`x' = x`: PGD-AT is CE on :math:`x`, and TRADES
    and MART forward :math:`x` once and use its logits for both, so TRADES is exactly CE (KL 0, even with dropout)
    and MART is :math:`\\mathrm{BCE}_{adv}` on :math:`x`.

    Args:
        method: ``"pgd_at"``, ``"trades"`` or ``"mart"``.
        eps: L-inf budget in [0, 1] (the survey trains with {1, 2, 4, 8}/255). A settable attribute, validated on
            every assignment, so a trainer can ramp it (eps warm-up) between calls.
        alpha: inner step size > 0; ``None`` (default) takes :func:`training_alpha` of the *current* ``eps``,
            :math:`\\max(\\epsilon/4, 0.5/255)`, at every call. Settable like ``eps``.
        steps: inner PGD iterations (>= 1; 10 in the survey).
        beta: TRADES / MART weight (>= 0; 6 in the papers and the survey; unused by PGD-AT).
        generator: ``torch.Generator`` (any device) for PGD-AT's random start and TRADES' and MART's Gaussian
            start; ``None`` uses torch's global generator.

    Raises:
        MedAdvInputError: an unknown method, ``eps`` outside [0, 1], ``alpha <= 0``, ``steps < 1``, ``beta < 0``, a
            generator that is not a ``torch.Generator``; at call time a model that is not an ``nn.Module``, ``x``
            outside [0, 1] or labels that do not fit the model's outputs.

    Example:
        >>> loss_fn = AdversarialTrainingLoss("trades", eps=8 / 255)  # doctest: +SKIP
        >>> loss_fn.eps = 2 / 255  # warm-up  # doctest: +SKIP
        >>> loss, x_adv = loss_fn(model, x, y); loss.backward()  # doctest: +SKIP
    """

    def __init__(
        self,
        method: str,
        eps: float,
        alpha: float | None = None,
        steps: int = 10,
        beta: float = 6.0,
        generator: torch.Generator | None = None,
    ) -> None:
        super().__init__()
        self.method = check_choice(method, AT_METHODS, "adversarial training method")
        self.eps = eps
        self.alpha = alpha
        self.steps = check_int(steps, "steps", 1)
        self.beta = check_nonneg(beta, "beta")
        self.generator = check_generator(generator)

    @property
    def eps(self) -> float:
        """The L-inf budget in [0, 1]; assign to change it between calls (validated)."""
        return self._eps

    @eps.setter
    def eps(self, value: float) -> None:
        self._eps = check_eps(value, "eps")

    @property
    def alpha(self) -> float | None:
        """The inner step size, or ``None`` for :func:`training_alpha` of the current ``eps``."""
        return self._alpha

    @alpha.setter
    def alpha(self, value: float | None) -> None:
        self._alpha = None if value is None else check_positive(value, "alpha")

    @property
    def step_size(self) -> float:
        """The step size the next call uses: ``alpha``, or :math:`\\max(\\epsilon/4, 0.5/255)` when it is ``None``."""
        return training_alpha(self.eps) if self._alpha is None else self._alpha

    def extra_repr(self) -> str:
        return (f"method={self.method!r}, eps={self.eps:.6g}, alpha={self.alpha!r}, steps={self.steps}, "
                f"beta={self.beta:g}")

    @staticmethod
    def _model(model: Any) -> nn.Module:
        if not isinstance(model, nn.Module):
            raise MedAdvInputError(f"model must be a torch.nn.Module (its train/eval mode is switched for the inner "
                                   f"attack), got {type(model).__name__}")
        return model

    def _craft(self, model: nn.Module, x: torch.Tensor, y: Any) -> torch.Tensor:
        """:math:`x'` from the validated plain ``x`` (eval mode, restored)."""
        if self.eps == 0:
            return x.clone()
        kw = dict(eps=self.eps, alpha=self.step_size, steps=self.steps, generator=self.generator)
        if isinstance(model, nn.parallel.DistributedDataParallel):  # the local replica: no gradient sync to arm
            model = model.module
        with eval_mode(model):
            if self.method == "pgd_at":  # Madry et al.: a uniform random start
                return pgd(model, x, y, random_start=True, **kw)
            g = self.generator  # TRADES and MART (their reference code): x + 0.001 N(0, 1)
            noise = torch.randn(x.shape, generator=g, device=g.device if g is not None else x.device, dtype=x.dtype)
            start = TRADES_INIT_STD * noise.to(x.device)
            if self.method == "mart":
                return pgd(model, x, y, random_start=False, init_delta=start, **kw)
            with torch.no_grad():
                clean = model(x)
            _labels(y, clean, _logits(clean, "model output"))  # fail before the attack, not after it
            return pgd(model, x, clean.detach(), random_start=False, init_delta=start, loss_fn=trades_kl, **kw)

    def attack(self, model: nn.Module, x: torch.Tensor, y: Any) -> torch.Tensor:
        """Only the inner maximisation: :math:`x'` (detached), the model's modes, parameters, ``.grad`` and
        batch-norm statistics left as they were. ``x`` in [0, 1], ``(N, C, H, W)`` or ``(N, C, D, H, W)``."""
        model = self._model(model)
        x, _ = check_budget(x, self.eps, None)
        return self._craft(model, x, y)

    def forward(self, model: nn.Module, x: torch.Tensor, y: Any) -> tuple[torch.Tensor, torch.Tensor]:
        """``(loss, x_adv)``: the method's scalar loss (with a graph to the parameters) and the detached :math:`x'`.

        Args:
            model: the classifier, ``(N, C, *S) -> (N, 1)`` or ``(N, K)`` logits, in the mode to train in.
            x: clean inputs in [0, 1], ``(N, C, H, W)`` or ``(N, C, D, H, W)``.
            y: ``(N,)`` or ``(N, 1)`` class ids (0/1 for a single logit).
        """
        model = self._model(model)
        x, _ = check_budget(x, self.eps, None)
        x_adv = self._craft(model, x, y)
        if self.method == "pgd_at":
            return pgd_at_loss(model(x_adv), y), x_adv
        logits_clean = model(x)
        logits_adv = logits_clean if self.eps == 0 else model(x_adv)
        fn = trades_loss if self.method == "trades" else mart_loss
        return fn(logits_clean, logits_adv, y, self.beta), x_adv
