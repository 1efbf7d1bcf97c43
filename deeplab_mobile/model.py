"""Mobile DeepLabv3: MobileNetV2 up to the 320-channel layer (no 1280 layer: the paper's "MNetV2*") at output
stride 16 or 8, the DeepLab head, and a bilinear upsample of the logits to the input size."""

from __future__ import annotations

from typing import Any, Literal

import torch
import torch.nn.functional as F
from torch import nn

from backbone.layers import NormSpec, PaddingMode
from backbone.mobilenetv2 import MobileNetV2
from deeplab_mobile.head import DeepLabHead

DEEPLAB_OUTPUT_STRIDES = (8, 16)
ASPP_RATES_OS16 = (6, 12, 18)  # DeepLabv3: rates at OS16, doubled at OS8
ImagePoolingMode = Literal["global", "tf_fixed"]


class MobileDeepLabV3(nn.Module):
    """Images [B, 3, H, W] (normalised) → logits [B, num_classes, H, W] for any H, W, odd ones included.

    `image_pooling="tf_fixed"` with `pool_kernel` reproduces TF's exported graphs (see ImagePooling);
    `align_corners=True` is TF's logit upsampling, exact on 16k+1 inputs where the corners of the map and of
    the image coincide. `divisible_by` rounds the backbone's channels (TF DeepLab: 8 at width 1.0, else 1).

    Like SSDLite, the model owns its `preset` (a DeepLabPreset: how images are fed to it; set by `build_deeplab`
    and `load_deeplab`) and its `class_names`, so checkpoints, predictors and exporters need nothing else.
    """

    def __init__(
        self,
        num_classes: int = 21,
        width_mult: float = 1.0,
        output_stride: int = 16,
        aspp: bool = False,
        aspp_separable: bool = False,
        image_pooling: ImagePoolingMode = "global",
        pool_kernel: tuple[int, int] | None = None,
        align_corners: bool = True,
        divisible_by: int = 8,
        padding_mode: PaddingMode = "symmetric",
        bn_eps: float = 1e-5,
        bn_momentum: float = 0.1,
        dropout: float = 0.1,
    ) -> None:
        super().__init__()
        if output_stride not in DEEPLAB_OUTPUT_STRIDES:
            raise ValueError(f"output_stride must be one of {DEEPLAB_OUTPUT_STRIDES}, got {output_stride}")
        if num_classes < 1:
            raise ValueError(f"num_classes must be at least 1, got {num_classes}")
        if image_pooling not in ("global", "tf_fixed"):
            raise ValueError(f"image_pooling must be 'global' or 'tf_fixed', got {image_pooling!r}")
        if (image_pooling == "tf_fixed") != (pool_kernel is not None):
            raise ValueError("pool_kernel (height, width) goes with image_pooling='tf_fixed' and only with it")
        if pool_kernel is not None:
            pool_kernel = (int(pool_kernel[0]), int(pool_kernel[1]))
        self.config: dict[str, Any] = dict(
            num_classes=num_classes,
            width_mult=width_mult,
            output_stride=output_stride,
            aspp=aspp,
            aspp_separable=aspp_separable,
            image_pooling=image_pooling,
            pool_kernel=pool_kernel,
            align_corners=align_corners,
            divisible_by=divisible_by,
            padding_mode=padding_mode,
            bn_eps=bn_eps,
            bn_momentum=bn_momentum,
            dropout=dropout,
        )
        self.num_classes = num_classes
        self.align_corners = align_corners
        self.preset: Any = None  # a DeepLabPreset (deeplab_mobile/presets.py builds models, so it is not imported here)
        self.class_names = [f"class_{i}" for i in range(num_classes)]
        self.backbone = MobileNetV2(
            width_mult=width_mult,
            output_stride=output_stride,
            num_classes=None,
            include_last_conv=False,
            padding_mode=padding_mode,
            bn_eps=bn_eps,
            bn_momentum=bn_momentum,
            divisible_by=divisible_by,
        )
        rates = tuple(r * 16 // output_stride for r in ASPP_RATES_OS16) if aspp else ()
        self.head = DeepLabHead(
            self.backbone.out_channels,
            num_classes,
            atrous_rates=rates,
            separable=aspp_separable,
            pool_kernel=pool_kernel,
            dropout=dropout,
            norm=NormSpec(eps=bn_eps, momentum=bn_momentum),
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
        return F.interpolate(logits, size=images.shape[-2:], mode="bilinear", align_corners=self.align_corners)
