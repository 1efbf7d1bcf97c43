"""Mobile DeepLabv3: MobileNetV2 up to the 320-channel layer (no 1280 layer: the paper's "MNetV2*") at output
stride 16 or 8, the DeepLab head, and a bilinear upsample of the logits to the input size."""

from __future__ import annotations

import dataclasses
from typing import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from backbone.layers import NormSpec
from backbone.mobilenetv2 import MobileNetV2
from backbone.preset import PresetModel
from deeplab_mobile.head import DeepLabHead
from deeplab_mobile.presets import DeepLabPreset, get_preset


class MobileDeepLabV3(PresetModel):
    """Images [B, 3, H, W] (normalised per the preset) → logits [B, num_classes, H, W] for any H, W, odd ones
    included. Like SSDLite, the model owns its `preset` (everything that defines the network and how images are fed
    to it) and its `class_names` (background first)."""

    def __init__(self, preset: DeepLabPreset, class_names: Sequence[str] | None = None) -> None:
        super().__init__(preset, class_names)
        self.backbone = MobileNetV2(
            width_mult=preset.width_mult,
            output_stride=preset.output_stride,
            num_classes=None,
            include_last_conv=False,
            padding_mode=preset.padding_mode,
            bn_eps=preset.bn_eps,
            bn_momentum=preset.bn_momentum,
            divisible_by=preset.divisible_by,
        )
        self.head = DeepLabHead(
            self.backbone.out_channels,
            preset.num_classes,
            atrous_rates=preset.aspp_rates,
            separable=preset.aspp_separable,
            dropout=preset.dropout,
            norm=NormSpec(eps=preset.bn_eps, momentum=preset.bn_momentum),
        )
        self._init_head()

    def _init_head(self) -> None:
        for m in self.head.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
        nn.init.normal_(self.head.classifier.weight, 0, 0.01)
        nn.init.zeros_(self.head.classifier.bias)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        logits = self.head(self.backbone(images))
        return F.interpolate(logits, size=images.shape[-2:], mode="bilinear", align_corners=self.preset.align_corners)


def build_deeplab(
    preset: DeepLabPreset | str, num_classes: int | None = None, class_names: Sequence[str] | None = None
) -> MobileDeepLabV3:
    """The model of `preset` (a preset or its name), optionally with another class count (`class_names` also sets
    it), as `ssdlite.build_ssdlite`."""
    if isinstance(preset, str):
        preset = get_preset(preset)
    if class_names is not None and num_classes is None:
        num_classes = len(class_names)
    if num_classes is not None:
        preset = dataclasses.replace(preset, num_classes=num_classes)
    return MobileDeepLabV3(preset, class_names)
