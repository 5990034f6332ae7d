"""AdvGAN networks (Xiao et al., 2018): a U-Net generator that proposes a perturbation and a PatchGAN critic.

The generator outputs a *raw* perturbation :math:`G(x)` of the input's shape, with no final activation; the
attack turns it into the bounded perturbation with :func:`medadv_monai.attacks.advgan_delta`,

.. math::
    d = \\epsilon\\, m \\tanh(G(x)), \\qquad x' = \\mathrm{clip}(x + d, 0, 1),

so the budget lives in one place for training and inference. The discriminator scores every receptive-field
patch of an image as real (clean) or fake (adversarial) and returns one logit per patch.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from monai.networks.blocks import Convolution
from monai.networks.nets import UNet
from torch import nn

__all__ = ["AdvGANGenerator", "PatchDiscriminator"]


class AdvGANGenerator(UNet):
    """A small MONAI ``UNet`` mapping an image to a raw perturbation of the same shape, :math:`G: x \\mapsto r`.

    It is MONAI's :class:`~monai.networks.nets.UNet` with AdvGAN defaults (so its state dict is a plain UNet state
    dict): five levels of 16/32/64/128/128 channels with stride-2 down-sampling, plain convolutions, instance norm
    (a sample's perturbation never depends on its batch-mates) and a linear last layer (``tanh`` and the budget
    are applied by :func:`~medadv_monai.attacks.advgan_delta`, not here).

    Depth matters more than width here: the 4x4 bottleneck of a 64x64 slice sees the whole slice, so the
    generator can make its perturbation depend on whether the slice holds a tumour at all (hide it, or fake
    one). A three-level net (16x16 bottleneck, a local view) learns one direction for every slice and fools only
    one class.

    Args:
        in_channels: input channels (one per modality).
        out_channels: output channels; ``None`` means ``in_channels`` (one perturbation per input channel).
        channels: feature channels per level (at least two levels).
        strides: down-sampling stride between levels; ``None`` means 2 everywhere.
        num_res_units: residual units per block (0: plain convolutions, faster).
        spatial_dims: 2 for slices, 3 for volumes.
        norm: MONAI norm name or ``(name, args)``; instance norm by default.
        act: MONAI activation name or ``(name, args)``.
        dropout: dropout probability.

    Example:
        >>> g = AdvGANGenerator(in_channels=1)
        >>> g(torch.rand(2, 1, 64, 64)).shape
        torch.Size([2, 1, 64, 64])
    """

    def __init__(
        self,
        in_channels: int = 1,
        out_channels: int | None = None,
        channels: Sequence[int] = (16, 32, 64, 128, 128),
        strides: Sequence[int] | None = None,
        num_res_units: int = 0,
        spatial_dims: int = 2,
        norm: str | tuple = "INSTANCE",
        act: str | tuple = "PRELU",
        dropout: float = 0.0,
    ) -> None:
        channels = tuple(int(c) for c in channels)
        super().__init__(
            spatial_dims=spatial_dims,
            in_channels=in_channels,
            out_channels=in_channels if out_channels is None else out_channels,
            channels=channels,
            strides=tuple(strides) if strides is not None else (2,) * (len(channels) - 1),
            num_res_units=num_res_units,
            norm=norm,
            act=act,
            dropout=dropout,
        )


class PatchDiscriminator(nn.Module):
    """PatchGAN discriminator: strided 4x4 convolutions with LeakyReLU, then a 3x3 convolution to one logit per patch.

    .. math::
        D(x) \\in \\mathbb{R}^{N \\times 1 \\times H / 2^L \\times W / 2^L}, \\qquad L = \\texttt{len(channels)}

    A positive logit means "clean" (real), a negative one "adversarial" (fake). With ``spectral_norm`` every
    convolution weight is divided by its largest singular value (Miyato et al., 2018), which keeps the critic
    1-Lipschitz per layer and the GAN game stable without batch norm.

    Unlike MONAI's ``PatchDiscriminator`` (doubling widths, batch norm, a list of every feature map), this one
    takes explicit widths, returns only the logits and has no batch-dependent layer.

    Args:
        in_channels: image channels.
        channels: output channels of each stride-2 block.
        spectral_norm: wrap every convolution in ``torch.nn.utils.parametrizations.spectral_norm``.
        spatial_dims: 2 or 3.
        kernel_size: kernel of the strided blocks.
        negative_slope: LeakyReLU slope.
        norm: optional MONAI norm for the blocks after the first (e.g. ``"INSTANCE"``); none by default.
    """

    def __init__(
        self,
        in_channels: int = 1,
        channels: Sequence[int] = (32, 64, 128),
        spectral_norm: bool = True,
        spatial_dims: int = 2,
        kernel_size: int = 4,
        negative_slope: float = 0.2,
        norm: str | tuple | None = None,
    ) -> None:
        super().__init__()
        act = ("LEAKYRELU", {"negative_slope": negative_slope})
        layers: list[nn.Module] = []
        prev = in_channels
        for i, ch in enumerate(channels):
            layers.append(
                Convolution(
                    spatial_dims, prev, int(ch), strides=2, kernel_size=kernel_size, padding=(kernel_size - 1) // 2,
                    act=act, norm=norm if i > 0 else None, bias=True,
                )
            )
            prev = int(ch)
        layers.append(Convolution(spatial_dims, prev, 1, strides=1, kernel_size=3, padding=1, conv_only=True))
        self.model = nn.Sequential(*layers)
        if spectral_norm:
            for module in self.model.modules():
                if isinstance(module, (nn.Conv1d, nn.Conv2d, nn.Conv3d)):
                    nn.utils.parametrizations.spectral_norm(module)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``(N, C, *spatial)`` -> per-patch logits ``(N, 1, *spatial / 2**len(channels))``."""
        return self.model(x)
