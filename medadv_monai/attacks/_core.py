"""Shared machinery of the gradient-sign attacks: validation, loss, input gradient and projection.

Every attack in this package (:func:`~medadv_monai.attacks.fgsm.fgsm`, :func:`~medadv_monai.attacks.bim.bim`,
:func:`~medadv_monai.attacks.pgd.pgd`, :func:`~medadv_monai.attacks.mifgsm.mifgsm`) is a thin loop over the
helpers here, so they share one set of conventions:

* Inputs :math:`x \\in [0, 1]^{N \\times C \\times S}` with 2 or 3 spatial dims :math:`S`.
* Loss :math:`L` is per sample, :math:`L: (f(x), y) \\mapsto \\mathbb{R}^N`; cross-entropy for an ``(N, K)`` model
  (``K >= 2``), BCE-with-logits for a single-logit ``(N, 1)`` model, or a user ``loss_fn``.
* The gradient is that of :math:`\\sum_n L_n`, so a sample's attack never depends on its batch-mates.
* Direction :math:`s = +1` (untargeted, ascend :math:`L(f(x'), y)`) or :math:`s = -1` (targeted, descend
  :math:`L(f(x'), t)`; ``y`` then holds the targets).
* Mask :math:`m \\in [0, 1]` broadcastable to ``x``; the per-voxel budget is :math:`|x'_i - x_i| \\le \\epsilon m_i`.
  Where :math:`m_i = 0`, :math:`x'_i = x_i` bit for bit.

Validation happens once, up front (:func:`prepare`); the per-step helpers do no checks and no host syncs.
"""

from __future__ import annotations

import contextlib
import numbers
from dataclasses import dataclass
from typing import Any, Callable, Iterator

import torch
import torch.nn.functional as F

from medadv_monai.attacks.checks import check_generator, check_unit_range, fmt, per_sample
from medadv_monai.attacks.margin import margin
from medadv_monai.errors import MedAdvInputError
from medadv_monai.utils.checks import check_bool

__all__ = [
    "LossFn",
    "AttackSetup",
    "prepare",
    "check_budget",
    "grad_context",
    "random_start",
    "project_delta_start",
    "signed_step",
    "step_project",
    "run_sign_loop",
]

LossFn = Callable[[torch.Tensor, Any], torch.Tensor]
"""``loss_fn(output, target) -> (N,)`` per-sample loss."""


def _as_plain(t: torch.Tensor) -> torch.Tensor:
    """Detach and drop tensor subclasses (e.g. MONAI ``MetaTensor``) so the hot loop runs on plain tensors."""
    t = t.detach()
    if type(t) is not torch.Tensor:
        t = t.as_subclass(torch.Tensor)
    if t.is_inference():  # built under torch.inference_mode: cannot take part in autograd
        with torch.inference_mode(False):
            t = t.clone()
    return t


@contextlib.contextmanager
def grad_context() -> Iterator[None]:
    """Autograd on, whatever the caller runs under (``torch.no_grad`` in evaluators, even ``inference_mode``).

    Usable as a decorator; every attack function runs inside it.
    """
    with torch.inference_mode(False), torch.enable_grad():
        yield


@dataclass
class AttackSetup:
    """Everything an attack loop needs, validated once.

    Attributes:
        x: the clean input, detached plain tensor (never written to).
        budget: :math:`\\epsilon m`, broadcastable to ``x`` (a float when there is no mask and ``eps`` is a float).
        lo: :math:`\\max(x - \\epsilon m, 0)`, the lower bound of the feasible box.
        hi: :math:`\\min(x + \\epsilon m, 1)`, the upper bound of the feasible box.
        sign: :math:`s`, +1 untargeted, -1 targeted.
        objective: callable ``x_adv -> grad`` of :math:`\\sum_n L_n(f(x'), y)` w.r.t. ``x_adv``.
        early_stop: stop moving a sample once the model is fooled on it (:meth:`_Objective.fooled`).
    """

    x: torch.Tensor
    budget: float | torch.Tensor
    lo: torch.Tensor
    hi: torch.Tensor
    sign: float
    objective: "_Objective"
    early_stop: bool = False


class _Objective:
    """``x_adv -> d/dx_adv sum_n L_n(f(x_adv), y)``; checks the model output and labels on the first call only."""

    def __init__(
        self,
        model: Callable[[torch.Tensor], Any],
        y: Any,
        n: int,
        loss_fn: LossFn | None,
        y_stats: tuple[float, float, float | None] | None,
    ) -> None:
        self.model = model
        self.y = y
        self.n = n
        self.loss_fn = loss_fn
        self.y_stats = y_stats
        self._checked = False
        self._bce = False
        self._surrogate: LossFn | None = None

    def use_loss(self, fn: LossFn) -> None:
        """Use ``fn(output, labels) -> (N,)`` instead of the default CE / BCE, after the default checks of the
        output and labels (an attack's own loss on validated ``(N, K)`` logits, e.g. APGD's DLR)."""
        self._surrogate = fn

    def _check_output(self, out: Any) -> None:
        n = self.n
        if self.loss_fn is not None:
            return
        if not isinstance(out, torch.Tensor) or out.ndim != 2 or out.shape[0] != n:
            shape = tuple(out.shape) if isinstance(out, torch.Tensor) else type(out).__name__
            raise MedAdvInputError(
                f"model output must be a tensor of shape (N, K) = ({n}, K) (K >= 2 class logits, or K = 1 for a "
                f"single logit), got {shape}; pass loss_fn for other outputs"
            )
        k = out.shape[1]
        lo, hi, nonint = self.y_stats  # type: ignore[misc]
        integral = nonint is None
        y = self.y.to(out.device)
        if k == 1:
            if not (integral and lo in (0.0, 1.0) and hi in (0.0, 1.0)):
                what = fmt(nonint) if not integral else fmt(lo if lo not in (0.0, 1.0) else hi)
                raise MedAdvInputError(
                    f"labels for a single-logit (N, 1) model must be 0 or 1, got {what} "
                    f"(label range [{fmt(lo)}, {fmt(hi)}])"
                )
            self._bce = True
            self.y = y.reshape(n).to(out.dtype)
        else:
            if not integral or lo < 0 or hi > k - 1:
                bad = lo if lo < 0 else hi
                what = f"non-integer {fmt(nonint)}" if not integral else fmt(bad)
                raise MedAdvInputError(
                    f"labels for a {k}-class model must be integer class ids in [0, {k - 1}], got {what} "
                    f"(label range [{fmt(lo)}, {fmt(hi)}])"
                )
            self.y = y.reshape(n).long()

    def _loss(self, out: Any) -> torch.Tensor:
        if self.loss_fn is not None:
            return self.loss_fn(out, self.y)
        if self._surrogate is not None:
            return self._surrogate(out, self.y)
        if self._bce:
            return F.binary_cross_entropy_with_logits(out[:, 0], self.y, reduction="none")
        return F.cross_entropy(out, self.y, reduction="none")

    def __call__(self, x_adv: torch.Tensor) -> torch.Tensor:
        return self.evaluate(x_adv)[0]

    def output(self, x_adv: torch.Tensor) -> Any:
        """The model's output on ``x_adv`` without gradients, checked (with the labels) like :meth:`evaluate`'s."""
        with torch.no_grad():
            out = self.model(x_adv)
        if not self._checked:
            self._check_output(out)
        return out

    def fooled(self, out: torch.Tensor, targeted: bool) -> torch.Tensor:
        """``(N,)`` bool: the model's decision on ``out`` (validated logits of :meth:`evaluate`) is wrong
        (untargeted) or the target (targeted): a negative :func:`~medadv_monai.attacks.margin.margin`."""
        return margin(out, self.y, targeted) < 0

    def evaluate(self, x_adv: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, Any]:
        """The gradient of :math:`\\sum_n L_n`, the per-sample loss ``(N,)`` and the model output, all detached."""
        xr = x_adv.detach().requires_grad_(True)
        with grad_context():
            out = self.model(xr)
            if not self._checked:
                self._check_output(out)
            loss = self._loss(out)
            if not self._checked:
                if not isinstance(loss, torch.Tensor) or tuple(loss.shape) != (self.n,):
                    shape = tuple(loss.shape) if isinstance(loss, torch.Tensor) else type(loss).__name__
                    raise MedAdvInputError(
                        f"loss_fn must return a per-sample loss of shape ({self.n},) (no reduction), got {shape}"
                    )
                self._checked = True
            (g,) = torch.autograd.grad(loss.sum(), xr)
        return g, loss.detach(), out.detach() if isinstance(out, torch.Tensor) else out


def _check_labels(y: Any, n: int, x: torch.Tensor) -> tuple[torch.Tensor, tuple[float, float, float | None]]:
    """Labels for the default losses: shape ``(N,)`` or ``(N, 1)``, real values.

    Returns them and ``(min, max, first non-integer value or None)`` from a single host sync.
    """
    try:
        t = torch.as_tensor(y)
    except Exception as e:  # noqa: BLE001 - any conversion failure is a bad-input error
        raise MedAdvInputError(f"labels must be a tensor of shape ({n},), got {type(y).__name__}") from e
    if t.ndim == 0 and n == 1:
        t = t.reshape(1)
    if tuple(t.shape) not in ((n,), (n, 1)):
        raise MedAdvInputError(
            f"labels must have shape (N,) = ({n},) (class ids, or 0/1 for a single-logit model) or ({n}, 1), "
            f"got shape {tuple(t.shape)}"
        )
    if t.is_complex():
        raise MedAdvInputError(f"labels must be real class ids, got dtype {t.dtype}")
    t = _as_plain(t).to(x.device)
    tf = t.double().flatten()
    nonint = (tf != tf.round()) | ~torch.isfinite(tf)
    first_bad = tf[nonint.to(torch.uint8).argmax()]
    lo, hi, bad, bad_v = torch.stack([tf.min(), tf.max(), nonint.any().double(), first_bad]).tolist()
    return t, (float(lo), float(hi), None if not bad else float(bad_v))


def check_budget(x: torch.Tensor, eps: Any, mask: Any) -> tuple[torch.Tensor, float | torch.Tensor]:
    """Validate ``x`` in [0, 1], ``eps`` in [0, 1] and ``mask`` in [0, 1] broadcastable to ``x``.

    Returns the plain detached ``x`` and the per-voxel budget :math:`\\epsilon m` (a float when there is no mask
    and ``eps`` is a float). Every attack, AdvGAN included, validates its budget here.
    """
    if not isinstance(x, torch.Tensor):
        raise MedAdvInputError(f"x must be a torch.Tensor of shape (N, C, *spatial), got {type(x).__name__}")
    if x.ndim not in (4, 5):
        raise MedAdvInputError(
            f"x must be 4D (N, C, H, W) or 5D (N, C, D, H, W), got {x.ndim}D with shape {tuple(x.shape)}"
        )
    if not x.is_floating_point():
        raise MedAdvInputError(f"x must be a floating-point tensor with values in [0, 1], got dtype {x.dtype}")
    if x.numel() == 0:
        raise MedAdvInputError(f"x must not be empty, got shape {tuple(x.shape)}")
    x = _as_plain(x)
    n = x.shape[0]

    # --- one host sync for x (and one each for mask / eps / labels when given), never inside the loop ---
    check_unit_range(x, "x", "; scale intensities to [0, 1] first")

    e, e_lo, e_hi = per_sample(eps, "eps", n, x.ndim, x)
    if not (0 <= e_lo <= 1) or not (0 <= e_hi <= 1):
        bad = e_lo if not (0 <= e_lo <= 1) else e_hi
        raise MedAdvInputError(f"eps must be in [0, 1] (inputs live in [0, 1]), got {fmt(bad)}")

    budget: float | torch.Tensor = e
    if mask is not None:
        m = torch.as_tensor(mask)
        try:
            bshape = torch.broadcast_shapes(tuple(m.shape), tuple(x.shape))
        except RuntimeError:
            bshape = None
        if bshape != tuple(x.shape) or m.ndim > x.ndim:
            raise MedAdvInputError(
                f"mask of shape {tuple(m.shape)} does not broadcast to x of shape {tuple(x.shape)}; expected "
                f"(N, 1, *spatial), (1, 1, *spatial) or (N, C, *spatial)"
            )
        if m.is_complex():
            raise MedAdvInputError(f"mask must be real with values in [0, 1], got dtype {m.dtype}")
        m = _as_plain(m).to(device=x.device, dtype=x.dtype)
        check_unit_range(m, "mask")
        budget = m * e

    return x, budget


def prepare(
    model: Callable[[torch.Tensor], Any],
    x: torch.Tensor,
    y: Any,
    *,
    eps: Any,
    targeted: bool,
    mask: Any,
    loss_fn: LossFn | None,
    early_stop: Any = False,
) -> AttackSetup:
    """Validate the common inputs once and precompute the feasible box.

    Args:
        model: callable ``(N, C, *S) -> (N, K)`` logits (or anything ``loss_fn`` accepts).
        x: inputs in ``[0, 1]``, shape ``(N, C, H, W)`` or ``(N, C, D, H, W)``.
        y: labels (or targets when ``targeted``).
        eps: float or per-sample ``(N,)`` tensor in ``[0, 1]``.
        targeted: descend the loss towards ``y`` instead of ascending it away from ``y``.
        mask: ``None`` (all ones) or values in ``[0, 1]`` broadcastable to ``x``.
        loss_fn: optional ``loss_fn(output, y) -> (N,)``.
        early_stop: freeze a sample once the model is fooled on it (needs the model's logits: no ``loss_fn``).

    Returns:
        An :class:`AttackSetup` with :math:`lo = \\max(x - \\epsilon m, 0)` and :math:`hi = \\min(x + \\epsilon m, 1)`.

    Raises:
        MedAdvInputError: on any invalid value; the message names it and what was expected.
    """
    if not isinstance(targeted, (bool, numbers.Integral)) and type(targeted).__name__ != "bool_":
        raise MedAdvInputError(f"targeted must be a bool, got {targeted!r}")
    if loss_fn is not None and not callable(loss_fn):
        raise MedAdvInputError(f"loss_fn must be callable (output, target) -> (N,) loss, got {type(loss_fn).__name__}")
    if not callable(model):
        raise MedAdvInputError(f"model must be callable, got {type(model).__name__}")
    early_stop = check_bool(early_stop, "early_stop")
    if early_stop and loss_fn is not None:
        raise MedAdvInputError("early_stop needs the model's logits to tell when it is fooled; it cannot be combined "
                               "with loss_fn")
    x, budget = check_budget(x, eps, mask)
    n = x.shape[0]

    # The feasible box: projection onto the eps-ball and the [0, 1] clip become one clamp per step.
    lo = torch.sub(x, budget).clamp_min_(0.0)  # in place: two allocations, not four
    hi = torch.add(x, budget).clamp_max_(1.0)

    if loss_fn is None:
        y_t, y_stats = _check_labels(y, n, x)
        objective = _Objective(model, y_t, n, None, y_stats)
    else:
        y_t = _as_plain(y).to(x.device) if isinstance(y, torch.Tensor) else y
        objective = _Objective(model, y_t, n, loss_fn, None)

    return AttackSetup(x=x, budget=budget, lo=lo, hi=hi, sign=-1.0 if bool(targeted) else 1.0, objective=objective,
                       early_stop=early_stop)


def signed_step(alpha: float | torch.Tensor, sign: float) -> float | torch.Tensor:
    """The signed step :math:`\\alpha s` (a float, or an ``(N, 1, ..., 1)`` tensor for per-sample ``alpha``)."""
    return alpha * sign


def random_start(setup: AttackSetup, generator: torch.Generator | None) -> torch.Tensor:
    """PGD's random start :math:`x_0 = \\mathrm{clip}(x + d_0, 0, 1)`,
    :math:`d_0 \\sim U(-\\epsilon, \\epsilon) \\cdot m`.

    ``generator`` may live on another device than ``x``; the noise is drawn there and moved.
    """
    x = setup.x
    check_generator(generator)
    dev = generator.device if generator is not None else x.device
    r = torch.rand(x.shape, generator=generator, device=dev, dtype=x.dtype).to(x.device)
    d0 = (r * 2.0 - 1.0) * setup.budget
    return torch.clamp(x + d0, 0.0, 1.0)


def project_delta_start(setup: AttackSetup, init_delta: Any) -> torch.Tensor:
    """Explicit start :math:`x_0 = \\mathrm{clip}(x + \\mathrm{clip}(\\delta, -\\epsilon m, \\epsilon m), 0, 1)`."""
    x = setup.x
    if not isinstance(init_delta, torch.Tensor):
        raise MedAdvInputError(
            f"init_delta must be a tensor broadcastable to x {tuple(x.shape)}, got {type(init_delta).__name__}"
        )
    try:
        bshape = torch.broadcast_shapes(tuple(init_delta.shape), tuple(x.shape))
    except RuntimeError:
        bshape = None
    if bshape != tuple(x.shape):
        raise MedAdvInputError(
            f"init_delta of shape {tuple(init_delta.shape)} does not broadcast to x of shape {tuple(x.shape)}"
        )
    d = _as_plain(init_delta).to(device=x.device, dtype=x.dtype)
    if not bool(torch.isfinite(d).all()):
        raise MedAdvInputError("init_delta must be finite, got NaN or inf values")
    b = setup.budget
    d = torch.clamp(d, -b, b)
    return torch.clamp(x + d, 0.0, 1.0)


def step_project(
    x_adv: torch.Tensor, direction_sign: torch.Tensor, step: float | torch.Tensor, setup: AttackSetup
) -> torch.Tensor:
    """One projected sign step; ``direction_sign`` is :math:`\\mathrm{sign}(g)` (a scratch buffer, reused as output).

    .. math::
        x' \\leftarrow \\mathrm{clip}\\big(x' + \\alpha s\\,\\mathrm{sign}(g),\\ \\max(x - \\epsilon m, 0),\\
        \\min(x + \\epsilon m, 1)\\big)

    which equals the textbook projection :math:`x + \\mathrm{clip}(x' - x, -\\epsilon m, \\epsilon m)` followed by
    :math:`\\mathrm{clip}(\\cdot, 0, 1)` up to one rounding (< 1e-6), and is exactly ``x`` where ``m == 0``
    (there ``lo == hi == x``). One fused ``clamp`` with tensor bounds replaces four element-wise ops.
    """
    if isinstance(step, torch.Tensor):
        out = torch.addcmul(x_adv, direction_sign, step, out=direction_sign)
    else:
        out = torch.add(x_adv, direction_sign, alpha=step, out=direction_sign)
    return torch.clamp(out, setup.lo, setup.hi, out=out)


def run_sign_loop(
    setup: AttackSetup,
    x0: torch.Tensor,
    *,
    alpha: float | torch.Tensor,
    steps: int,
    decay: float | None = None,
) -> torch.Tensor:
    """The iterative loop shared by BIM, PGD and MI-FGSM.

    For ``decay is None`` (BIM/PGD): :math:`x' \\leftarrow \\Pi(x' + \\alpha s\\,\\mathrm{sign}(\\nabla L))`.
    Otherwise (MI-FGSM): :math:`g_t = \\mu g_{t-1} + \\nabla L / \\mathrm{mean}(|\\nabla L|)` per sample (mean over all
    non-batch dims; an all-zero gradient stays zero instead of 0/0) and
    :math:`x' \\leftarrow \\Pi(x' + \\alpha s\\,\\mathrm{sign}(g_t))`. :math:`\\Pi` is the box projection of
    :func:`step_project`. With ``setup.early_stop`` a sample the model is already fooled on does not move, so it
    ends at the first iterate that fooled it. No validation and no host syncs happen here.
    """
    step = signed_step(alpha, setup.sign)
    x_adv = x0
    objective = setup.objective
    momentum: torch.Tensor | None = None
    dims = tuple(range(1, x0.ndim))
    view = (x0.shape[0],) + (1,) * (x0.ndim - 1)
    tiny = torch.finfo(x0.dtype).tiny
    for _ in range(steps):
        g, _, out = objective.evaluate(x_adv)
        with torch.no_grad():
            if decay is not None:
                g = g.div_(g.abs().mean(dim=dims, keepdim=True).clamp_min_(tiny))
                if momentum is not None:
                    g = g.add_(momentum, alpha=decay)
                momentum = g
                direction = torch.sign(g)
            else:
                direction = g.sign_()
            if setup.early_stop:  # a zero direction leaves a fooled sample where it is (it is inside the box)
                direction.mul_((~objective.fooled(out, setup.sign < 0)).view(view).to(direction.dtype))
            x_adv = step_project(x_adv, direction, step, setup)
    return x_adv
