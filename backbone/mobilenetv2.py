"""MobileNetV2 (Sandler et al., CVPR 2018, Table 2) as a classifier or a feature extractor.

Width multiplier, output stride 8/16/32 by TF-slim's dilation rule, named feature taps (including a
block's expansion output), TF "SAME" padding and TF BatchNorm settings for official weights.
"""

from __future__ import annotations

from collections import OrderedDict
from typing import Any, Iterator, Sequence

import torch
from torch import nn

from backbone.layers import ConvBNAct, InvertedResidual, NormSpec, PaddingMode

# Paper Table 2: expansion t, output channels c, repeats n, first stride s.
INVERTED_RESIDUAL_SETTINGS: tuple[tuple[int, int, int, int], ...] = (
    (1, 16, 1, 1),
    (6, 24, 2, 2),
    (6, 32, 3, 2),
    (6, 64, 4, 2),
    (6, 96, 3, 1),
    (6, 160, 3, 2),
    (6, 320, 1, 1),
)
NUM_BLOCKS = sum(n for _, _, n, _ in INVERTED_RESIDUAL_SETTINGS)  # 17, indexed 0..16 like TF's expanded_conv_N
OUTPUT_STRIDES = (8, 16, 32)


def make_divisible(value: float, divisor: int = 8) -> int:
    """Round channels to a multiple of `divisor`, never dropping more than 10% (the TF/torchvision rule)."""
    rounded = max(divisor, int(value + divisor / 2) // divisor * divisor)
    if rounded < 0.9 * value:
        rounded += divisor
    return rounded


def dilation_schedule(strides: Sequence[int], output_stride: int) -> list[tuple[int, int]]:
    """(stride, dilation) per layer under TF-slim's rule for a target output stride.

    Walk the layers keeping the current stride; once it equals the target, later strides become 1 and the
    rate multiplies by them for the layers *after* that one (the de-strided layer keeps the old rate).
    """
    current, rate, schedule = 1, 1, []
    for stride in strides:
        if current == output_stride:
            schedule.append((1, rate))
            rate *= stride
        else:
            schedule.append((stride, 1))
            current *= stride
    return schedule


class MobileNetV2(nn.Module):
    """MobileNetV2 body with optional last 1×1 conv (1280) and classifier.

    Channels are rounded to multiples of `divisible_by` (8 in the paper's models; TF DeepLab uses 1 below
    width 1.0, e.g. 12 channels at width 0.5 where 8 would give 16).

    Taps name feature maps returned by `forward_features`: "stem", "block{i}" (output of block i, 0..16),
    "block{i}.expansion" (its 1×1 expansion output, e.g. "block13.expansion": 576 channels at stride 16)
    and "last_conv".
    """

    def __init__(
        self,
        width_mult: float = 1.0,
        output_stride: int = 32,
        num_classes: int | None = 1000,
        include_last_conv: bool = True,
        padding_mode: PaddingMode = "symmetric",
        bn_eps: float = 1e-5,
        bn_momentum: float = 0.1,
        frozen_bn: bool = False,
        dropout: float = 0.2,
        divisible_by: int = 8,
    ) -> None:
        super().__init__()
        if output_stride not in OUTPUT_STRIDES:
            raise ValueError(f"output_stride must be one of {OUTPUT_STRIDES}, got {output_stride}")
        if not width_mult > 0:
            raise ValueError(f"width_mult must be positive, got {width_mult}")
        if num_classes is not None and not include_last_conv:
            raise ValueError("a classifier needs the last 1×1 conv: set include_last_conv=True or num_classes=None")
        if padding_mode not in ("symmetric", "tf_same"):
            raise ValueError(f"padding_mode must be 'symmetric' or 'tf_same', got {padding_mode!r}")
        self.config: dict[str, Any] = dict(
            width_mult=width_mult,
            output_stride=output_stride,
            num_classes=num_classes,
            include_last_conv=include_last_conv,
            padding_mode=padding_mode,
            bn_eps=bn_eps,
            bn_momentum=bn_momentum,
            frozen_bn=frozen_bn,
            dropout=dropout,
            divisible_by=divisible_by,
        )
        norm = NormSpec(eps=bn_eps, momentum=bn_momentum, frozen=frozen_bn)

        block_args = []  # (out_channels, stride, expand_ratio)
        for t, c, n, s in INVERTED_RESIDUAL_SETTINGS:
            for i in range(n):
                block_args.append((make_divisible(c * width_mult, divisible_by), s if i == 0 else 1, t))
        schedule = dilation_schedule([2] + [s for _, s, _ in block_args], output_stride)

        stem_channels = make_divisible(32 * width_mult, divisible_by)
        stem_stride, _ = schedule[0]
        self.stem = ConvBNAct(3, stem_channels, 3, stem_stride, norm=norm, padding_mode=padding_mode)

        blocks, in_channels = [], stem_channels
        for (out_channels, _, t), (stride, dilation) in zip(block_args, schedule[1:], strict=True):
            blocks.append(InvertedResidual(in_channels, out_channels, stride, dilation, t, norm, padding_mode))
            in_channels = out_channels
        self.blocks = nn.ModuleList(blocks)

        self.last_conv: nn.Module | None = None
        if include_last_conv:
            last_channels = make_divisible(1280 * max(1.0, width_mult), divisible_by)
            self.last_conv = ConvBNAct(in_channels, last_channels, 1, norm=norm)
            in_channels = last_channels
        self.out_channels = in_channels
        self.output_stride = output_stride

        self.classifier: nn.Module | None = None
        if num_classes is not None:
            self.dropout = nn.Dropout(dropout)
            self.classifier = nn.Linear(in_channels, num_classes)
        self._init_weights()

    def _init_weights(self) -> None:
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out")
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)
            elif isinstance(m, nn.Linear):
                nn.init.normal_(m.weight, 0, 0.01)
                nn.init.zeros_(m.bias)

    def tap_channels(self, tap: str) -> int:
        """Channels of a named feature map, so heads can size their layers without a dummy forward."""
        if tap == "stem":
            return self.stem.conv.out_channels
        if tap == "last_conv":
            if self.last_conv is None:
                raise ValueError("tap 'last_conv' needs include_last_conv=True")
            return self.out_channels
        index, expansion = self._parse_block_tap(tap)
        block = self.blocks[index]
        return block.expanded_channels if expansion else block.out_channels

    def _parse_block_tap(self, tap: str) -> tuple[int, bool]:
        name, _, suffix = tap.partition(".")
        if name.startswith("block") and name[5:].isdigit() and suffix in ("", "expansion"):
            index = int(name[5:])
            if index < len(self.blocks):
                return index, suffix == "expansion"
        raise ValueError(
            f"unknown feature tap {tap!r}: use 'stem', 'block0'..'block{len(self.blocks) - 1}', "
            f"'blockN.expansion' or 'last_conv'"
        )

    def _layers(self) -> Iterator[tuple[str, nn.Module]]:
        yield "stem", self.stem
        for i, block in enumerate(self.blocks):
            yield f"block{i}", block
        if self.last_conv is not None:
            yield "last_conv", self.last_conv

    def forward_features(self, x: torch.Tensor, taps: Sequence[str]) -> "OrderedDict[str, torch.Tensor]":
        """Feature maps for `taps`, in network order; stops after the last tap requested."""
        for tap in taps:
            if tap not in ("stem", "last_conv"):
                self._parse_block_tap(tap)
            elif tap == "last_conv" and self.last_conv is None:
                raise ValueError("tap 'last_conv' needs include_last_conv=True")
        wanted, found = set(taps), {}
        for name, layer in self._layers():
            if isinstance(layer, InvertedResidual) and f"{name}.expansion" in wanted:
                expanded = layer.expand(x)
                found[f"{name}.expansion"] = expanded
                x = layer.from_expansion(x, expanded)
            else:
                x = layer(x)
            if name in wanted:
                found[name] = x
            if len(found) == len(wanted):
                break
        return OrderedDict((tap, found[tap]) for tap in taps)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Class logits with a classifier, else the last feature map."""
        for _, layer in self._layers():
            x = layer(x)
        if self.classifier is None:
            return x
        x = torch.flatten(nn.functional.adaptive_avg_pool2d(x, 1), 1)
        return self.classifier(self.dropout(x))
