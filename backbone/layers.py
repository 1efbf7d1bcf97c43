"""Building blocks of MobileNetV2: conv + BN + ReLU6 with optional TensorFlow "SAME" padding, and the
inverted residual with linear bottleneck (paper Section 3, Figure 3)."""

from __future__ import annotations

import math
from collections import OrderedDict
from dataclasses import dataclass
from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn
from torchvision.ops.misc import FrozenBatchNorm2d

PaddingMode = Literal["symmetric", "tf_same"]


@dataclass(frozen=True)
class NormSpec:
    """BatchNorm settings shared by every layer. TF checkpoints use eps 1e-3 and decay 0.997 (momentum 0.003)."""

    eps: float = 1e-5
    momentum: float = 0.1
    frozen: bool = False

    def make(self, channels: int) -> nn.Module:
        if self.frozen:
            return FrozenBatchNorm2d(channels, eps=self.eps)
        return nn.BatchNorm2d(channels, eps=self.eps, momentum=self.momentum)


class TFSamePad2d(nn.Module):
    """TensorFlow "SAME" padding for a strided conv: the odd pixel goes after (bottom/right), sized per input.

    PyTorch's symmetric padding shifts every strided layer by half a pixel against TF; official TF weights
    then still classify correctly but their scores drift, so imports use this mode.
    """

    def __init__(self, kernel_size: int, stride: int, dilation: int = 1) -> None:
        super().__init__()
        self.kernel_size, self.stride, self.dilation = kernel_size, stride, dilation

    def _total(self, size: int) -> int:
        effective = (self.kernel_size - 1) * self.dilation + 1
        return max((math.ceil(size / self.stride) - 1) * self.stride + effective - size, 0)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        pad_h, pad_w = self._total(x.shape[-2]), self._total(x.shape[-1])
        return F.pad(x, [pad_w // 2, pad_w - pad_w // 2, pad_h // 2, pad_h - pad_h // 2])

    def extra_repr(self) -> str:
        return f"kernel_size={self.kernel_size}, stride={self.stride}, dilation={self.dilation}"


class ConvBNAct(nn.Sequential):
    """Conv (no bias) → BatchNorm → optional ReLU6, with symmetric or TF "SAME" padding."""

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: int = 1,
        stride: int = 1,
        dilation: int = 1,
        groups: int = 1,
        activation: bool = True,
        norm: NormSpec = NormSpec(),
        padding_mode: PaddingMode = "symmetric",
    ) -> None:
        layers: OrderedDict[str, nn.Module] = OrderedDict()
        padding = (kernel_size - 1) // 2 * dilation
        if padding_mode == "tf_same" and stride > 1:
            layers["pad"] = TFSamePad2d(kernel_size, stride, dilation)
            padding = 0
        layers["conv"] = nn.Conv2d(
            in_channels, out_channels, kernel_size, stride, padding, dilation=dilation, groups=groups, bias=False
        )
        layers["bn"] = norm.make(out_channels)
        if activation:
            layers["act"] = nn.ReLU6(inplace=True)
        super().__init__(layers)


class InvertedResidual(nn.Module):
    """1×1 expansion (ReLU6) → 3×3 depthwise (ReLU6) → 1×1 linear projection, residual when shapes allow.

    `expand` is exposed on its own because SSDLite reads a block's expansion output (576 channels of
    block 13) as a feature map; with expansion ratio 1 it is the identity.
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        stride: int,
        dilation: int,
        expand_ratio: int,
        norm: NormSpec = NormSpec(),
        padding_mode: PaddingMode = "symmetric",
    ) -> None:
        super().__init__()
        hidden = int(round(in_channels * expand_ratio))
        self.expand: nn.Module = ConvBNAct(in_channels, hidden, 1, norm=norm) if expand_ratio != 1 else nn.Identity()
        self.depthwise = ConvBNAct(
            hidden, hidden, 3, stride, dilation, groups=hidden, norm=norm, padding_mode=padding_mode
        )
        self.project = ConvBNAct(hidden, out_channels, 1, activation=False, norm=norm)
        self.use_residual = stride == 1 and in_channels == out_channels
        self.expanded_channels = hidden
        self.out_channels = out_channels

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.from_expansion(x, self.expand(x))

    def from_expansion(self, x: torch.Tensor, expanded: torch.Tensor) -> torch.Tensor:
        """The rest of the block, given the block input `x` and its already computed expansion."""
        out = self.project(self.depthwise(expanded))
        return x + out if self.use_residual else out
