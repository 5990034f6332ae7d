"""Adversarial training (PGD-AT, TRADES, MART) inside MONAI's ``SupervisedTrainer``: stage 1's defended model.

The stage-1 bundle keeps its trainer, handlers, checkpoints and validation; ``configs/train_adversarial.yaml``
replaces only what one iteration does (``train#trainer#iteration_update``) with :class:`AdversarialTrainingStep`,
which trains on :class:`~medadv_monai.losses.robust.AdversarialTrainingLoss` instead of the BCE of ``@loss`` and
first applies :class:`EpsWarmup`, an optional linear ramp of the budget. The ramp reads only the engine's state, so
a run resumed from a checkpoint computes the same budget at every iteration as an uninterrupted one. The overlay
changes no handler list and no ``initialize``, so it composes with ``multi_gpu_train.yaml`` (under DDP the inner
attack runs on each rank's local replica, ``network.module``: the weights are the same on every rank and input
gradients need no synchronisation).

What the step returns (the keys of MONAI's own iteration, so metrics and handlers work unchanged):

- ``image``: the clean batch, clamped to [0, 1] (augmentation can leave that range; the attacks need it);
- ``label``: the labels as the data loader gives them (``(N, 1)`` 0/1 floats for the slice classifier);
- ``pred``: the logits of the method's *first training-mode forward*, detached: on :math:`x'` for PGD-AT (so
  ``train_acc`` is the adversarial training accuracy), on the clean :math:`x` for TRADES and MART (the clean
  training accuracy). They are captured from the loss's own forward (no extra forward pass);
- ``loss``: the method's scalar loss (as MONAI's iteration: the tensor that was back-propagated).
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

import torch
from ignite.engine import Engine, Events
from monai.engines.utils import IterationEvents
from monai.utils import CommonKeys as Keys

from medadv_monai.errors import MedAdvInputError
from medadv_monai.losses.robust import AT_METHODS, AdversarialTrainingLoss, training_alpha
from medadv_monai.utils.checks import check_choice, check_eps, check_int, check_nonneg, check_positive
from medadv_monai.utils.distributed import is_main

__all__ = [
    "AdversarialTrainingStep",
    "EpsWarmup",
    "adversarial_settings",
    "check_adversarial_settings",
    "warmup_eps",
]

logger = logging.getLogger(__name__)


def check_adversarial_settings(method: Any, eps: Any, alpha: Any = None, steps: Any = 10, beta: Any = 6.0,
                               warmup_epochs: Any = 0) -> dict[str, Any]:
    """The adversarial-training settings of ``train_adversarial.yaml`` checked, each error naming its config id.

    Returns:
        ``{"method", "eps", "alpha", "steps", "beta", "warmup_epochs"}`` normalised (``alpha`` may stay ``None``).

    Raises:
        MedAdvInputError: ``method`` not one of ``pgd_at``, ``trades``, ``mart``; ``eps`` outside [0, 1];
            ``alpha`` neither ``None`` nor > 0; ``steps`` < 1; ``beta`` < 0; ``warmup_epochs`` < 0.
    """
    return {
        "method": check_choice(method, AT_METHODS, "method (the adversarial training method)"),
        "eps": check_eps(eps, "eps (the training budget)"),
        "alpha": None if alpha is None else check_positive(alpha, "alpha (the inner step size; $None: max(eps/4, "
                                                                  "0.5/255))"),
        "steps": check_int(steps, "steps (inner PGD iterations)", 1),
        "beta": check_nonneg(beta, "beta (the TRADES/MART weight)"),
        "warmup_epochs": check_int(warmup_epochs, "warmup_epochs (0: no eps warm-up)", 0),
    }


def adversarial_settings(loss: AdversarialTrainingLoss, warmup_epochs: int = 0) -> dict[str, Any]:
    """A JSON-able record of how a model is trained adversarially (for the resume stamp / metadata): the loss's
    settings at its target ``eps``, the step size used there and the warm-up."""
    return {"method": loss.method, "eps": loss.eps, "alpha": loss.alpha,
            "step_size": training_alpha(loss.eps) if loss.alpha is None else loss.alpha,
            "steps": loss.steps, "beta": loss.beta, "warmup_epochs": int(warmup_epochs)}


def warmup_eps(eps: float, iteration: int, epoch_length: int, warmup_epochs: int) -> float:
    """The budget of (1-based, global) ``iteration``: :math:`\\epsilon \\min(1, i / (W L))` for ``warmup_epochs``
    :math:`W > 0` epochs of ``epoch_length`` :math:`L` iterations, so it grows linearly from :math:`\\epsilon/(WL)`
    and reaches :math:`\\epsilon` at the last iteration of epoch :math:`W`; ``eps`` itself when :math:`W = 0`."""
    if warmup_epochs <= 0:
        return float(eps)
    return float(eps) * min(1.0, iteration / (warmup_epochs * epoch_length))


class EpsWarmup:
    """Ramp ``loss.eps`` linearly from 0 to its value at construction over the first ``warmup_epochs`` epochs.

    On every ``ITERATION_STARTED`` it sets ``loss.eps = warmup_eps(target, engine.state.iteration,
    engine.state.epoch_length, warmup_epochs)``: computed from the engine's state alone, so a run resumed from a
    checkpoint (which restores the iteration count) continues the same schedule. ``warmup_epochs = 0`` keeps
    ``eps`` fixed. Give it to :class:`AdversarialTrainingStep` (``warmup``), which calls it at the start of every
    iteration, or attach it as a trainer handler.

    Args:
        loss: the :class:`AdversarialTrainingLoss` the trainer's step uses; its ``eps`` is the target.
        warmup_epochs: epochs of the ramp (>= 0).
    """

    def __init__(self, loss: AdversarialTrainingLoss, warmup_epochs: int = 0) -> None:
        if not isinstance(loss, AdversarialTrainingLoss):
            raise MedAdvInputError(f"EpsWarmup needs an AdversarialTrainingLoss, got {type(loss).__name__}")
        self.loss, self.eps = loss, loss.eps
        self.warmup_epochs = check_int(warmup_epochs, "warmup_epochs (0: no eps warm-up)", 0)

    def attach(self, engine: Engine) -> None:
        engine.add_event_handler(Events.ITERATION_STARTED, self)

    def __call__(self, engine: Engine) -> None:
        length = engine.state.epoch_length or 1
        eps = warmup_eps(self.eps, engine.state.iteration, length, self.warmup_epochs)
        if self.warmup_epochs and (engine.state.iteration - 1) % length == 0 and is_main():  # once per epoch
            logger.info(f"epoch {engine.state.epoch}: adversarial training eps {eps:.6g} (= {eps * 255:.4g}/255)")
        self.loss.eps = eps


class AdversarialTrainingStep:
    """One ``SupervisedTrainer`` iteration on an adversarial-training loss: ``train#trainer#iteration_update``.

    As MONAI's ``SupervisedTrainer._iteration``: prepare the batch (``engine.prepare_batch``), put the network in
    training mode, zero the gradients, compute the loss, back-propagate and step the optimizer, firing
    ``FORWARD_COMPLETED``, ``LOSS_COMPLETED``, ``BACKWARD_COMPLETED`` and ``MODEL_COMPLETED``. The loss is
    ``loss, x_adv = self.loss(engine.network, x, y)``: the inner attack runs with the network in eval mode (batch
    norm uses and keeps its running statistics), the method's forwards in training mode. The trainer's
    ``loss_function`` and ``inferer`` are not used (the network is called directly, as ``SimpleInferer`` does).
    Returns ``{image, label, pred, loss}`` (module docstring: ``pred`` is on :math:`x'` for PGD-AT, on :math:`x`
    for TRADES and MART).

    Not supported, refused with a clear error: ``amp`` (the inner attack's input gradients are kept in float32),
    gradient accumulation (``accumulation_steps > 1``) and batches with extra network arguments.

    Args:
        loss: the method, its budget and inner attack (:class:`AdversarialTrainingLoss`).
        warmup: an :class:`EpsWarmup` of ``loss``, called with the engine before each iteration (``None``: the
            budget stays ``loss.eps``).
    """

    def __init__(self, loss: AdversarialTrainingLoss, warmup: EpsWarmup | None = None) -> None:
        if not isinstance(loss, AdversarialTrainingLoss):
            raise MedAdvInputError(f"AdversarialTrainingStep needs an AdversarialTrainingLoss, got "
                                   f"{type(loss).__name__}")
        if warmup is not None and (not isinstance(warmup, EpsWarmup) or warmup.loss is not loss):
            raise MedAdvInputError("AdversarialTrainingStep warmup: expected an EpsWarmup of the step's own loss")
        self.loss, self.warmup = loss, warmup

    @staticmethod
    def _check_engine(engine: Any) -> None:
        if getattr(engine, "amp", False):
            raise MedAdvInputError("train#trainer#amp: adversarial training runs in float32; set it false")
        if getattr(engine, "accumulation_steps", 1) > 1:
            raise MedAdvInputError("train#trainer#accumulation_steps: adversarial training steps the optimizer "
                                   "every iteration; set it 1")

    def _capture(self, store: list) -> Callable:
        def hook(module: torch.nn.Module, _: Any, output: Any) -> None:
            if module.training and not store:  # the method's first training-mode forward (not the inner attack)
                store.append(output.detach())
        return hook

    def __call__(self, engine: Any, batchdata: Any) -> dict:
        if batchdata is None:
            raise ValueError("Must provide batch data for current iteration.")
        self._check_engine(engine)
        if self.warmup is not None:
            self.warmup(engine)
        batch = engine.prepare_batch(batchdata, engine.state.device, engine.non_blocking, **engine.to_kwargs)
        if len(batch) != 2 and (batch[2] or batch[3]):
            raise MedAdvInputError("adversarial training calls the network with the image alone; the batch brings "
                                   "extra network arguments")
        inputs, targets = batch[0], batch[1]
        inputs = inputs.clamp(0.0, 1.0)  # augmentation (contrast, scaling, noise) can leave [0, 1]
        engine.state.output = {Keys.IMAGE: inputs, Keys.LABEL: targets}

        network = engine.network
        network.train()
        engine.optimizer.zero_grad(set_to_none=engine.optim_set_to_none)
        logits: list[torch.Tensor] = []
        handle = network.register_forward_hook(self._capture(logits))
        try:
            loss, _ = self.loss(network, inputs, targets)
        finally:
            handle.remove()
        engine.state.output[Keys.PRED] = logits[0]
        engine.fire_event(IterationEvents.FORWARD_COMPLETED)
        engine.state.output[Keys.LOSS] = loss
        engine.fire_event(IterationEvents.LOSS_COMPLETED)
        loss.backward()
        engine.fire_event(IterationEvents.BACKWARD_COMPLETED)
        engine.optimizer.step()
        engine.fire_event(IterationEvents.MODEL_COMPLETED)
        return engine.state.output
