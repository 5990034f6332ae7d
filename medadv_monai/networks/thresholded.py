"""A multi-label segmentation network that carries one decision threshold per output channel."""

from __future__ import annotations

import torch
from torch import nn

from medadv_monai.errors import MedAdvInputError

__all__ = ["ThresholdedNetwork"]


class ThresholdedNetwork(nn.Module):
    """Wrap a network with sigmoid outputs (one channel per region) and carry each channel's decision threshold.

    The thresholds :math:`t_c` are logits, kept as the buffer ``region_thresholds`` (shape ``(C,)``, saved in the
    state dict, 0 = probability 0.5). In eval mode the wrapper returns :math:`z_c - t_c`, so "logit > 0" (the rule
    every prediction, Dice, attack loss and attack-success count in this package uses) means :math:`z_c > t_c`; in
    train mode it returns :math:`z`, so training is unaffected. This is the segmentation counterpart of
    :class:`~medadv_monai.networks.SliceClassifier`'s ``decision_threshold``;
    :class:`~medadv_monai.handlers.CalibrateRegionThresholds` sets the thresholds on the validation split.

    A state dict of the bare network (no ``network.`` prefix, no thresholds) loads too, with every :math:`t_c = 0`.

    Args:
        network: the segmentation network, logits ``(N, C, *spatial)``.
        out_channels: ``C``, the network's output channels.
    """

    def __init__(self, network: nn.Module, out_channels: int) -> None:
        super().__init__()
        if int(out_channels) < 1:
            raise MedAdvInputError(f"ThresholdedNetwork: out_channels must be >= 1, got {out_channels!r}")
        self.network = network
        self.register_buffer("region_thresholds", torch.zeros(int(out_channels)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        logits = self.network(x)
        if self.training:
            return logits
        if logits.shape[1] != len(self.region_thresholds):
            raise MedAdvInputError(f"ThresholdedNetwork: the network gave {logits.shape[1]} channels, the thresholds "
                                   f"are for {len(self.region_thresholds)}")
        return logits - self.region_thresholds.view(1, -1, *([1] * (logits.ndim - 2)))

    def _load_from_state_dict(self, state_dict: dict, prefix: str, *args, **kwargs) -> None:
        inner = prefix + "network."
        if not any(k.startswith(inner) for k in state_dict):  # the bare network's weights
            for key in [k for k in state_dict if k.startswith(prefix) and k != prefix + "region_thresholds"]:
                state_dict[inner + key[len(prefix):]] = state_dict.pop(key)
        state_dict.setdefault(prefix + "region_thresholds", torch.zeros_like(self.region_thresholds))
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)
