"""A patch-based segmentation network as one differentiable model: MONAI's sliding-window inference as a module.

A 3D model trained on patches predicts a whole volume through ``sliding_window_inference``; since MONAI 1.2 its
gradients flow back to the input, so wrapping it in a module lets every attack of the core (which only calls
``model(x)``) attack whole volumes: ``pgd(SlidingWindowModel(net, (96, 96, 96)), volume, masks, eps=...,
loss_fn=DenseLoss("dice"))``. The wrapped network keeps its mode and gets no parameter gradients from an attack.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from monai.inferers import SlidingWindowInferer

__all__ = ["SlidingWindowModel"]


class SlidingWindowModel(torch.nn.Module):
    """``forward(x) = sliding_window_inference(x, roi_size, sw_batch_size, network, overlap, mode)``.

    Args:
        network: the patch model ``(N, C, *roi) -> (N, R, *roi)``.
        roi_size: the patch size (one int per spatial dim, or one for all).
        sw_batch_size: patches per forward.
        overlap: overlap of neighbouring windows (fraction).
        mode: blending of overlapping windows, ``"constant"`` or ``"gaussian"``.
        kwargs: further ``SlidingWindowInferer`` arguments.

    Example:
        >>> model = SlidingWindowModel(unet3d, roi_size=(64, 64, 64), overlap=0.5).eval()  # doctest: +SKIP
        >>> x_adv = pgd(model, volume, region_masks, eps=4 / 255, loss_fn=DenseLoss("bce"))  # doctest: +SKIP
    """

    def __init__(self, network: torch.nn.Module, roi_size: Sequence[int] | int, sw_batch_size: int = 1,
                 overlap: float = 0.25, mode: str = "constant", **kwargs: Any) -> None:
        super().__init__()
        self.network = network
        self.inferer = SlidingWindowInferer(roi_size=roi_size, sw_batch_size=sw_batch_size, overlap=overlap,
                                            mode=mode, **kwargs)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.inferer(x, self.network)
