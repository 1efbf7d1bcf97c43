"""SSDLite on MobileNetV2 (paper Section 6.2): six feature maps, depthwise-separable extra layers and prediction
layers, laid out like TF's `ssd_mobilenet_v2` feature extractor with `use_depthwise` so official weights map
one to one."""

from __future__ import annotations

import dataclasses
import math
from collections import OrderedDict
from typing import Sequence

import torch
from torch import nn

from backbone.layers import ConvBNAct, NormSpec, PaddingMode
from backbone.mobilenetv2 import MobileNetV2
from backbone.preset import PresetModel
from ssdlite.anchors import AnchorGenerator
from ssdlite.presets import SSDLitePreset

# Feature maps taken from the backbone: block 13's expansion (stride 16) and the last 1×1 conv (stride 32).
BACKBONE_TAPS = ("block13.expansion", "last_conv")
EXTRA_DEPTHS = (512, 256, 256, 128)
MIN_DEPTH = 16  # TF's min_depth for width multipliers below 1
PRIOR_PROBABILITY = 0.01  # initial foreground probability of sigmoid classifiers (focal-loss paper's prior)


def _scaled_depth(depth: float, width_mult: float) -> int:
    """TF's `depth_fn` for the extra layers: scaled by the width multiplier, never below MIN_DEPTH."""
    return max(int(depth * width_mult), MIN_DEPTH)


class ExtraBlock(nn.Sequential):
    """1×1 conv to half depth → 3×3 depthwise stride 2 → 1×1 conv to depth, each BN + ReLU6 (TF `layer_19_*`)."""

    def __init__(self, in_channels: int, mid: int, depth: int, norm: NormSpec, padding_mode: PaddingMode) -> None:
        super().__init__(
            OrderedDict(
                reduce=ConvBNAct(in_channels, mid, 1, norm=norm),
                depthwise=ConvBNAct(mid, mid, 3, 2, groups=mid, norm=norm, padding_mode=padding_mode),
                expand=ConvBNAct(mid, depth, 1, norm=norm),
            )
        )


class PredictionBranch(nn.Sequential):
    """3×3 depthwise + BN + ReLU6 → 1×1 conv with bias, no BN (TF `BoxPredictor_i/*Predictor{_depthwise,}`)."""

    def __init__(self, in_channels: int, out_channels: int, norm: NormSpec) -> None:
        super().__init__(
            OrderedDict(
                depthwise=ConvBNAct(in_channels, in_channels, 3, groups=in_channels, norm=norm),
                conv=nn.Conv2d(in_channels, out_channels, 1),
            )
        )


class SSDLiteHead(nn.Module):
    """Box and class predictors per feature map; outputs flattened map by map, then cell, then anchor (TF order)."""

    def __init__(self, in_channels: list[int], anchors_per_location: list[int], num_classes: int, norm: NormSpec):
        super().__init__()
        self.num_classes = num_classes
        self.box = nn.ModuleList(
            PredictionBranch(c, 4 * k, norm) for c, k in zip(in_channels, anchors_per_location, strict=True)
        )
        self.cls = nn.ModuleList(
            PredictionBranch(c, num_classes * k, norm) for c, k in zip(in_channels, anchors_per_location, strict=True)
        )

    @staticmethod
    def _flatten(x: torch.Tensor, width: int) -> torch.Tensor:
        # [B, K·width, H, W] → [B, H·W·K, width]: the NHWC reshape TF does.
        return x.permute(0, 2, 3, 1).reshape(x.shape[0], -1, width)

    def forward(self, features: list[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        boxes = [self._flatten(branch(f), 4) for branch, f in zip(self.box, features, strict=True)]
        logits = [self._flatten(branch(f), self.num_classes) for branch, f in zip(self.cls, features, strict=True)]
        return torch.cat(boxes, dim=1), torch.cat(logits, dim=1)


class SSDLite(PresetModel):
    """MobileNetV2 backbone + extra layers + SSDLite head.

    forward(images [B, 3, H, W], normalised per `preset`) → (box_regression [B, A, 4] as (tx, ty, tw, th),
    class_logits [B, A, C] with column 0 the background). `anchors(image_size)` gives the matching [A, 4] anchors.
    The model owns its preset (input size, normalisation, post-processing) and its `class_names` (background first),
    so a checkpoint, a predictor or an exporter needs nothing else.
    """

    def __init__(self, preset: SSDLitePreset, class_names: Sequence[str] | None = None) -> None:
        super().__init__(preset, class_names)
        norm = NormSpec(eps=preset.bn_eps, momentum=preset.bn_momentum)
        self.backbone = MobileNetV2(
            width_mult=preset.width_mult,
            num_classes=None,
            padding_mode=preset.padding_mode,
            bn_eps=preset.bn_eps,
            bn_momentum=preset.bn_momentum,
        )
        channels = [self.backbone.tap_channels(t) for t in BACKBONE_TAPS]
        extras = []
        for depth in EXTRA_DEPTHS:
            mid, out = _scaled_depth(depth / 2, preset.width_mult), _scaled_depth(depth, preset.width_mult)
            extras.append(ExtraBlock(channels[-1], mid, out, norm, preset.padding_mode))
            channels.append(out)
        self.extras = nn.ModuleList(extras)
        self.anchor_generator = AnchorGenerator(
            preset.min_scale, preset.max_scale, preset.aspect_ratios, preset.reduce_first_map
        )
        self.head = SSDLiteHead(channels, self.anchor_generator.num_anchors_per_location, preset.num_classes, norm)
        self._init_new_layers()

    def _init_new_layers(self) -> None:
        """torchvision's SSDLite init for layers the backbone does not own; sigmoid class biases start at the prior
        so that the many background anchors do not swamp the first steps."""
        for module in [*self.extras.modules(), *self.head.modules()]:
            if isinstance(module, nn.Conv2d):
                nn.init.normal_(module.weight, std=0.03)
                if module.bias is not None:
                    nn.init.zeros_(module.bias)
        if self.preset.classification == "sigmoid":
            prior_logit = -math.log((1 - PRIOR_PROBABILITY) / PRIOR_PROBABILITY)
            for branch in self.head.cls:
                nn.init.constant_(branch.conv.bias, prior_logit)

    def features(self, images: torch.Tensor) -> list[torch.Tensor]:
        """The six feature maps, largest first."""
        maps = list(self.backbone.forward_features(images, BACKBONE_TAPS).values())
        x = maps[-1]
        for block in self.extras:
            x = block(x)
            maps.append(x)
        return maps

    def forward(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self.head(self.features(images))

    def anchors(self, image_size: tuple[int, int], device: torch.device | str = "cpu") -> torch.Tensor:
        """[A, 4] (cx, cy, w, h) anchors, normalised, for inputs of `image_size` (h, w); cached, do not modify."""
        return self.anchor_generator(image_size, device)


def build_ssdlite(
    preset: SSDLitePreset, num_classes: int | None = None, class_names: Sequence[str] | None = None
) -> SSDLite:
    """The model of `preset`, optionally with another class count (background included), e.g. 2 for one class;
    `class_names` (background first) also sets the count."""
    if class_names is not None and num_classes is None:
        num_classes = len(class_names)
    if num_classes is not None:
        preset = dataclasses.replace(preset, num_classes=num_classes)
    return SSDLite(preset, class_names)
