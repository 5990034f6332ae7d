"""TensorBoard images of one tumour slice and its real tumour mask, every validation epoch."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import torch
from ignite.engine import Engine, Events
from monai.visualize import plot_2d_or_3d_image

__all__ = ["TumourSliceImages"]


def _samples(batch: Any) -> list[Mapping[str, Any]]:
    """The samples of an engine batch: a decollated list of dicts, or one dict of batched tensors."""
    if isinstance(batch, Mapping):
        n = next((len(v) for v in batch.values() if isinstance(v, torch.Tensor)), 0)
        return [{k: v[i] for k, v in batch.items() if isinstance(v, torch.Tensor)} for i in range(n)]
    return [s for s in (batch or []) if isinstance(s, Mapping)]


class TumourSliceImages:
    """Write one validation slice that contains tumour (its image channels) and its tumour mask to TensorBoard.

    MONAI's ``TensorBoardImageHandler`` shows the first sample of the last batch, which is usually a tumour-free
    slice (its mask all zeros). This handler shows the slice of the epoch with the largest tumour (the first of
    them on a tie): with an unshuffled validation loader the same slice every epoch, so the images are comparable
    across epochs. A split without any tumour slice shows its first slice.

    Tags: ``{tag}/image_HW_<channel>`` (up to ``max_channels``) and ``{tag}/tumour_mask_HW_0``; the step is the
    engine's epoch (an evaluator run by ``ValidationHandler`` runs at the trainer's epoch).

    Args:
        summary_writer: a TensorBoard ``SummaryWriter``.
        image_key: the batch key of the images ``(C, H, W)``.
        mask_key: the batch key of the tumour masks ``(1, H, W)``.
        max_channels: image channels to show.
        tag: tag prefix.
        global_iter_transform: maps the epoch to the TensorBoard step.
    """

    def __init__(self, summary_writer: Any, image_key: str = "image", mask_key: str = "mask", max_channels: int = 4,
                 tag: str = "val_tumour_slice", global_iter_transform: Callable[[int], int] = lambda x: x) -> None:
        self.writer, self.image_key, self.mask_key = summary_writer, image_key, mask_key
        self.max_channels, self.tag, self.global_iter_transform = max_channels, tag, global_iter_transform
        self.first: tuple[torch.Tensor, torch.Tensor] | None = None
        self.found: tuple[torch.Tensor, torch.Tensor] | None = None
        self.area = 0.0

    def attach(self, engine: Engine) -> None:
        engine.add_event_handler(Events.EPOCH_STARTED, self.reset)
        engine.add_event_handler(Events.ITERATION_COMPLETED, self.collect)
        engine.add_event_handler(Events.EPOCH_COMPLETED, self.write)

    def reset(self, engine: Engine | None = None) -> None:
        self.first = self.found = None
        self.area = 0.0

    def collect(self, engine: Engine) -> None:
        """Keep the sample with the largest tumour mask so far (one host sync per batch)."""
        samples = [(s.get(self.image_key), s.get(self.mask_key)) for s in _samples(engine.state.batch)]
        samples = [(i, m) for i, m in samples if isinstance(i, torch.Tensor) and isinstance(m, torch.Tensor)]
        if not samples:
            return
        if self.first is None:
            self.first = self._keep(*samples[0])
        areas = torch.stack([m.detach().reshape(-1).float().sum() for _, m in samples]).tolist()
        best = max(range(len(areas)), key=lambda k: (areas[k], -k))
        if areas[best] > self.area:
            self.found, self.area = self._keep(*samples[best]), areas[best]

    @staticmethod
    def _keep(image: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return image.detach().cpu().as_subclass(torch.Tensor), mask.detach().cpu().as_subclass(torch.Tensor)

    def write(self, engine: Engine) -> None:
        pair = self.found or self.first
        if pair is None:
            return
        step = self.global_iter_transform(engine.state.epoch)
        image, mask = (t.float().numpy() for t in pair)
        plot_2d_or_3d_image(image[None], step, self.writer, max_channels=self.max_channels, tag=f"{self.tag}/image")
        plot_2d_or_3d_image(mask[None], step, self.writer, max_channels=1, tag=f"{self.tag}/tumour_mask")
        self.writer.flush()
