"""Named Mobile DeepLabv3 configurations: the rows of the MobileNetV2 paper's Table 7 and the settings of the
official TF models we import. A preset (backbone.preset.Preset) fixes everything that defines the network and how
images are fed to it; checkpoints store its fields, so a file alone rebuilds its model and its preprocessing."""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any, Literal, Mapping

from backbone.layers import PaddingMode
from backbone.preset import Preset, lookup, preset_table
from backbone.tf.layout import TF_BN_EPS
from common import labels
from common.images import Normalization, ResizeMethod, check_resize_method, normalization_stats

# How `deeplab_mobile.preprocess_image` brings an image to the network: "any": at its own size, padded
# bottom/right with the mean up to crop_size (TF DeepLab's evaluation); "pad": the same, with an image larger than
# the crop first brought down so that its long side is crop_size (TF DeepLab's export graph, `resize_to_range`);
# "resize": stretched to crop_size × crop_size (the picamera2 example's way).
InputMode = Literal["any", "pad", "resize"]
INPUT_MODES = ("any", "pad", "resize")
OUTPUT_STRIDES = (8, 16)

VOC_CLASSES = ("background", *labels.VOC_CLASSES)  # what a VOC segmenter predicts: background, then the 20


@dataclass(frozen=True)
class DeepLabPreset(Preset):
    """One Mobile DeepLabv3 recipe. `num_classes` counts the background (21 for VOC)."""

    description: str = ""
    num_classes: int = 21
    width_mult: float = 1.0
    output_stride: int = 16
    aspp: bool = False  # atrous branches at rates 6/12/18 (OS16), 12/24/36 (OS8)
    aspp_separable: bool = False  # TF's aspp_with_separable_conv
    divisible_by: int = 8  # channel rounding; TF DeepLab uses 1 below width 1.0
    padding_mode: PaddingMode = "symmetric"
    bn_eps: float = 1e-5
    bn_momentum: float = 0.1
    dropout: float = 0.1
    align_corners: bool = True  # the logits' bilinear upsampling to the input (TF's, exact on 16k+1 inputs)
    crop_size: int = 513  # the training crop; the size images are padded (or stretched) to
    normalization: Normalization = "imagenet"
    input_mode: InputMode = "any"
    resize: ResizeMethod = "opencv_linear"  # the resize the model was trained with (common.images.resize_pixels)

    def __post_init__(self) -> None:
        if self.output_stride not in OUTPUT_STRIDES:
            raise ValueError(f"output_stride must be one of {OUTPUT_STRIDES}, got {self.output_stride}")
        if self.num_classes < 1:
            raise ValueError(f"num_classes must be at least 1, got {self.num_classes}")
        if self.input_mode not in INPUT_MODES:
            raise ValueError(f"input_mode must be one of {', '.join(INPUT_MODES)}, got {self.input_mode!r}")
        if self.crop_size < self.output_stride:
            raise ValueError(f"crop_size {self.crop_size} is below the output stride {self.output_stride}")
        normalization_stats(self.normalization)  # raises on an unknown name
        check_resize_method(self.resize)

    @property
    def aspp_rates(self) -> tuple[int, ...]:
        """DeepLabv3's atrous rates at this output stride (none without ASPP)."""
        return tuple(r * 16 // self.output_stride for r in (6, 12, 18)) if self.aspp else ()

    @classmethod
    def from_config(cls, config: Mapping[str, Any]) -> "DeepLabPreset":
        """Also reads the fields of presets written before they recorded their resize."""
        config = dict(config)
        config.setdefault(
            "resize", "tf_bilinear_aligned" if config.get("padding_mode") == "tf_same" else "opencv_linear"
        )
        return super().from_config(config)


_TF = dict(padding_mode="tf_same", normalization="tf", resize="tf_bilinear_aligned", bn_eps=TF_BN_EPS)
PRESETS: dict[str, DeepLabPreset] = preset_table(
    DeepLabPreset("mnv2_os16", "paper Table 7: MNetV2* OS16, no ASPP (75.32% VOC val, 2.11M, 2.75B MAdds)"),
    DeepLabPreset("mnv2_os8", "paper Table 7 configuration: MNetV2* OS8, no ASPP", output_stride=8),
    DeepLabPreset("mnv2_aspp_os16", "paper Table 7 configuration: MNetV2* OS16, ASPP rates 6/12/18", aspp=True),
    DeepLabPreset(
        "mnv2_aspp_os8", "paper Table 7 configuration: MNetV2* OS8, ASPP rates 12/24/36", output_stride=8, aspp=True
    ),
    DeepLabPreset(
        "tf_mnv2_pascal", "TF deeplabv3_mnv2_pascal (coral TFLite): width 1.0, OS16, 513×513", input_mode="pad", **_TF
    ),
    DeepLabPreset(
        "tf_mnv2_dm05_pascal",
        "TF deeplabv3_mnv2_dm05_pascal (coral TFLite): width 0.5, OS16, 513×513",
        width_mult=0.5,
        divisible_by=1,
        input_mode="pad",
        **_TF,
    ),
    DeepLabPreset(
        "tf_mnv2_dm05_pascal_257",
        "picamera2 deeplabv3.tflite: width 0.5, OS8, 257×257",
        width_mult=0.5,
        divisible_by=1,
        output_stride=8,
        crop_size=257,
        input_mode="resize",
        **_TF,
    ),
)


def tf_preset(
    width_mult: float,
    output_stride: int,
    crop_size: int,
    num_classes: int,
    aspp: bool,
    aspp_separable: bool,
    align_corners: bool,
    name: str,
) -> DeepLabPreset:
    """The TF preset with these settings (class count replaced), else a new one called `name` that feeds images
    like TF DeepLab (long side to the crop, padded)."""
    for preset in PRESETS.values():
        same = (
            preset.width_mult,
            preset.output_stride,
            preset.crop_size,
            preset.aspp,
            preset.aspp_separable,
            preset.align_corners,
        )
        if preset.padding_mode == "tf_same" and same == (
            width_mult,
            output_stride,
            crop_size,
            aspp,
            aspp_separable,
            align_corners,
        ):
            return replace(preset, num_classes=num_classes)
    return DeepLabPreset(
        name,
        f"imported TF model: width {width_mult}, OS{output_stride}, {crop_size}×{crop_size}",
        num_classes=num_classes,
        width_mult=width_mult,
        output_stride=output_stride,
        aspp=aspp,
        aspp_separable=aspp_separable,
        divisible_by=8 if width_mult == 1.0 else 1,
        crop_size=crop_size,
        align_corners=align_corners,
        input_mode="pad",
        **_TF,
    )


def get_preset(name: str) -> DeepLabPreset:
    """The preset called `name`, or a ValueError listing the known names (for --preset flags)."""
    return lookup(PRESETS, name, "DeepLab")
