"""AdvGAN's losses (Xiao et al., IJCAI 2018), as functions and as the two callables its trainer takes.

The generator minimises

.. math::
    L_G = \\lambda_{adv} L_{attack}(f(x'), y) + \\lambda_{gan} L_{GAN}(D(x')) + \\lambda_{pert} R(d)
          + \\lambda_{tv} \\mathrm{TV}(d)

and the discriminator a GAN loss on clean (real) against adversarial (fake) images, optionally with a gradient
penalty. :class:`AdvGANGeneratorLoss` and :class:`AdvGANDiscriminatorLoss` hold every loss setting and weight;
:class:`~medadv_monai.engines.AdvGANTrainer` takes them as ``g_loss_function`` / ``d_loss_function``, as MONAI's
``GanTrainer`` does, and holds no loss mathematics itself.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn

from medadv_monai.attacks.margin import margin
from medadv_monai.errors import MedAdvInputError
from medadv_monai.metrics import total_variation
from medadv_monai.utils.checks import check_choice, check_nonneg

__all__ = [
    "ATTACK_LOSSES",
    "GAN_LOSSES",
    "PERT_NORMS",
    "AdvGANDiscriminatorLoss",
    "AdvGANGeneratorLoss",
    "attack_loss",
    "attack_mean",
    "class_ids",
    "discriminator_loss",
    "generator_gan_loss",
    "gradient_penalty",
    "perturbation_loss",
]

ATTACK_LOSSES: tuple[str, ...] = ("cw", "ce")
GAN_LOSSES: tuple[str, ...] = ("hinge", "lsgan", "bce")
PERT_NORMS: tuple[str, ...] = ("l1", "l2")


def class_ids(labels: torch.Tensor, logits: torch.Tensor, what: str) -> torch.Tensor:
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
    kind = check_choice(kind, ATTACK_LOSSES, "attack loss")
    if not isinstance(logits, torch.Tensor) or logits.ndim != 2:
        shape = tuple(logits.shape) if isinstance(logits, torch.Tensor) else type(logits).__name__
        raise MedAdvInputError(f"attack loss: model output must be (N, 1) or (N, K) logits, got {shape}")
    y = class_ids(labels, logits, "attack loss targets" if targeted else "attack loss labels")
    if kind == "cw" or logits.shape[1] == 1:  # with two logits (0, z) the log-sum-exp of the rest is its one logit
        g = margin(logits, y, targeted)
    else:
        own = logits.gather(1, y[:, None])[:, 0]
        other = logits.masked_fill(F.one_hot(y, logits.shape[1]).bool(), float("-inf")).logsumexp(dim=1)
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
    kind = check_choice(kind, GAN_LOSSES, "GAN loss")
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
    kind = check_choice(kind, GAN_LOSSES, "GAN loss")
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
    norm = check_choice(norm, PERT_NORMS, "perturbation norm")
    flat = delta.flatten(1)
    r = flat.abs().mean(dim=1) if norm == "l1" else flat.pow(2).mean(dim=1).clamp_min(1e-12).sqrt()
    return r if bound is None else torch.clamp(r - bound, min=0.0)


def attack_mean(per_sample: torch.Tensor, ok: torch.Tensor, labels: torch.Tensor | None) -> torch.Tensor:
    """Mean attack loss over attackable samples; with ``labels``, the mean over classes of per-class means."""
    if labels is None:
        return (per_sample * ok).sum() / ok.sum().clamp_min(1)
    y = labels.reshape(-1).long()
    classes = torch.unique(y[ok]) if bool(ok.any()) else y[:0]
    if len(classes) == 0:
        return (per_sample * ok).sum()  # zero, with a graph
    means = [(per_sample * ok * (y == c)).sum() / (ok & (y == c)).sum() for c in classes]
    return torch.stack(means).mean()




class AdvGANGeneratorLoss(nn.Module):
    """The generator's loss :math:`L_G` (module docstring) with its settings; returns every term.

    :math:`L_{attack}` (:func:`attack_loss`) is averaged over attackable samples (non-empty mask) only, and with
    ``class_balanced`` over each label's samples first, then over labels (:func:`attack_mean`).

    Args:
        attack_loss: ``"cw"`` or ``"ce"`` (:func:`attack_loss`); kappa: the CW margin (>= 0).
        gan_loss: ``"hinge"``, ``"lsgan"`` or ``"bce"`` (:func:`generator_gan_loss`).
        lambda_adv, lambda_gan, lambda_pert, lambda_tv: loss weights (>= 0). With ``lambda_gan = 0`` the
            trainer skips the discriminator altogether (:attr:`uses_discriminator`).
        pert_norm: ``"l1"`` or ``"l2"`` (:func:`perturbation_loss`); pert_bound: its hinge bound or ``None``.
        class_balanced: average :math:`L_{attack}` per label, then over labels,
            :math:`\\frac{1}{|C|}\\sum_c \\operatorname{mean}_{i: y_i = c} L_i`. Without it the majority class
            (tumour-free slices) decides the first direction the generator learns (e.g. "add tumour-like
            brightness everywhere"), which fools that class and hardens the other; balanced, the generator has
            to learn a perturbation that depends on whether the slice holds a tumour.

    Raises:
        MedAdvInputError: unknown loss names, negative weights or margins.
    """

    def __init__(
        self,
        attack_loss: str = "cw",
        kappa: float = 0.0,
        gan_loss: str = "hinge",
        lambda_adv: float = 1.0,
        lambda_gan: float = 0.1,
        lambda_pert: float = 0.0,
        lambda_tv: float = 0.0,
        pert_norm: str = "l2",
        pert_bound: float | None = None,
        class_balanced: bool = False,
    ) -> None:
        super().__init__()
        self.attack_loss = check_choice(attack_loss, ATTACK_LOSSES, "attack loss")
        self.kappa = check_nonneg(kappa, "kappa")
        self.gan_loss = check_choice(gan_loss, GAN_LOSSES, "GAN loss")
        self.lambda_adv = check_nonneg(lambda_adv, "lambda_adv")
        self.lambda_gan = check_nonneg(lambda_gan, "lambda_gan")
        self.lambda_pert = check_nonneg(lambda_pert, "lambda_pert")
        self.lambda_tv = check_nonneg(lambda_tv, "lambda_tv")
        self.pert_norm = check_choice(pert_norm, PERT_NORMS, "perturbation norm")
        self.pert_bound = None if pert_bound is None else check_nonneg(pert_bound, "pert_bound")
        self.class_balanced = bool(class_balanced)

    @property
    def uses_discriminator(self) -> bool:
        """Whether :math:`L_{GAN}` enters the loss at all (``lambda_gan > 0``)."""
        return self.lambda_gan > 0

    def forward(
        self,
        logits: torch.Tensor,
        targets: torch.Tensor,
        delta: torch.Tensor,
        fake_logits: torch.Tensor | None = None,
        attackable: torch.Tensor | None = None,
        labels: torch.Tensor | None = None,
        targeted: bool = False,
    ) -> dict[str, torch.Tensor]:
        """``loss_g`` and its terms ``loss_adv``, ``loss_gan``, ``loss_pert``, ``loss_tv`` (scalars).

        Args:
            logits: the classifier's logits on :math:`x'`.
            targets: classes to move away from (untargeted: the labels) or towards (targeted).
            delta: the perturbation :math:`d`.
            fake_logits: the discriminator's logits on :math:`x'`; ``None`` leaves :math:`L_{GAN}` out (warm-up).
            attackable: ``(N,)`` bool, samples whose mask is not empty (default: all).
            labels: ``(N,)`` true labels, for ``class_balanced``.
            targeted: ``targets`` are targets, not labels.
        """
        per_sample = attack_loss(logits.float(), targets, kind=self.attack_loss, targeted=targeted, kappa=self.kappa)
        ok = torch.ones_like(per_sample, dtype=torch.bool) if attackable is None else attackable
        loss_adv = attack_mean(per_sample, ok, labels if self.class_balanced else None)
        zero = torch.zeros((), device=logits.device)
        loss_gan = zero if fake_logits is None else generator_gan_loss(fake_logits.float(), self.gan_loss)
        loss_pert = perturbation_loss(delta, self.pert_norm, self.pert_bound).mean()
        loss_tv = total_variation(delta).mean()
        loss_g = (self.lambda_adv * loss_adv + self.lambda_gan * loss_gan
                  + self.lambda_pert * loss_pert + self.lambda_tv * loss_tv)
        return {"loss_g": loss_g, "loss_adv": loss_adv, "loss_gan": loss_gan, "loss_pert": loss_pert,
                "loss_tv": loss_tv}


class AdvGANDiscriminatorLoss(nn.Module):
    """The discriminator's loss: :func:`discriminator_loss` + ``gp_weight`` * :func:`gradient_penalty`.

    Args:
        gan_loss: ``"hinge"``, ``"lsgan"`` or ``"bce"``.
        gp_weight: weight of the WGAN-GP gradient penalty (0: off).

    Raises:
        MedAdvInputError: an unknown loss name or a negative weight.
    """

    def __init__(self, gan_loss: str = "hinge", gp_weight: float = 0.0) -> None:
        super().__init__()
        self.gan_loss = check_choice(gan_loss, GAN_LOSSES, "GAN loss")
        self.gp_weight = check_nonneg(gp_weight, "gp_weight")

    def forward(
        self,
        real_logits: torch.Tensor,
        fake_logits: torch.Tensor,
        discriminator: Callable[[torch.Tensor], torch.Tensor] | None = None,
        real: torch.Tensor | None = None,
        fake: torch.Tensor | None = None,
    ) -> dict[str, torch.Tensor]:
        """``loss_d`` (with the penalty) and ``loss_gp``; ``discriminator``, ``real`` and ``fake`` are needed only
        with ``gp_weight > 0``."""
        loss_d = discriminator_loss(real_logits.float(), fake_logits.float(), self.gan_loss)
        gp = torch.zeros((), device=real_logits.device)
        if self.gp_weight > 0:
            if discriminator is None or real is None or fake is None:
                raise MedAdvInputError("AdvGANDiscriminatorLoss with gp_weight > 0 needs discriminator, real and fake")
            gp = gradient_penalty(discriminator, real, fake)
            loss_d = loss_d + self.gp_weight * gp
        return {"loss_d": loss_d, "loss_gp": gp}
