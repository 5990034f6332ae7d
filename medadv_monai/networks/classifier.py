"""The slice classifier under attack: a compact 2D CNN that outputs one tumour logit per slice."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

__all__ = ["SliceClassifier"]


class SliceClassifier(nn.Module):
    """Compact CNN: ``len(channels)`` blocks of 3x3 conv (+ batch norm) + ReLU + 2x2 max-pool, global average
    pooling, dropout and one linear logit (positive: the slice contains tumour).

    The default (32, 64, 128) is the reference work's network. MONAI's 2D ``resnet18`` or ``DenseNet121`` replace
    it by editing ``network_def`` in the bundle config (see the bundle's docs/README.md).

    **Decision threshold.** A single-logit model carries its decision threshold :math:`t` (a logit) as the buffer
    ``decision_threshold``, saved in its state dict. In eval mode it returns :math:`z - t`, so "logit > 0" (the
    rule every prediction, accuracy and attack-success count in this package uses) means :math:`z > t`; in train
    mode it returns :math:`z`, so training is unaffected. :class:`~medadv_monai.handlers.CalibrateThreshold` sets
    :math:`t` on the validation split. The shift changes no gradient sign, so the sign-gradient attacks take the
    same steps; ROC AUC is unchanged. A state dict without the buffer (an older checkpoint) loads with :math:`t = 0`.

    Args:
        in_channels: input channels (one per modality).
        channels: output channels of each conv block.
        batch_norm: put batch norm after each conv.
        dropout: dropout probability before the linear layer.
        num_classes: outputs; 1 gives a single logit for BCE-with-logits.
    """

    def __init__(
        self,
        in_channels: int = 1,
        channels: Sequence[int] = (32, 64, 128),
        batch_norm: bool = True,
        dropout: float = 0.0,
        num_classes: int = 1,
    ) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        prev = in_channels
        for ch in channels:
            layers += [nn.Conv2d(prev, ch, 3, padding=1, bias=not batch_norm)]
            layers += [nn.BatchNorm2d(ch)] if batch_norm else []
            layers += [nn.ReLU(inplace=True), nn.MaxPool2d(2)]
            prev = ch
        self.features = nn.Sequential(*layers)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.dropout = nn.Dropout(dropout)
        self.fc = nn.Linear(prev, num_classes)
        self.register_buffer("decision_threshold", torch.zeros(()))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``(N, in_channels, H, W)`` -> logits ``(N, num_classes)``, shifted by the decision threshold in eval mode."""
        logits = self.fc(self.dropout(self.pool(self.features(x)).flatten(1)))
        if self.training or logits.shape[1] != 1:
            return logits
        return logits - self.decision_threshold

    def _load_from_state_dict(self, state_dict: dict, prefix: str, *args, **kwargs) -> None:
        state_dict.setdefault(prefix + "decision_threshold", torch.zeros(()))  # older checkpoints: t = 0
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)
