"""The Mobile DeepLabv3 head (MobileNetV2 paper, Section 6.3; DeepLabv3 Section 3.3).

image pooling ‖ 1×1 branch ‖ optional atrous 3×3 branches → concat → 1×1 projection → dropout → classifier.
Branch order and layer names follow TF DeepLab (image_pooling, aspp0, aspp1..3, concat_projection,
logits/semantic) so imported weights map one to one.
"""

from __future__ import annotations

from typing import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from backbone.layers import ConvBNAct, NormSpec


def conv_bn_relu(
    in_channels: int,
    out_channels: int,
    kernel_size: int = 1,
    dilation: int = 1,
    groups: int = 1,
    norm: NormSpec = NormSpec(),
) -> ConvBNAct:
    """ConvBNAct with ReLU instead of ReLU6: DeepLab's head uses plain ReLU, the backbone ReLU6."""
    layer = ConvBNAct(
        in_channels, out_channels, kernel_size, dilation=dilation, groups=groups, activation=False, norm=norm
    )
    layer.add_module("act", nn.ReLU(inplace=True))
    return layer


class ImagePooling(nn.Module):
    """Image-level features: average the whole map → 1×1 conv + BN + ReLU → back to the map size.

    TF's exported graphs pool with a fixed window computed from their crop size (33×33 for 513 at OS16), but every
    TF code path feeds them inputs of exactly that crop (padded), and TF's multi-scale evaluation scales the window
    with the input: the window always covers the whole map, so a global average is TF's pooling at any size.
    """

    def __init__(self, in_channels: int, out_channels: int, norm: NormSpec) -> None:
        super().__init__()
        self.conv = conv_bn_relu(in_channels, out_channels, norm=norm)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # Broadcast by resizing the 1×1 map rather than .expand: the same numbers, and litert-torch 0.10 converts
        # expand to a BROADCAST_TO that the LiteRT runtime then refuses.
        pooled = self.conv(x.mean((2, 3), keepdim=True))
        return F.interpolate(pooled, size=x.shape[-2:], mode="bilinear", align_corners=True)


def atrous_branch(in_channels: int, out_channels: int, rate: int, separable: bool, norm: NormSpec) -> nn.Module:
    """One ASPP 3×3 branch at dilation `rate`: plain conv, or TF's `aspp_with_separable_conv` (depthwise
    3×3 + BN + ReLU → pointwise 1×1 + BN + ReLU), about 9× fewer weights at 320 input channels."""
    if not separable:
        return conv_bn_relu(in_channels, out_channels, 3, dilation=rate, norm=norm)
    return nn.Sequential(
        conv_bn_relu(in_channels, in_channels, 3, dilation=rate, groups=in_channels, norm=norm),
        conv_bn_relu(in_channels, out_channels, 1, norm=norm),
    )


class DeepLabHead(nn.Module):
    """Logits at the feature map's resolution; the model upsamples them to the input."""

    def __init__(
        self,
        in_channels: int,
        num_classes: int,
        channels: int = 256,
        atrous_rates: Sequence[int] = (),
        separable: bool = False,
        dropout: float = 0.1,
        norm: NormSpec = NormSpec(),
    ) -> None:
        super().__init__()
        self.image_pooling = ImagePooling(in_channels, channels, norm)
        self.aspp0 = conv_bn_relu(in_channels, channels, norm=norm)
        self.atrous = nn.ModuleList(atrous_branch(in_channels, channels, r, separable, norm) for r in atrous_rates)
        self.project = conv_bn_relu(channels * (2 + len(atrous_rates)), channels, norm=norm)
        self.dropout = nn.Dropout(dropout)
        self.classifier = nn.Conv2d(channels, num_classes, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        branches = [self.image_pooling(x), self.aspp0(x), *(branch(x) for branch in self.atrous)]
        return self.classifier(self.dropout(self.project(torch.cat(branches, dim=1))))
