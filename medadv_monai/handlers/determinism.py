"""Epoch-level seeding, so an interrupted run that resumes from a checkpoint replays the same epochs."""

from __future__ import annotations

from typing import Any

from ignite.engine import Engine, Events
from monai.data.utils import set_rnd
from monai.utils import set_determinism

__all__ = ["SeedEpochs"]


class SeedEpochs:
    """At the start of every epoch, seed everything random from ``(seed, epoch)`` alone.

    Seeds Python, NumPy and torch (``monai.utils.set_determinism``), the data loader's shuffling generator, and the
    random state of every randomised transform of its dataset (``monai.data.utils.set_rnd``). Epoch ``e`` then
    draws the same shuffles and augmentations whether the run started at epoch 1 or resumed at ``e`` from a
    checkpoint, so on CPU a resumed run ends with the same weights and metrics as an uninterrupted one.

    Args:
        seed: the run's seed.
        data_loader: the trainer's data loader (its ``generator`` and ``dataset`` are reseeded).
    """

    def __init__(self, seed: int, data_loader: Any) -> None:
        self.seed, self.data_loader = int(seed), data_loader

    def attach(self, engine: Engine) -> None:
        engine.add_event_handler(Events.EPOCH_STARTED, self)

    def __call__(self, engine: Engine) -> None:
        epoch_seed = (self.seed * 100_003 + engine.state.epoch) % 2**31
        set_determinism(seed=epoch_seed)
        generator = getattr(self.data_loader, "generator", None)
        if generator is not None:
            generator.manual_seed(epoch_seed)
        set_rnd(self.data_loader.dataset, epoch_seed)
