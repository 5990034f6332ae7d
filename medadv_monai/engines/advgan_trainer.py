"""AdvGAN training as a MONAI engine (Xiao et al., "Generating Adversarial Examples with Adversarial Networks",
IJCAI 2018).

A generator :math:`G` learns to fool a frozen classifier :math:`f` in one forward pass, with the perturbation of
:mod:`medadv_monai.attacks.advgan` (the same function at attack time):

.. math::
    d = \\epsilon\\, m \\tanh(G(x)), \\qquad x' = \\mathrm{clip}(x + d, 0, 1)

where the attack mask :math:`m` comes with the batch (an ``AttackMaskd`` in the data chain). The losses are the
callables of :mod:`medadv_monai.losses.advgan`, injected as ``g_loss_function`` / ``d_loss_function`` as in
MONAI's ``GanTrainer``; the trainer holds no loss mathematics.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import torch
from ignite.engine import Engine
from ignite.metrics import Metric
from monai.engines import Trainer
from monai.engines.utils import IterationEvents, default_metric_cmp_fn
from monai.inferers import Inferer, SimpleInferer
from monai.utils import AdversarialIterationEvents
from monai.utils.enums import CommonKeys as Keys
from torch.optim.optimizer import Optimizer

from medadv_monai.attacks._core import check_budget
from medadv_monai.attacks.advgan import advgan_delta, apply_delta
from medadv_monai.attacks.inferer import PrepareAttackBatch
from medadv_monai.attacks.targets import default_targets
from medadv_monai.errors import MedAdvInputError
from medadv_monai.losses import AdvGANDiscriminatorLoss, AdvGANGeneratorLoss, class_ids
from medadv_monai.metrics import prediction
from medadv_monai.networks import AdvGANSettings, freeze
from medadv_monai.utils.checks import check_int

__all__ = ["LOSS_KEYS", "AdvGANTrainer", "advgan_scalars"]

LOSS_KEYS: tuple[str, ...] = (
    "loss_g", "loss_d", "loss_adv", "loss_gan", "loss_pert", "loss_tv", "loss_gp", "fool_rate")
"""Scalars of every :class:`AdvGANTrainer` iteration (``fool_rate``: attackable samples the classifier gets wrong on
:math:`x'`)."""


def advgan_scalars(output: Any) -> dict[str, float]:
    """The :data:`LOSS_KEYS` of an :class:`AdvGANTrainer` output, for ``StatsHandler`` / ``TensorBoardStatsHandler``
    (``output_transform=medadv_monai.engines.advgan_scalars``)."""
    first = output if isinstance(output, Mapping) else output[0]
    return {k: float(torch.as_tensor(first[k]).reshape(-1)[0]) for k in LOSS_KEYS if k in first}


class AdvGANTrainer(Trainer):
    """Train an AdvGAN generator against a frozen classifier, inherits from MONAI ``Trainer`` and ``Workflow``.

    One iteration on a batch ``{image, label, attack_mask, ...}`` (``prepare_batch`` yields
    ``(image, label, (), {"labels", "mask", "targets"})``):

    1. :math:`x, \\epsilon m` checked by :func:`~medadv_monai.attacks._core.check_budget`.
    2. :math:`d = \\epsilon m \\tanh(G(x))` (:func:`~medadv_monai.attacks.advgan_delta`, ``G`` run by ``inferer``),
       :math:`x' = \\mathrm{clip}(x + d, 0, 1)` (:func:`~medadv_monai.attacks.apply_delta`).
    3. ``d_steps`` discriminator updates on ``d_loss_function(D(x), D(sg(x')), D, x, sg(x'))``.
    4. One generator update on ``g_loss_function(f(x'), targets, d, D(x'), attackable, labels, targeted)``
       (``loss_g`` of its output), with the just-updated discriminator.

    A generator loss with ``uses_discriminator`` false (``lambda_gan = 0``) skips the discriminator altogether.
    **Warm-up**: for the first ``d_warmup_iterations`` iterations the generator trains without the GAN term while
    the discriminator already trains on its outputs. The generator learns to attack from the first step and the
    critic's feedback starts only once it is informative, instead of a random critic pulling a random generator
    around.

    The classifier is frozen (eval mode, ``requires_grad=False``, re-asserted every iteration); the generator's
    gradients flow through :math:`x'` into it. Targets of a targeted attack come from ``prepare_batch``'s
    ``targets``, else the other class (:func:`~medadv_monai.attacks.targets.default_targets`).

    ``engine.state.output`` holds ``image``, ``label``, ``attack_mask``, ``adv`` (:math:`x'`), ``delta``, ``pred``
    (classifier logits on :math:`x'`), ``loss`` (= ``loss_g``) and the :data:`LOSS_KEYS`. Events: MONAI's
    ``IterationEvents`` (``FORWARD_COMPLETED`` after :math:`G`, ``LOSS_COMPLETED``/``BACKWARD_COMPLETED`` for the
    generator loss, ``MODEL_COMPLETED``) and ``AdversarialIterationEvents`` for the generator and discriminator
    steps, as MONAI's ``AdversarialTrainer`` fires them.

    Args:
        device: device to run on.
        max_epochs: epochs.
        train_data_loader: batches of dicts with ``image``, ``label`` and the attack mask.
        generator: :math:`G`, image -> raw perturbation of the image's shape.
        g_optimizer: generator optimizer.
        discriminator: :math:`D`, image -> logits (any shape).
        d_optimizer: discriminator optimizer.
        classifier: the model under attack (``(N, 1)`` or ``(N, K)`` logits); frozen by this trainer.
        settings: the attack (eps, targeted, mask kind, modalities), saved with every checkpoint.
        g_loss_function: the generator loss (default :class:`~medadv_monai.losses.AdvGANGeneratorLoss`).
        d_loss_function: the discriminator loss (default :class:`~medadv_monai.losses.AdvGANDiscriminatorLoss`).
        d_steps: discriminator updates per generator update (D:G step ratio).
        d_warmup_iterations: iterations without the GAN term in the generator loss (see above).
        prepare_batch: default ``PrepareAttackBatch(label_key="label", mask_key="attack_mask")``.
        inferer: runs the generator; default ``SimpleInferer()``.
        epoch_length, non_blocking, iteration_update, postprocessing, key_train_metric, additional_metrics,
        metric_cmp_fn, train_handlers, amp, event_names, event_to_attr, decollate, optim_set_to_none, to_kwargs,
        amp_kwargs: as for MONAI's ``SupervisedTrainer``.

    Raises:
        MedAdvInputError: invalid settings or step counts.
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
        settings: AdvGANSettings,
        g_loss_function: Callable[..., Mapping[str, torch.Tensor]] | None = None,
        d_loss_function: Callable[..., Mapping[str, torch.Tensor]] | None = None,
        d_steps: int = 1,
        d_warmup_iterations: int = 0,
        epoch_length: int | None = None,
        non_blocking: bool = False,
        prepare_batch: Callable | None = None,
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
        if not isinstance(settings, AdvGANSettings):
            raise MedAdvInputError(f"AdvGANTrainer settings: expected an AdvGANSettings, got {settings!r}")
        self.settings = settings
        self.g_loss_function = AdvGANGeneratorLoss() if g_loss_function is None else g_loss_function
        self.d_loss_function = AdvGANDiscriminatorLoss() if d_loss_function is None else d_loss_function
        self.d_steps = check_int(d_steps, "d_steps", 1)
        self.d_warmup_iterations = check_int(d_warmup_iterations, "d_warmup_iterations", 0)
        super().__init__(
            device=device,
            max_epochs=max_epochs,
            data_loader=train_data_loader,
            epoch_length=epoch_length,
            non_blocking=non_blocking,
            prepare_batch=prepare_batch or PrepareAttackBatch(label_key="label", mask_key="attack_mask"),
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
        self.classifier = freeze(classifier)
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

    def _discriminator_step(self, x: torch.Tensor, fake: torch.Tensor) -> torch.Tensor:
        d_net = self.discriminator
        total = torch.zeros((), device=x.device)
        gp = torch.zeros((), device=x.device)
        for _ in range(self.d_steps):
            self.d_optimizer.zero_grad(set_to_none=self.optim_set_to_none)
            with self._autocast():
                real_logits = d_net(x)
                self.fire_event(AdversarialIterationEvents.DISCRIMINATOR_REALS_FORWARD_COMPLETED)
                fake_logits = d_net(fake)
                self.fire_event(AdversarialIterationEvents.DISCRIMINATOR_FAKES_FORWARD_COMPLETED)
            terms = self.d_loss_function(real_logits, fake_logits, d_net, x, fake)
            loss_d, gp = terms["loss_d"], terms.get("loss_gp", gp)
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
        image, labels, _, kwargs = engine.prepare_batch(
            batchdata, engine.state.device, engine.non_blocking, **engine.to_kwargs)
        if kwargs.get("mask") is None:
            raise MedAdvInputError("AdvGANTrainer needs the attack mask in the batch: add an AttackMaskd to the "
                                   "preprocessing chain and pass prepare_batch=PrepareAttackBatch(mask_key=...)")
        mask = kwargs["mask"]
        settings = engine.settings
        x, budget = check_budget(image, settings.eps, mask)
        engine.state.output = {Keys.IMAGE: x, Keys.LABEL: labels, "attack_mask": mask}
        freeze(engine.classifier)
        engine.generator.train()
        engine.discriminator.train()

        # generator forward, once: its detached output feeds the discriminator, its graph the generator update
        with engine._autocast():
            delta = advgan_delta(engine.inferer(x, engine.generator).float(), budget)
            x_adv = apply_delta(x, delta)
        engine.fire_event(AdversarialIterationEvents.GENERATOR_FORWARD_COMPLETED)
        engine.fire_event(IterationEvents.FORWARD_COMPLETED)

        use_gan = getattr(engine.g_loss_function, "uses_discriminator", True)
        loss_d = engine._discriminator_step(x, x_adv.detach()) if use_gan else torch.zeros((), device=x.device)
        if not use_gan:
            engine.state.output["loss_gp"] = torch.zeros((), device=x.device)

        # generator update; D's parameters are not trained here, so they need no gradient
        engine.g_optimizer.zero_grad(set_to_none=engine.optim_set_to_none)
        engine.discriminator.requires_grad_(False)
        try:
            with engine._autocast():
                logits = engine.classifier(x_adv)
                targets = labels
                if settings.targeted:
                    targets = default_targets(labels.reshape(len(x)), logits.shape[1], kwargs.get("targets"))
                ok = mask.flatten(1).amax(dim=1) > 0  # attackable: the mask is not empty
                gan_on = use_gan and engine.state.iteration > engine.d_warmup_iterations
                fake_logits = engine.discriminator(x_adv) if gan_on else None
                engine.fire_event(AdversarialIterationEvents.GENERATOR_DISCRIMINATOR_FORWARD_COMPLETED)
                terms = engine.g_loss_function(logits, targets, delta, fake_logits=fake_logits,
                                               attackable=ok.expand(len(x)), labels=labels,
                                               targeted=settings.targeted)
            loss_g = terms["loss_g"]
            engine.fire_event(AdversarialIterationEvents.GENERATOR_LOSS_COMPLETED)
            engine.fire_event(IterationEvents.LOSS_COMPLETED)
            engine._step(loss_g, engine.g_optimizer, engine.scaler)
            engine.fire_event(AdversarialIterationEvents.GENERATOR_BACKWARD_COMPLETED)
            engine.fire_event(IterationEvents.BACKWARD_COMPLETED)
        finally:
            engine.discriminator.requires_grad_(True)
        engine.fire_event(AdversarialIterationEvents.GENERATOR_MODEL_COMPLETED)

        with torch.no_grad():
            fooled = (prediction(logits) != class_ids(labels, logits, "labels")) & ok
            fool_rate = fooled.sum() / ok.sum().clamp_min(1)
        engine.state.output.update({
            "adv": x_adv.detach(),
            "delta": delta.detach(),
            Keys.PRED: logits.detach(),
            Keys.LOSS: loss_g.detach(),
            "loss_d": loss_d.detach(),
            **{k: v.detach() for k, v in terms.items()},
            "fool_rate": fool_rate.detach().float(),
        })
        engine.fire_event(IterationEvents.MODEL_COMPLETED)
        return engine.state.output
