"""Named Mobile DeepLabv3 configurations: the rows of the MobileNetV2 paper's Table 7 and the settings of the
official TF models we import. A preset fixes the architecture and how images are fed to it (normalisation,
how an image of another size is brought to the network); checkpoints record the preset's name."""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any, Literal, Sequence

from backbone.layers import PaddingMode
from common.images import Normalization
from deeplab_mobile.model import MobileDeepLabV3

# "any": the image at its own size; "pad": scale the long side to crop_size, pad bottom/right with the mean
# (TF DeepLab's own preprocessing); "resize": stretch to crop_size × crop_size (the picamera2 example's way).
InputMode = Literal["any", "pad", "resize"]

VOC_CLASSES = (
    "background", "aeroplane", "bicycle", "bird", "boat", "bottle", "bus", "car", "cat", "chair", "cow",
    "diningtable", "dog", "horse", "motorbike", "person", "pottedplant", "sheep", "sofa", "train", "tvmonitor",
)  # fmt: skip


@dataclass(frozen=True)
class DeepLabPreset:
    name: str
    description: str
    num_classes: int = 21
    width_mult: float = 1.0
    output_stride: int = 16
    aspp: bool = False
    aspp_separable: bool = False
    divisible_by: int = 8  # channel rounding; TF DeepLab uses 1 below width 1.0
    tf_fixed_pooling: bool = False  # pool with the window TF computes from crop_size (see head.ImagePooling)
    crop_size: int = 513  # training crop; the native input of TF presets
    padding_mode: PaddingMode = "symmetric"
    normalization: Normalization = "imagenet"
    input_mode: InputMode = "any"

    @property
    def pool_kernel(self) -> tuple[int, int] | None:
        """TF's `scale_dimension(crop, 1/OS)` = (crop - 1) // OS + 1: 33 for 513 at OS16 and for 257 at OS8."""
        if not self.tf_fixed_pooling:
            return None
        side = (self.crop_size - 1) // self.output_stride + 1
        return side, side

    def model_kwargs(self) -> dict[str, object]:
        return dict(
            num_classes=self.num_classes,
            width_mult=self.width_mult,
            output_stride=self.output_stride,
            aspp=self.aspp,
            aspp_separable=self.aspp_separable,
            divisible_by=self.divisible_by,
            image_pooling="tf_fixed" if self.tf_fixed_pooling else "global",
            pool_kernel=self.pool_kernel,
            padding_mode=self.padding_mode,
        )


_TF = dict(tf_fixed_pooling=True, padding_mode="tf_same", normalization="tf")
PRESETS: tuple[DeepLabPreset, ...] = (
    DeepLabPreset("mnv2_os16", "paper Table 7: MNetV2* OS16, no ASPP (75.32% VOC val, 2.11M, 2.75B MAdds)"),
    DeepLabPreset("mnv2_os8", "paper Table 7 configuration: MNetV2* OS8, no ASPP", output_stride=8),
    DeepLabPreset("mnv2_aspp_os16", "paper Table 7 configuration: MNetV2* OS16, ASPP rates 6/12/18", aspp=True),
    DeepLabPreset(
        "mnv2_aspp_os8", "paper Table 7 configuration: MNetV2* OS8, ASPP rates 12/24/36", output_stride=8, aspp=True
    ),
    DeepLabPreset(
        "tf_mnv2_pascal",
        "TF deeplabv3_mnv2_pascal (coral TFLite): width 1.0, OS16, 513×513",
        input_mode="pad",
        **_TF,
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
    width_mult: float, output_stride: int, crop_size: int, num_classes: int, aspp: bool, aspp_separable: bool,
    name: str,
) -> DeepLabPreset:
    """The TF preset with these settings (class count replaced), else a new one called `name` that feeds
    images like TF DeepLab (long side to the crop, padded)."""
    for preset in PRESETS:
        same = (preset.width_mult, preset.output_stride, preset.crop_size, preset.aspp, preset.aspp_separable)
        if preset.tf_fixed_pooling and same == (width_mult, output_stride, crop_size, aspp, aspp_separable):
            return replace(preset, num_classes=num_classes)
    return DeepLabPreset(
        name, f"imported TF model: width {width_mult}, OS{output_stride}, {crop_size}×{crop_size}",
        num_classes=num_classes, width_mult=width_mult, output_stride=output_stride, aspp=aspp,
        aspp_separable=aspp_separable, divisible_by=8 if width_mult == 1.0 else 1, crop_size=crop_size,
        input_mode="pad", **_TF,
    )  # fmt: skip


def get_preset(name: str) -> DeepLabPreset:
    for preset in PRESETS:
        if preset.name == name:
            return preset
    raise ValueError(f"unknown DeepLab preset {name!r}; choose one of {', '.join(p.name for p in PRESETS)}")


def build_deeplab(
    preset: DeepLabPreset | str, num_classes: int | None = None, class_names: Sequence[str] | None = None,
    **overrides: Any,
) -> MobileDeepLabV3:  # fmt: skip
    """The model of `preset` (a preset or its name), optionally with another class count (`class_names` also sets
    it); `overrides` replace constructor arguments the preset does not fix (an importer's `align_corners`, `bn_eps`)."""
    if isinstance(preset, str):
        preset = get_preset(preset)
    if class_names is not None and num_classes is None:
        num_classes = len(class_names)
    if num_classes is not None:
        preset = replace(preset, num_classes=num_classes)
    model = MobileDeepLabV3(**{**preset.model_kwargs(), **overrides})
    if class_names is not None:
        if len(class_names) != preset.num_classes:
            raise ValueError(f"{len(class_names)} class names for a {preset.num_classes}-class model")
        model.class_names = list(class_names)
    model.preset = preset
    return model
