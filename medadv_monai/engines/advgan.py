"""AdvGAN training and evaluation as MONAI engines (Xiao et al., "Generating Adversarial Examples with Adversarial
Networks", IJCAI 2018).

A generator :math:`G` learns to fool a frozen classifier :math:`f` in one forward pass. The perturbation is the
one of :mod:`medadv_monai.attacks.advgan`, in training and at attack time:

.. math::
    d = \\epsilon\\, m \\tanh(G(x)), \\qquad x' = \\mathrm{clip}(x + d, 0, 1)

with the attack mask :math:`m` built from the batch's tumour mask by ``mask_kind`` (``none``, ``seg``, ``ring``;
:func:`~medadv_monai.masks.make_attack_mask`). The generator minimises

.. math::
    L_G = \\lambda_{adv} L_{attack}(f(x'), y) + \\lambda_{gan} L_{GAN}(D(x')) + \\lambda_{pert} R(d)
          + \\lambda_{tv} \\mathrm{TV}(d)

and a PatchGAN discriminator :math:`D` learns to tell :math:`x` (real) from :math:`x'` (fake). Pieces:

* :func:`attack_loss`: CW margin (default) or cross-entropy, untargeted or targeted, for ``(N, 1)`` and ``(N, K)``.
* :func:`discriminator_loss`, :func:`generator_gan_loss`: hinge (default), least squares or BCE;
  :func:`gradient_penalty` (WGAN-GP, optional).
* :func:`perturbation_loss`: :math:`R(d)`, L1 or L2 per voxel, optionally a hinge above a bound;
  :math:`\\mathrm{TV}` is :func:`medadv_monai.metrics.total_variation` (anisotropic, per voxel).
* :class:`AdvGANTrainer`: the MONAI ``Trainer``; :class:`AdvGANEvaluator`: the attack on a validation split with
  per-sample outcomes and perturbation metrics (and, optionally, reference attacks such as PGD-10 on the same
  batch); :class:`AttackSummary`: the Ignite metric that summarises them (ASR, robust accuracy, mean L-inf ...).
* :class:`AdvGANSettings`: eps and mask rule saved with every generator checkpoint and checked on load
  (:func:`load_generator_checkpoint`); :func:`load_classifier` loads the frozen model under attack.
* :class:`AdvGANImageGrid` (TensorBoard grids clean / adversarial / :math:`|d|/\\epsilon` / mask) and
  :class:`AttackSampleWriter` (per-sample CSV and the adversarial slices as ``.npy``).
"""

from __future__ import annotations

import contextlib
import csv
import io
import logging
import math
import os
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from ignite.engine import Engine, Events
from ignite.metrics import Metric
from monai.data import decollate_batch
from monai.engines import Evaluator, Trainer
from monai.engines.utils import IterationEvents, PrepareBatchExtraInput, default_metric_cmp_fn
from monai.inferers import Inferer, SimpleInferer
from monai.utils import AdversarialIterationEvents
from monai.utils.enums import CommonKeys as Keys
from torch.optim.optimizer import Optimizer

from medadv_monai.attacks._core import check_budget
from medadv_monai.attacks.advgan import advgan, advgan_delta, apply_delta
from medadv_monai.attacks.registry import attack_kwargs, get_attack
from medadv_monai.errors import MedAdvInputError
from medadv_monai.masks import make_attack_mask
from medadv_monai.metrics import prediction, score_attack
from medadv_monai.networks.io import load_checkpoint, load_weights
from medadv_monai.utils import atomic_path, save_text

__all__ = [
    "ADVGAN_MASK_KINDS",
    "ATTACK_LOSSES",
    "GAN_LOSSES",
    "PERT_NORMS",
    "LOSS_KEYS",
    "AdvGANSettings",
    "AdvGANTrainer",
    "AdvGANEvaluator",
    "AttackSummary",
    "AdvGANImageGrid",
    "AttackSampleWriter",
    "advgan_scalars",
    "attack_loss",
    "attack_mask",
    "discriminator_loss",
    "generator_gan_loss",
    "gradient_penalty",
    "load_classifier",
    "load_generator_checkpoint",
    "perturbation_loss",
]

logger = logging.getLogger(__name__)

ADVGAN_MASK_KINDS: tuple[str, ...] = ("none", "seg", "ring")
ATTACK_LOSSES: tuple[str, ...] = ("cw", "ce")
GAN_LOSSES: tuple[str, ...] = ("hinge", "lsgan", "bce")
PERT_NORMS: tuple[str, ...] = ("l1", "l2")
LOSS_KEYS: tuple[str, ...] = (
    "loss_g", "loss_d", "loss_adv", "loss_gan", "loss_pert", "loss_tv", "loss_gp", "fool_rate")
"""Scalars of every :class:`AdvGANTrainer` iteration (``fool_rate``: attackable samples the classifier gets wrong on
:math:`x'`)."""

#: the tumour mask goes to the engines as the keyword ``tumour``
TUMOUR_KWARG = "tumour"

#: the default prepare_batch: the image, the label, and the tumour mask passed on as the ``tumour`` keyword
PREPARE_WITH_TUMOUR = PrepareBatchExtraInput({TUMOUR_KWARG: "mask"})


def _choice(value: Any, allowed: Sequence[str], what: str) -> str:
    if not isinstance(value, str) or value.lower() not in allowed:
        raise MedAdvInputError(f"{what}: expected one of {list(allowed)}, got {value!r}")
    return value.lower()


def _eps_str(eps: float) -> str:
    return f"{eps:.6g} (= {eps * 255:.4g}/255)"


def _check_eps(eps: Any, what: str = "eps") -> float:
    if isinstance(eps, bool) or not isinstance(eps, (int, float)) or not (0.0 <= float(eps) <= 1.0):
        raise MedAdvInputError(f"{what} must be a number in [0, 1] (inputs live in [0, 1]), got {eps!r}")
    return float(eps)


def _check_nonneg(value: Any, what: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or value < 0:
        raise MedAdvInputError(f"{what} must be a finite number >= 0, got {value!r}")
    return float(value)


def _check_int(value: Any, what: str, low: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < low:
        raise MedAdvInputError(f"{what} must be an integer >= {low}, got {value!r}")
    return int(value)


# ---------------------------------------------------------------------------------------------------- losses
def _class_ids(labels: torch.Tensor, logits: torch.Tensor, what: str) -> torch.Tensor:
    """Labels ``(N,)``/``(N, 1)`` as ``(N,)`` long class ids valid for ``logits`` ``(N, K)``."""
    n, k = logits.shape
    y = torch.as_tensor(labels, device=logits.device)
    if y.numel() != n:
        raise MedAdvInputError(f"{what} must have one value per sample ({n}), got shape {tuple(y.shape)}")
    y = y.reshape(n)
    hi = 1 if k == 1 else k - 1
    if bool(((y != y.round()) | (y < 0) | (y > hi)).any()):
        raise MedAdvInputError(
            f"{what} must be class ids in [0, {hi}] for a model with {k} output(s), got values in "
            f"[{y.min().item():.6g}, {y.max().item():.6g}]"
        )
    return y.long()


def attack_loss(
    logits: torch.Tensor,
    labels: torch.Tensor,
    *,
    kind: str = "cw",
    targeted: bool = False,
    kappa: float = 0.0,
) -> torch.Tensor:
    """Per-sample attack loss ``(N,)`` that the generator minimises; zero (CW) or small (CE) once the model is fooled.

    Let :math:`g` be how much the model still resists: untargeted (``labels`` = true classes :math:`y`),

    .. math::
        g = z_y - \\max_{j \\ne y} z_j \\ \\text{(cw)}, \\qquad g = z_y - \\log\\sum_{j \\ne y} e^{z_j} \\ \\text{(ce)},

    and targeted (``labels`` = targets :math:`t`) :math:`g = \\max_{j \\ne t} z_j - z_t` (cw) or
    :math:`\\log\\sum_{j \\ne t} e^{z_j} - z_t` (ce). A single-logit model
    :math:`z \\in \\mathbb{R}^{N \\times 1}` is the two-class model with logits :math:`(0, z)`, so
    :math:`g = (2y - 1) z` untargeted and :math:`g = -(2t - 1) z` targeted. Then

    .. math::
        L_{cw} = \\max(g + \\kappa, 0), \\qquad L_{ce} = \\mathrm{softplus}(g)

    ``cw`` is the Carlini-Wagner margin of AdvGAN (:math:`\\kappa \\ge 0` asks for a margin of :math:`\\kappa` logits
    beyond the decision boundary); untargeted ``ce`` is :math:`-\\log(1 - p_y)` (cross-entropy towards "not
    :math:`y`", bounded below, unlike :math:`-\\mathrm{CE}(z, y)`) and targeted ``ce`` is :math:`\\mathrm{CE}(z, t)`.
    For binary models, untargeted with :math:`y` equals targeted with :math:`t = 1 - y`.

    Args:
        logits: ``(N, 1)`` single logit or ``(N, K)`` class logits.
        labels: ``(N,)`` or ``(N, 1)`` class ids (true labels; targets when ``targeted``).
        kind: ``"cw"`` or ``"ce"``.
        targeted: push towards ``labels`` instead of away from them.
        kappa: CW confidence margin (>= 0; unused by ``ce``).

    Raises:
        MedAdvInputError: unknown ``kind``, bad logits shape or labels outside the model's classes.
    """
    kind = _choice(kind, ATTACK_LOSSES, "attack loss")
    if not isinstance(logits, torch.Tensor) or logits.ndim != 2:
        shape = tuple(logits.shape) if isinstance(logits, torch.Tensor) else type(logits).__name__
        raise MedAdvInputError(f"attack loss: model output must be (N, 1) or (N, K) logits, got {shape}")
    y = _class_ids(labels, logits, "attack loss targets" if targeted else "attack loss labels")
    if logits.shape[1] == 1:
        sign = (2 * y - 1).to(logits.dtype)
        g = (-sign if targeted else sign) * logits[:, 0]
    else:
        own = logits.gather(1, y[:, None])[:, 0]
        rest = logits.masked_fill(F.one_hot(y, logits.shape[1]).bool(), float("-inf"))
        other = rest.amax(dim=1) if kind == "cw" else rest.logsumexp(dim=1)
        g = other - own if targeted else own - other
    return torch.clamp(g + kappa, min=0.0) if kind == "cw" else F.softplus(g)


def discriminator_loss(real: torch.Tensor, fake: torch.Tensor, kind: str = "hinge") -> torch.Tensor:
    """Discriminator loss on its logits for clean images (``real``) and adversarial ones (``fake``), a scalar.

    .. math::
        \\text{hinge: } E[\\max(0, 1 - D(x))] + E[\\max(0, 1 + D(x'))], \\quad
        \\text{lsgan: } \\tfrac12 E[(D(x) - 1)^2] + \\tfrac12 E[D(x')^2], \\quad
        \\text{bce: } E[\\mathrm{softplus}(-D(x))] + E[\\mathrm{softplus}(D(x'))]

    (expectations over samples and patches).
    """
    kind = _choice(kind, GAN_LOSSES, "GAN loss")
    if kind == "hinge":
        return F.relu(1.0 - real).mean() + F.relu(1.0 + fake).mean()
    if kind == "lsgan":
        return 0.5 * ((real - 1.0) ** 2).mean() + 0.5 * (fake**2).mean()
    return F.softplus(-real).mean() + F.softplus(fake).mean()


def generator_gan_loss(fake: torch.Tensor, kind: str = "hinge") -> torch.Tensor:
    """Generator's GAN loss on the discriminator's logits for adversarial images, a scalar.

    .. math::
        \\text{hinge: } -E[D(x')], \\quad \\text{lsgan: } \\tfrac12 E[(D(x') - 1)^2], \\quad
        \\text{bce (non-saturating): } E[\\mathrm{softplus}(-D(x'))]
    """
    kind = _choice(kind, GAN_LOSSES, "GAN loss")
    if kind == "hinge":
        return -fake.mean()
    if kind == "lsgan":
        return 0.5 * ((fake - 1.0) ** 2).mean()
    return F.softplus(-fake).mean()


def gradient_penalty(discriminator: Callable[[torch.Tensor], torch.Tensor], real: torch.Tensor,
                     fake: torch.Tensor) -> torch.Tensor:
    """WGAN-GP penalty (Gulrajani et al., 2017) on random interpolates, a scalar (differentiable w.r.t. ``D``).

    .. math::
        \\hat x = a x + (1 - a) x', \\ a \\sim U(0, 1) \\text{ per sample}, \\qquad
        \\mathrm{GP} = E\\big[(\\lVert \\nabla_{\\hat x} \\textstyle\\sum D(\\hat x) \\rVert_2 - 1)^2\\big]
    """
    a = torch.rand((real.shape[0],) + (1,) * (real.ndim - 1), device=real.device, dtype=real.dtype)
    mixed = (a * real.detach() + (1 - a) * fake.detach()).requires_grad_(True)
    (grad,) = torch.autograd.grad(discriminator(mixed).sum(), mixed, create_graph=True)
    return ((grad.flatten(1).norm(dim=1) - 1.0) ** 2).mean()


def perturbation_loss(delta: torch.Tensor, norm: str = "l2", bound: float | None = None) -> torch.Tensor:
    """Per-sample size of the perturbation :math:`R(d)` ``(N,)``, per voxel so it does not grow with the image.

    .. math::
        R_{l1} = \\tfrac{1}{V} \\textstyle\\sum_i |d_i|, \\qquad R_{l2} = \\sqrt{\\tfrac{1}{V} \\sum_i d_i^2}
        \\qquad (V \\text{ voxels of a sample, all channels})

    With ``bound`` :math:`c` the loss is AdvGAN's hinge :math:`\\max(R - c, 0)`: no penalty below :math:`c`.
    The L2 root is clamped away from 0 so an all-zero perturbation (an empty mask) has a zero, not NaN, gradient.
    """
    norm = _choice(norm, PERT_NORMS, "perturbation norm")
    flat = delta.flatten(1)
    r = flat.abs().mean(dim=1) if norm == "l1" else flat.pow(2).mean(dim=1).clamp_min(1e-12).sqrt()
    return r if bound is None else torch.clamp(r - bound, min=0.0)


def attack_mask(kind: str, tumour: torch.Tensor | None, like: torch.Tensor, ring_width: int = 3) -> torch.Tensor:
    """The AdvGAN attack mask ``(N, 1, *spatial)`` of a batch: all ones (``none``), the tumour (``seg``) or the
    ``ring_width``-pixel band around it (``ring``), on ``like``'s device and dtype."""
    kind = _choice(kind, ADVGAN_MASK_KINDS, "AdvGAN mask_kind")
    if tumour is not None:
        tumour = torch.as_tensor(tumour).to(device=like.device)
    return make_attack_mask(kind, tumour, width=ring_width, like=like).to(like.dtype)


# ---------------------------------------------------------------------------------------------------- settings
class AdvGANSettings:
    """The attack a generator was trained for, saved with every checkpoint and checked when one is loaded.

    It has ``state_dict`` / ``load_state_dict``, so it goes into MONAI's ``CheckpointSaver(save_dict=...)`` and
    ``CheckpointLoader(load_dict=...)`` beside the generator (stored under ``advgan_config``). Loading compares the
    saved values with these: a different ``eps`` or ``modalities`` (or ``targeted``) is an error, a different
    ``mask_kind`` / ``ring_width`` only a warning (a generator trained without a mask may be evaluated with one:
    the mask scales its budget).

    Args:
        eps: L-inf budget in [0, 1].
        mask_kind: ``"none"``, ``"seg"`` or ``"ring"``.
        ring_width: ring width in pixels (``ring``).
        targeted: trained as a targeted attack.
        modalities: input channels the generator was trained on (checked when given on both sides).

    Raises:
        MedAdvInputError: ``eps`` outside [0, 1], unknown ``mask_kind``, ``ring_width < 1``.
    """

    def __init__(
        self,
        eps: float,
        mask_kind: str = "none",
        ring_width: int = 3,
        targeted: bool = False,
        modalities: Sequence[str] | None = None,
    ) -> None:
        self.eps = _check_eps(eps)
        self.mask_kind = _choice(mask_kind, ADVGAN_MASK_KINDS, "AdvGAN mask_kind")
        self.ring_width = _check_int(ring_width, "ring_width", 1)
        self.targeted = bool(targeted)
        self.modalities = None if modalities is None else [str(m) for m in (
            [modalities] if isinstance(modalities, str) else modalities)]

    def state_dict(self) -> dict[str, Any]:
        """Plain values only, so checkpoints load with ``torch.load(weights_only=True)``."""
        return {"eps": self.eps, "mask_kind": self.mask_kind, "ring_width": self.ring_width,
                "targeted": self.targeted, "modalities": self.modalities}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Check a saved configuration against this one (nothing is overwritten)."""
        self.check(state)

    def check(self, state: Any, source: str = "generator checkpoint") -> None:
        """Raise :class:`MedAdvInputError` if the saved ``state`` does not match (see the class docstring)."""
        if not isinstance(state, Mapping) or "eps" not in state:
            raise MedAdvInputError(f"{source}: advgan_config must be a dict with 'eps', got {state!r}")
        saved = float(state["eps"])
        if not math.isclose(saved, self.eps, rel_tol=1e-6, abs_tol=1e-9):
            raise MedAdvInputError(
                f"{source}: the generator was trained for eps={_eps_str(saved)} but the config asks for "
                f"eps={_eps_str(self.eps)}; set eps to {saved:.6g} or train a generator for {self.eps:.6g}"
            )
        if bool(state.get("targeted", False)) != self.targeted:
            raise MedAdvInputError(f"{source}: the generator was trained with targeted={bool(state.get('targeted'))}"
                                   f" but the config has targeted={self.targeted}")
        saved_mod = state.get("modalities")
        if saved_mod is not None and self.modalities is not None and list(saved_mod) != self.modalities:
            raise MedAdvInputError(f"{source}: the generator was trained on modalities {list(saved_mod)} but the "
                                   f"config has modalities {self.modalities}")
        kind, width = state.get("mask_kind", "none"), state.get("ring_width", self.ring_width)
        if kind != self.mask_kind or (kind == "ring" and width != self.ring_width):
            logger.warning(f"{source}: the generator was trained with mask_kind={kind!r} (ring_width={width}); "
                           f"it is used with mask_kind={self.mask_kind!r} (ring_width={self.ring_width})")

    def __repr__(self) -> str:
        return f"AdvGANSettings({self.state_dict()})"


def load_generator_checkpoint(
    path: str | os.PathLike,
    generator: torch.nn.Module,
    settings: AdvGANSettings | None = None,
    map_location: Any = None,
    strict: bool = True,
) -> dict[str, Any]:
    """Load a generator checkpoint (``models/generator.pt`` or a training checkpoint) into ``generator``.

    The file must hold ``{"generator": state_dict, "advgan_config": {...}}`` (what the bundle's ``CheckpointSaver``
    writes); its ``advgan_config`` is checked against ``settings`` first. Read with ``torch.load(weights_only=True)``.

    Returns:
        The saved ``advgan_config``.

    Raises:
        MedAdvInputError: a missing file, a file without ``generator``/``advgan_config``, or a configuration that
            does not match ``settings`` (e.g. another eps; the message names both values and the file).
    """
    ckpt = load_checkpoint(path, map_location=map_location)
    if not isinstance(ckpt, Mapping) or "generator" not in ckpt or "advgan_config" not in ckpt:
        keys = list(ckpt) if isinstance(ckpt, Mapping) else type(ckpt).__name__
        raise MedAdvInputError(f"generator checkpoint {str(path)!r}: expected keys 'generator' and 'advgan_config' "
                               f"(eps and mask of the attack), got {keys}; it is not a brats_advgan generator")
    if settings is not None:
        settings.check(ckpt["advgan_config"], source=f"generator checkpoint {str(path)!r}")
    load_weights(generator, path, key="generator", strict=strict)
    return dict(ckpt["advgan_config"])


def load_classifier(
    network: torch.nn.Module, path: str | os.PathLike, device: str | torch.device | None = None
) -> torch.nn.Module:
    """Load the classifier under attack from ``path`` (a state dict, or a checkpoint with a ``model`` entry; read
    with ``torch.load(weights_only=True)``) and freeze it: eval mode, ``requires_grad=False`` on every parameter,
    moved to ``device``.

    Raises:
        MedAdvInputError: a missing or unreadable file, or weights of another network (train the classifier
            bundle first, or set ``classifier_ckpt``).
    """
    load_weights(network, path, key="model")
    return network.to(device).eval().requires_grad_(False)


def _freeze(classifier: torch.nn.Module) -> None:
    classifier.eval()
    classifier.requires_grad_(False)


# ---------------------------------------------------------------------------------------------------- batches
def _unpack(batch: Any) -> tuple[torch.Tensor, torch.Tensor | None, dict[str, Any]]:
    """``prepare_batch`` output -> ``(image, label, kwargs)``."""
    if isinstance(batch, torch.Tensor):
        return batch, None, {}
    if len(batch) == 2:
        return batch[0], batch[1], {}
    return batch[0], batch[1], dict(batch[3])


def _columns(output: Any, keys: Sequence[str]) -> dict[str, torch.Tensor]:
    """Per-sample columns ``key -> (N,)`` from an engine output, batched (a dict) or decollated (a list of dicts).

    Keys missing from the output are skipped.
    """
    items = [output] if isinstance(output, Mapping) else list(output)
    cols: dict[str, torch.Tensor] = {}
    for key in keys:
        if items and key in items[0]:
            cols[key] = torch.cat([torch.as_tensor(item[key]).detach().reshape(-1).cpu() for item in items])
    return cols


def _stacked(output: Any, key: str) -> torch.Tensor:
    """A batched tensor ``(N, ...)`` of ``key`` from an engine output, batched or decollated."""
    if isinstance(output, Mapping):
        return torch.as_tensor(output[key]).detach()
    return torch.stack([torch.as_tensor(item[key]).detach() for item in output])


def advgan_scalars(output: Any) -> dict[str, float]:
    """The :data:`LOSS_KEYS` of an :class:`AdvGANTrainer` output, for ``StatsHandler`` / ``TensorBoardStatsHandler``
    (``output_transform=medadv_monai.engines.advgan_scalars``)."""
    first = output if isinstance(output, Mapping) else output[0]
    return {k: float(torch.as_tensor(first[k]).reshape(-1)[0]) for k in LOSS_KEYS if k in first}


# ---------------------------------------------------------------------------------------------------- trainer
class AdvGANTrainer(Trainer):
    """Train an AdvGAN generator against a frozen classifier, inherits from MONAI ``Trainer`` and ``Workflow``.

    One iteration on a batch ``{image, label, mask (tumour), ...}`` (``prepare_batch`` yields
    ``(image, label, (), {"tumour": mask})``):

    1. :math:`m` = :func:`attack_mask` (``mask_kind``) of the tumour; :math:`x, \\epsilon m` checked by
       :func:`~medadv_monai.attacks._core.check_budget`.
    2. :math:`d = \\epsilon m \\tanh(G(x))` (:func:`~medadv_monai.attacks.advgan_delta`, ``G`` run by ``inferer``),
       :math:`x' = \\mathrm{clip}(x + d, 0, 1)` (:func:`~medadv_monai.attacks.apply_delta`).
    3. ``d_steps`` discriminator updates on :math:`D(x)` vs :math:`D(\\mathrm{sg}(x'))`:
       :func:`discriminator_loss` + ``gp_weight`` * :func:`gradient_penalty`.
    4. One generator update on
       :math:`\\lambda_{adv} L_{attack} + \\lambda_{gan} L_{GAN} + \\lambda_{pert} R(d) + \\lambda_{tv} TV(d)`.
       :math:`L_{attack}` (:func:`attack_loss`) is averaged over attackable samples (non-empty mask) only, and
       with ``class_balanced`` over each label's samples first, then over labels;
       :math:`L_{GAN}` (:func:`generator_gan_loss`) uses the just-updated discriminator.

    **Warm-up**: for the first ``d_warmup_iterations`` iterations the generator trains without the GAN term
    (:math:`\\lambda_{gan}` treated as 0) while the discriminator already trains on its outputs. The generator
    learns to attack from the first step and the critic's feedback starts only once it is informative, instead of
    a random critic pulling a random generator around.

    The classifier is frozen (eval mode, ``requires_grad=False``, re-asserted every iteration); the generator's
    gradients flow through :math:`x'` into it. Targets of a targeted attack come from ``prepare_batch``'s
    ``targets`` keyword, else ``1 - label`` (single-logit / two-class models only).

    ``engine.state.output`` holds ``image``, ``label``, ``mask`` (attack mask), ``adv`` (:math:`x'`), ``delta``,
    ``pred`` (classifier logits on :math:`x'`), ``loss`` (= ``loss_g``) and the :data:`LOSS_KEYS`. Events: MONAI's
    ``IterationEvents`` (``FORWARD_COMPLETED`` after :math:`G`, ``LOSS_COMPLETED``/``BACKWARD_COMPLETED`` for the
    generator loss, ``MODEL_COMPLETED``) and ``AdversarialIterationEvents`` for the generator and discriminator
    steps, as MONAI's ``AdversarialTrainer`` fires them.

    Args:
        device: device to run on.
        max_epochs: epochs.
        train_data_loader: batches of dicts with ``image``, ``label`` and the tumour ``mask``.
        generator: :math:`G`, image -> raw perturbation of the image's shape.
        g_optimizer: generator optimizer.
        discriminator: :math:`D`, image -> logits (any shape).
        d_optimizer: discriminator optimizer.
        classifier: the model under attack (``(N, 1)`` or ``(N, K)`` logits); frozen by this trainer.
        eps: L-inf budget in [0, 1].
        mask_kind: ``"none"``, ``"seg"`` or ``"ring"``.
        ring_width: ring width in pixels.
        targeted: targeted attack.
        attack_loss: ``"cw"`` or ``"ce"`` (:func:`attack_loss`).
        kappa: CW margin.
        gan_loss: ``"hinge"``, ``"lsgan"`` or ``"bce"``.
        lambda_adv, lambda_gan, lambda_pert, lambda_tv: loss weights (>= 0).
        pert_norm: ``"l1"`` or ``"l2"`` (:func:`perturbation_loss`); pert_bound: its hinge bound or ``None``.
        gp_weight: weight of the gradient penalty (0: off).
        d_steps: discriminator updates per generator update (D:G step ratio).
        d_warmup_iterations: iterations without the GAN term in the generator loss (see above).
        class_balanced: average :math:`L_{attack}` per label, then over labels,
            :math:`\frac{1}{|C|}\sum_c \operatorname{mean}_{i: y_i = c} L_i`. Without it the majority class
            (tumour-free slices) decides the first direction the generator learns (e.g. "add tumour-like
            brightness everywhere"), which fools that class and hardens the other; balanced, the generator has to
            learn a perturbation that depends on whether the slice holds a tumour.
        epoch_length, non_blocking, iteration_update, postprocessing, key_train_metric, additional_metrics,
        metric_cmp_fn, train_handlers, amp, event_names, event_to_attr, decollate, optim_set_to_none, to_kwargs,
        amp_kwargs: as for MONAI's ``SupervisedTrainer``.
        prepare_batch: default ``PrepareBatchExtraInput({"tumour": "mask"})``.
        inferer: runs the generator; default ``SimpleInferer()``.

    Raises:
        MedAdvInputError: invalid eps, mask kind, loss names, weights or step counts.
    """

    def __init__(
        self,
        device: str | torch.device,
        max_epochs: int,
        train_data_loader: Any,
        generator: torch.nn.Module,
        g_optimizer: Optimizer,
        discriminator: torch.nn.Module,
        d_optimizer: Optimizer,
        classifier: torch.nn.Module,
        eps: float = 8 / 255,
        mask_kind: str = "none",
        ring_width: int = 3,
        targeted: bool = False,
        attack_loss: str = "cw",
        kappa: float = 0.0,
        gan_loss: str = "hinge",
        lambda_adv: float = 1.0,
        lambda_gan: float = 0.1,
        lambda_pert: float = 0.0,
        lambda_tv: float = 0.0,
        pert_norm: str = "l2",
        pert_bound: float | None = None,
        gp_weight: float = 0.0,
        d_steps: int = 1,
        d_warmup_iterations: int = 0,
        class_balanced: bool = False,
        epoch_length: int | None = None,
        non_blocking: bool = False,
        prepare_batch: Callable = PREPARE_WITH_TUMOUR,
        iteration_update: Callable[[Engine, Any], Any] | None = None,
        inferer: Inferer | None = None,
        postprocessing: Callable | None = None,
        key_train_metric: dict[str, Metric] | None = None,
        additional_metrics: dict[str, Metric] | None = None,
        metric_cmp_fn: Callable = default_metric_cmp_fn,
        train_handlers: Sequence | None = None,
        amp: bool = False,
        event_names: list | None = None,
        event_to_attr: dict | None = None,
        decollate: bool = True,
        optim_set_to_none: bool = False,
        to_kwargs: dict | None = None,
        amp_kwargs: dict | None = None,
    ) -> None:
        # validate before the engine exists, so a bad config fails with one clear message
        self.eps = _check_eps(eps)
        self.mask_kind = _choice(mask_kind, ADVGAN_MASK_KINDS, "AdvGAN mask_kind")
        self.ring_width = _check_int(ring_width, "ring_width", 1)
        self.attack_loss = _choice(attack_loss, ATTACK_LOSSES, "attack loss")
        self.gan_loss = _choice(gan_loss, GAN_LOSSES, "GAN loss")
        self.pert_norm = _choice(pert_norm, PERT_NORMS, "perturbation norm")
        self.kappa = _check_nonneg(kappa, "kappa")
        self.pert_bound = None if pert_bound is None else _check_nonneg(pert_bound, "pert_bound")
        self.lambdas = {name: _check_nonneg(v, name) for name, v in (
            ("lambda_adv", lambda_adv), ("lambda_gan", lambda_gan), ("lambda_pert", lambda_pert),
            ("lambda_tv", lambda_tv), ("gp_weight", gp_weight))}
        self.d_steps = _check_int(d_steps, "d_steps", 1)
        self.d_warmup_iterations = _check_int(d_warmup_iterations, "d_warmup_iterations", 0)
        self.targeted = bool(targeted)
        self.class_balanced = bool(class_balanced)
        super().__init__(
            device=device,
            max_epochs=max_epochs,
            data_loader=train_data_loader,
            epoch_length=epoch_length,
            non_blocking=non_blocking,
            prepare_batch=prepare_batch,
            iteration_update=iteration_update,
            postprocessing=postprocessing,
            key_metric=key_train_metric,
            additional_metrics=additional_metrics,
            metric_cmp_fn=metric_cmp_fn,
            handlers=train_handlers,
            amp=amp,
            event_names=[*(event_names or []), AdversarialIterationEvents],
            event_to_attr=event_to_attr,
            decollate=decollate,
            to_kwargs=to_kwargs,
            amp_kwargs=amp_kwargs,
        )
        self.generator = generator
        self.g_optimizer = g_optimizer
        self.discriminator = discriminator
        self.d_optimizer = d_optimizer
        self.classifier = classifier
        _freeze(classifier)
        self.inferer = SimpleInferer() if inferer is None else inferer
        self.optim_set_to_none = optim_set_to_none
        self.d_scaler: torch.amp.GradScaler | None = None

    def run(self) -> None:  # type: ignore[override]
        """Train; with ``amp`` the discriminator gets its own gradient scaler (it steps ``d_steps`` times)."""
        self.d_scaler = torch.amp.GradScaler("cuda") if self.amp else None
        super().run()

    def _autocast(self) -> contextlib.AbstractContextManager:
        return torch.autocast("cuda", **self.amp_kwargs) if self.amp else contextlib.nullcontext()

    def _step(self, loss: torch.Tensor, optimizer: Optimizer, scaler: Any) -> None:
        if scaler is not None:
            scaler.scale(loss).backward()
            scaler.step(optimizer)
            scaler.update()
        else:
            loss.backward()
            optimizer.step()

    def _targets(self, labels: torch.Tensor, targets: Any, logits: torch.Tensor) -> torch.Tensor:
        """Labels to move away from (untargeted) or towards (targeted; default ``1 - label``)."""
        if not self.targeted:
            return labels
        return _default_targets(labels, targets, logits)

    def _discriminator_step(self, x: torch.Tensor, fake: torch.Tensor) -> torch.Tensor:
        d_net = self.discriminator
        total = torch.zeros((), device=x.device)
        for _ in range(self.d_steps):
            self.d_optimizer.zero_grad(set_to_none=self.optim_set_to_none)
            with self._autocast():
                real_logits = d_net(x)
                self.fire_event(AdversarialIterationEvents.DISCRIMINATOR_REALS_FORWARD_COMPLETED)
                fake_logits = d_net(fake)
                self.fire_event(AdversarialIterationEvents.DISCRIMINATOR_FAKES_FORWARD_COMPLETED)
                loss_d = discriminator_loss(real_logits.float(), fake_logits.float(), self.gan_loss)
            gp = torch.zeros((), device=x.device)
            if self.lambdas["gp_weight"] > 0:
                gp = gradient_penalty(d_net, x, fake)
                loss_d = loss_d + self.lambdas["gp_weight"] * gp
            self.fire_event(AdversarialIterationEvents.DISCRIMINATOR_LOSS_COMPLETED)
            self._step(loss_d, self.d_optimizer, self.d_scaler)
            self.fire_event(AdversarialIterationEvents.DISCRIMINATOR_BACKWARD_COMPLETED)
            total = total + loss_d.detach()
        self.fire_event(AdversarialIterationEvents.DISCRIMINATOR_MODEL_COMPLETED)
        self.state.output["loss_gp"] = gp.detach()
        return total / self.d_steps

    def _iteration(self, engine: AdvGANTrainer, batchdata: dict[str, Any]) -> dict[str, Any]:
        """One discriminator phase and one generator update (see the class docstring)."""
        if batchdata is None:
            raise ValueError("Must provide batch data for current iteration.")
        image, labels, kwargs = _unpack(
            engine.prepare_batch(batchdata, engine.state.device, engine.non_blocking, **engine.to_kwargs))
        if labels is None:
            raise MedAdvInputError("AdvGANTrainer needs labels: the batch has no 'label'")
        mask = attack_mask(engine.mask_kind, kwargs.get(TUMOUR_KWARG), image, engine.ring_width)
        x, budget = check_budget(image, engine.eps, mask)
        lam = engine.lambdas
        engine.state.output = {Keys.IMAGE: x, Keys.LABEL: labels, "mask": mask}
        _freeze(engine.classifier)
        engine.generator.train()
        engine.discriminator.train()

        # generator forward, once: its detached output feeds the discriminator, its graph the generator update
        with engine._autocast():
            delta = advgan_delta(engine.inferer(x, engine.generator).float(), budget)
            x_adv = apply_delta(x, delta)
        engine.fire_event(AdversarialIterationEvents.GENERATOR_FORWARD_COMPLETED)
        engine.fire_event(IterationEvents.FORWARD_COMPLETED)

        use_gan = lam["lambda_gan"] > 0
        loss_d = engine._discriminator_step(x, x_adv.detach()) if use_gan else torch.zeros((), device=x.device)
        if not use_gan:
            engine.state.output["loss_gp"] = torch.zeros((), device=x.device)

        # generator update; D's parameters are not trained here, so they need no gradient
        engine.g_optimizer.zero_grad(set_to_none=engine.optim_set_to_none)
        engine.discriminator.requires_grad_(False)
        try:
            with engine._autocast():
                logits = engine.classifier(x_adv)
                y = engine._targets(labels, kwargs.get("targets"), logits)
                per_sample = attack_loss(logits.float(), y, kind=engine.attack_loss, targeted=engine.targeted,
                                         kappa=engine.kappa)
                ok = mask.flatten(1).amax(dim=1) > 0  # attackable: the mask is not empty
                loss_adv = _attack_mean(per_sample, ok, labels if engine.class_balanced else None)
                gan_on = use_gan and engine.state.iteration > engine.d_warmup_iterations
                loss_gan = (generator_gan_loss(engine.discriminator(x_adv).float(), engine.gan_loss) if gan_on
                            else torch.zeros((), device=x.device))
                engine.fire_event(AdversarialIterationEvents.GENERATOR_DISCRIMINATOR_FORWARD_COMPLETED)
                loss_pert = perturbation_loss(delta, engine.pert_norm, engine.pert_bound).mean()
                loss_tv = _total_variation(delta).mean()
                loss_g = (lam["lambda_adv"] * loss_adv + lam["lambda_gan"] * loss_gan
                          + lam["lambda_pert"] * loss_pert + lam["lambda_tv"] * loss_tv)
            engine.fire_event(AdversarialIterationEvents.GENERATOR_LOSS_COMPLETED)
            engine.fire_event(IterationEvents.LOSS_COMPLETED)
            engine._step(loss_g, engine.g_optimizer, engine.scaler)
            engine.fire_event(AdversarialIterationEvents.GENERATOR_BACKWARD_COMPLETED)
            engine.fire_event(IterationEvents.BACKWARD_COMPLETED)
        finally:
            engine.discriminator.requires_grad_(True)
        engine.fire_event(AdversarialIterationEvents.GENERATOR_MODEL_COMPLETED)

        with torch.no_grad():
            fooled = (prediction(logits) != _class_ids(labels, logits, "labels")) & ok
            fool_rate = fooled.sum() / ok.sum().clamp_min(1)
        engine.state.output.update({
            "adv": x_adv.detach(),
            "delta": delta.detach(),
            Keys.PRED: logits.detach(),
            Keys.LOSS: loss_g.detach(),
            "loss_g": loss_g.detach(),
            "loss_d": loss_d.detach(),
            "loss_adv": loss_adv.detach(),
            "loss_gan": loss_gan.detach(),
            "loss_pert": loss_pert.detach(),
            "loss_tv": loss_tv.detach(),
            "fool_rate": fool_rate.detach().float(),
        })
        engine.fire_event(IterationEvents.MODEL_COMPLETED)
        return engine.state.output


def _attack_mean(per_sample: torch.Tensor, ok: torch.Tensor, labels: torch.Tensor | None) -> torch.Tensor:
    """Mean attack loss over attackable samples; with ``labels``, the mean over classes of per-class means."""
    if labels is None:
        return (per_sample * ok).sum() / ok.sum().clamp_min(1)
    y = labels.reshape(-1).long()
    classes = torch.unique(y[ok]) if bool(ok.any()) else y[:0]
    if len(classes) == 0:
        return (per_sample * ok).sum()  # zero, with a graph
    means = [(per_sample * ok * (y == c)).sum() / (ok & (y == c)).sum() for c in classes]
    return torch.stack(means).mean()


def _default_targets(labels: torch.Tensor, targets: Any, logits: torch.Tensor) -> torch.Tensor:
    """Targets of a targeted attack: the given ones, else ``1 - label`` (single-logit and two-class models only)."""
    if targets is not None:
        return torch.as_tensor(targets).reshape(labels.shape[0])
    if logits.shape[1] > 2:
        raise MedAdvInputError(f"a targeted attack on a {logits.shape[1]}-class model needs explicit targets "
                               "(prepare_batch must pass targets=...); the default 1 - label only exists for a "
                               "single-logit or two-class model")
    return 1 - labels.reshape(labels.shape[0])


def _total_variation(delta: torch.Tensor) -> torch.Tensor:
    from medadv_monai.metrics import total_variation

    return total_variation(delta)


# ---------------------------------------------------------------------------------------------------- evaluation
#: the columns of a reference attack (the others, clean predictions and mask statistics, are the same as AdvGAN's)
REFERENCE_KEYS: tuple[str, ...] = ("adv_prob", "adv_pred", "adv_correct", "success", "linf", "l2", "ssim", "l0", "tv")


class AdvGANEvaluator(Evaluator):
    """Attack a split with the generator and score every sample (MONAI ``Evaluator``).

    Per batch: :math:`m` = :func:`attack_mask`, :math:`x'` = :func:`medadv_monai.attacks.advgan` (the registry's
    AdvGAN attack, with ``inferer`` running the generator), clean and adversarial logits of the classifier, and
    the per-sample columns of :func:`score_attack`. Each ``reference_attacks`` entry (e.g.
    ``{"pgd10": {"attack": "pgd", "steps": 10}}``, any attack of :func:`~medadv_monai.attacks.get_attack` with its
    keyword arguments) attacks the same batch with the same ``eps`` and mask; its columns carry the name as prefix
    (``pgd10_success``, ``pgd10_linf``, ...), so one run compares AdvGAN with it slice by slice.

    ``engine.state.output``: ``image``, ``label``, ``mask`` (attack mask), ``tumour``, ``adv``, ``pred``
    (adversarial logits), ``clean_pred`` and the per-sample columns. Summarise them with :class:`AttackSummary`.

    Args:
        device: device to run on.
        val_data_loader: batches of dicts with ``image``, ``label`` and the tumour ``mask``.
        network: the classifier under attack (frozen: eval mode, no parameter gradients).
        generator: the AdvGAN generator.
        eps: L-inf budget in [0, 1].
        mask_kind: ``"none"``, ``"seg"`` or ``"ring"``; ring_width: ring width in pixels.
        reference_attacks: ``name -> {"attack": registry name, **attack kwargs}``; run on the same batches.
        targeted: score as a targeted attack (targets from ``prepare_batch``'s ``targets`` or ``1 - label``).
        inferer: runs the generator; default ``SimpleInferer()``.
        prepare_batch: default ``PrepareBatchExtraInput({"tumour": "mask"})``.
        the rest: as for MONAI's ``SupervisedEvaluator``.
    """

    def __init__(
        self,
        device: str | torch.device,
        val_data_loader: Any,
        network: torch.nn.Module,
        generator: torch.nn.Module,
        eps: float = 8 / 255,
        mask_kind: str = "none",
        ring_width: int = 3,
        reference_attacks: Mapping[str, Mapping[str, Any]] | None = None,
        targeted: bool = False,
        epoch_length: int | None = None,
        non_blocking: bool = False,
        prepare_batch: Callable = PREPARE_WITH_TUMOUR,
        iteration_update: Callable[[Engine, Any], Any] | None = None,
        inferer: Inferer | None = None,
        postprocessing: Callable | None = None,
        key_val_metric: dict[str, Metric] | None = None,
        additional_metrics: dict[str, Metric] | None = None,
        metric_cmp_fn: Callable = default_metric_cmp_fn,
        val_handlers: Sequence | None = None,
        amp: bool = False,
        mode: str = "eval",
        event_names: list | None = None,
        event_to_attr: dict | None = None,
        decollate: bool = True,
        to_kwargs: dict | None = None,
        amp_kwargs: dict | None = None,
    ) -> None:
        self.eps = _check_eps(eps)
        self.mask_kind = _choice(mask_kind, ADVGAN_MASK_KINDS, "AdvGAN mask_kind")
        self.ring_width = _check_int(ring_width, "ring_width", 1)
        self.targeted = bool(targeted)
        self.reference_attacks = self._references(reference_attacks or {})
        super().__init__(
            device=device,
            val_data_loader=val_data_loader,
            epoch_length=epoch_length,
            non_blocking=non_blocking,
            prepare_batch=prepare_batch,
            iteration_update=iteration_update,
            postprocessing=postprocessing,
            key_val_metric=key_val_metric,
            additional_metrics=additional_metrics,
            metric_cmp_fn=metric_cmp_fn,
            val_handlers=val_handlers,
            amp=amp,
            mode=mode,
            event_names=event_names,
            event_to_attr=event_to_attr,
            decollate=decollate,
            to_kwargs=to_kwargs,
            amp_kwargs=amp_kwargs,
        )
        self.network = network
        _freeze(network)
        self.generator = generator
        self.inferer = SimpleInferer() if inferer is None else inferer

    def _references(self, refs: Mapping[str, Mapping[str, Any]]) -> dict[str, tuple[Callable, dict[str, Any]]]:
        out = {}
        for name, spec in refs.items():
            if not isinstance(spec, Mapping) or "attack" not in spec:
                raise MedAdvInputError(f"reference_attacks[{name!r}] must be a dict with 'attack' (a registry name) "
                                       f"and the attack's keyword arguments, got {spec!r}")
            kwargs = {k: v for k, v in spec.items() if k != "attack"}
            if "eps" in kwargs or "mask" in kwargs:
                raise MedAdvInputError(f"reference_attacks[{name!r}]: eps and mask are the evaluator's, not the "
                                       "reference attack's")
            kwargs = attack_kwargs(spec["attack"], eps=self.eps, **kwargs)
            out[str(name)] = (get_attack(spec["attack"]), kwargs)
        return out

    def _iteration(self, engine: AdvGANEvaluator, batchdata: dict[str, Any]) -> dict[str, Any]:
        """Attack one batch and score it (see the class docstring)."""
        if batchdata is None:
            raise ValueError("Must provide batch data for current iteration.")
        image, labels, kwargs = _unpack(
            engine.prepare_batch(batchdata, engine.state.device, engine.non_blocking, **engine.to_kwargs))
        if labels is None:
            raise MedAdvInputError("AdvGANEvaluator needs labels: the batch has no 'label'")
        tumour = kwargs.get(TUMOUR_KWARG)
        mask = attack_mask(engine.mask_kind, tumour, image, engine.ring_width)
        n = image.shape[0]
        y = labels.reshape(n)
        _freeze(engine.network)
        amp = torch.autocast("cuda", **engine.amp_kwargs) if engine.amp else contextlib.nullcontext()
        with engine.mode(engine.generator), torch.no_grad(), amp:
            x_adv = advgan(None, image, eps=engine.eps, mask=mask,
                           generator=lambda t: engine.inferer(t, engine.generator))
            clean_logits = engine.network(image).float()
            adv_logits = engine.network(x_adv).float()
        targets = _default_targets(y, kwargs.get("targets"), clean_logits) if engine.targeted else None
        engine.fire_event(IterationEvents.FORWARD_COMPLETED)
        x = image.as_subclass(torch.Tensor) if type(image) is not torch.Tensor else image
        out: dict[str, Any] = {Keys.IMAGE: x, Keys.LABEL: labels, "mask": mask, "adv": x_adv,
                               Keys.PRED: adv_logits, "clean_pred": clean_logits}
        if tumour is not None:
            out["tumour"] = tumour
        if targets is not None:
            out["targets"] = targets
        out.update(score_attack(clean_logits, adv_logits, y, x, x_adv, mask, tumour, targets))
        for name, (attack, attack_kw) in engine.reference_attacks.items():
            ref_y = targets if targets is not None else y
            ref_adv = attack(engine.network, x, ref_y, mask=mask, **attack_kw)
            with torch.no_grad():
                ref_logits = engine.network(ref_adv).float()
            cols = score_attack(clean_logits, ref_logits, y, x, ref_adv, mask, tumour, targets)
            out.update({f"{name}_{k}": v for k, v in cols.items() if k in REFERENCE_KEYS})
        engine.state.output = out
        engine.fire_event(IterationEvents.MODEL_COMPLETED)
        return engine.state.output


class AttackSummary(Metric):
    """Ignite metric: :func:`medadv_monai.metrics.summarize` over every sample of an epoch (means over samples).

    It gathers the per-sample columns of :func:`score_attack` (outcomes and perturbation metrics; with
    ``column_prefix`` those of a reference attack, e.g. ``"pgd10_"``, falling back to the unprefixed columns for
    what the attacks share: ``clean_correct``, ``attackable``, ``coverage``, ``area``) from the engine output,
    batched or decollated. At the end of the epoch the metric's own name gets ``summary[key]`` (so it can be a key
    metric, e.g. ``{"val_asr": AttackSummary("asr")}``) and every summary value is also stored as
    ``engine.state.metrics[prefix + name]``: ``clean_acc``, ``robust_acc``, ``asr``, ``asr_all`` (or
    ``targeted_success``), ``n``, ``n_attackable``, ``mean_l2``, ``mean_linf``, ``mean_ssim``, ...

    Args:
        key: the summary value returned as the metric's value.
        prefix: prefix of the other summary entries in ``engine.state.metrics``.
        column_prefix: prefix of the per-sample columns to read.
        targeted: summarise as a targeted attack.
        output_transform: engine output -> what :meth:`update` reads (default: the output itself).
    """

    def __init__(
        self,
        key: str = "asr",
        prefix: str = "val_",
        column_prefix: str = "",
        targeted: bool = False,
        output_transform: Callable = lambda out: [out] if isinstance(out, Mapping) else out,
        device: str | torch.device = "cpu",
    ) -> None:
        self.key, self.prefix, self.column_prefix, self.targeted = key, prefix, column_prefix, bool(targeted)
        self._cols: dict[str, list[torch.Tensor]] = {}
        super().__init__(output_transform=output_transform, device=device, skip_unrolling=True)

    @classmethod
    def for_references(cls, names: Sequence[str] | Mapping[str, Any], key: str = "asr",
                       targeted: bool = False) -> dict[str, AttackSummary]:
        """One summary per reference attack of :class:`AdvGANEvaluator`: ``{"<name>_<key>": AttackSummary(key,
        prefix="<name>_", column_prefix="<name>_")}`` (pass ``reference_attacks`` itself; its keys are used)."""
        return {f"{n}_{key}": cls(key, prefix=f"{n}_", column_prefix=f"{n}_", targeted=targeted) for n in names}

    def _keys(self) -> list[str]:
        from medadv_monai.metrics import OUTCOME_KEYS, PERTURBATION_KEYS

        return [*OUTCOME_KEYS, *PERTURBATION_KEYS]

    def reset(self) -> None:
        self._cols = {}
        self._labels: list[torch.Tensor] = []

    def update(self, output: Any) -> None:
        """Append the per-sample columns of one batch (``output``: a batched dict or a list of per-sample dicts)."""
        p = self.column_prefix
        own = _columns(output, [p + k for k in self._keys()])
        if p + "success" not in own:
            raise MedAdvInputError(f"AttackSummary: the engine output has no per-sample column {p + 'success'!r}; "
                                   "use AdvGANEvaluator (or score_attack) to produce it")
        shared = _columns(output, [k for k in self._keys() if p + k not in own])  # clean outcomes, mask statistics
        for k, v in [*((k[len(p):], v) for k, v in own.items()), *shared.items()]:
            self._cols.setdefault(k, []).append(v)
        if self.targeted:
            cols = _columns(output, [Keys.LABEL, "targets"])
            if "targets" not in cols:
                raise MedAdvInputError("AttackSummary(targeted=True): the engine output has no 'targets' column; "
                                       "run AdvGANEvaluator with targeted=True")
            self._labels.append(torch.stack([cols[Keys.LABEL], cols["targets"]]))

    def compute(self) -> dict[str, float]:
        """The summary of every sample seen since the last reset."""
        from medadv_monai.metrics import summarize

        if not self._cols:
            raise MedAdvInputError("AttackSummary: no samples were seen this epoch")
        per_sample: dict[str, Any] = {k: torch.cat(v) for k, v in self._cols.items()}
        if self.targeted:
            labels, targets = torch.cat(self._labels, dim=1).long()
            per_sample.update(labels=labels, targets=targets)
        return summarize(per_sample, targeted=self.targeted)

    def completed(self, engine: Engine, name: str) -> None:
        """Store ``summary[key]`` under ``name`` and every summary value under ``prefix + value name``."""
        summary = self.compute()
        if self.key not in summary:
            raise MedAdvInputError(f"AttackSummary key {self.key!r} is not a summary value; expected one of "
                                   f"{list(summary)}")
        for k, v in summary.items():
            engine.state.metrics[self.prefix + k] = v
        engine.state.metrics[name] = summary[self.key]


# ---------------------------------------------------------------------------------------------------- handlers
class AdvGANImageGrid:
    """TensorBoard image grid of an attacked batch: one row per sample, columns clean | adversarial |
    :math:`|x' - x| / \\epsilon` | attack mask (first channel, all in [0, 1]).

    Written once per evaluator run from its first batch, at global step ``engine.state.epoch`` (the trainer's
    epoch under ``ValidationHandler``). Up to ``max_samples`` rows, half of them positive slices when the batch
    has both classes.

    Args:
        summary_writer: a TensorBoard ``SummaryWriter`` (or ``NullSummaryWriter``).
        max_samples: rows of the grid.
        tag: image tag.
    """

    def __init__(self, summary_writer: Any, max_samples: int = 4, tag: str = "advgan/clean_adv_diff_mask") -> None:
        self.writer, self.max_samples, self.tag = summary_writer, _check_int(max_samples, "max_samples", 1), tag

    def attach(self, engine: Engine) -> None:
        engine.add_event_handler(Events.ITERATION_COMPLETED, self)

    def _pick(self, labels: torch.Tensor) -> list[int]:
        pos = [i for i, v in enumerate(labels.tolist()) if v > 0]
        neg = [i for i, v in enumerate(labels.tolist()) if v <= 0]
        half = self.max_samples // 2
        pick = pos[: max(half, self.max_samples - len(neg))] + neg
        return sorted(pick[: self.max_samples])

    def __call__(self, engine: Engine) -> None:
        if engine.state.epoch_length and (engine.state.iteration - 1) % engine.state.epoch_length != 0:
            return
        out = engine.state.output
        x, x_adv, mask = (_stacked(out, k).float().cpu() for k in (Keys.IMAGE, "adv", "mask"))
        labels = _stacked(out, Keys.LABEL).reshape(len(x)).float().cpu()
        eps = float(getattr(engine, "eps", 0.0))
        diff = (x_adv - x).abs()
        diff = diff / eps if eps > 0 else diff / diff.flatten(1).amax(dim=1).clamp_min(1e-12).view(-1, 1, 1, 1)
        rows = []
        for i in self._pick(labels):
            panels = [x[i, 0], x_adv[i, 0], diff[i, 0].clamp(0, 1), mask[i, 0].expand_as(x[i, 0])]
            sep = torch.ones(x.shape[-2], 1)
            rows.append(torch.cat([p for panel in panels for p in (panel, sep)][:-1], dim=1))
        grid = torch.cat([torch.cat([r, torch.ones(1, r.shape[1])]) for r in rows])[:-1]
        self.writer.add_image(self.tag, grid[None], global_step=engine.state.epoch, dataformats="CHW")


class AttackSampleWriter:
    """Write every attacked sample of an evaluator run: a per-sample CSV and the adversarial slices.

    ``samples.csv``: ``row, subject, slice_index, label`` and the per-sample columns of :func:`score_attack`
    (``clean_prob, adv_prob, success, linf, l2, ssim, ...``, and those of any reference attack), one row per slice.
    ``adversarial.npy``: the adversarial inputs ``(N, C, H, W)`` float32 in CSV row order (``row``). Both are
    written atomically when the engine completes.

    Args:
        output_dir: folder of the two files.
        save_images: also write ``adversarial.npy``.
    """

    def __init__(self, output_dir: str | os.PathLike, save_images: bool = True) -> None:
        self.output_dir = Path(output_dir)
        self.save_images = bool(save_images)
        self.rows: list[dict[str, Any]] = []
        self.images: list[np.ndarray] = []

    def attach(self, engine: Engine) -> None:
        engine.add_event_handler(Events.EPOCH_STARTED, self._reset)
        engine.add_event_handler(Events.ITERATION_COMPLETED, self._collect)
        engine.add_event_handler(Events.COMPLETED, self._write)

    def _reset(self, engine: Engine) -> None:
        self.rows, self.images = [], []

    def _collect(self, engine: Engine) -> None:
        batch, out = engine.state.batch, engine.state.output
        items = decollate_batch(batch, detach=True) if isinstance(batch, Mapping) else batch
        first = out if isinstance(out, Mapping) else out[0]
        skip = {Keys.IMAGE, Keys.LABEL, Keys.PRED, "clean_pred", "mask", "tumour", "adv"}
        names = [k for k in first if k not in skip and torch.as_tensor(first[k]).numel() == (
            len(items) if isinstance(out, Mapping) else 1)]
        cols = _columns(out, names)
        labels = _columns(out, [Keys.LABEL])[Keys.LABEL]
        for i, item in enumerate(items):
            row = {"row": len(self.rows), "subject": item.get("subject", ""),
                   "slice_index": int(torch.as_tensor(item.get("slice_index", -1)).reshape(-1)[0]),
                   "label": int(labels[i])}
            for k, v in cols.items():
                value = v[i].item()
                row[k] = int(value) if isinstance(value, bool) else value
            self.rows.append(row)
        if self.save_images:
            self.images.append(_stacked(out, "adv").float().cpu().numpy())

    def _write(self, engine: Engine) -> None:
        buf = io.StringIO()
        fields = list(self.rows[0]) if self.rows else ["row", "subject", "slice_index", "label"]
        writer = csv.DictWriter(buf, fieldnames=fields)
        writer.writeheader()
        writer.writerows(self.rows)
        save_text(buf.getvalue(), self.output_dir / "samples.csv")
        if self.save_images and self.images:
            with atomic_path(self.output_dir / "adversarial.npy", suffix=".npy") as tmp:
                np.save(tmp, np.concatenate(self.images))
