"""Named SSDLite configurations: everything needed to rebuild a model, normalise its input and decode its output.

A preset is a frozen dataclass instance with a `name` (backbone.preset.Preset); checkpoints store the name and the
full field values, so a file alone rebuilds its model and a file used with another preset is caught field by field.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any, Literal, Mapping

from torchvision.models.detection import SSDLite320_MobileNet_V3_Large_Weights

from backbone.layers import PaddingMode
from backbone.preset import Preset, lookup, preset_table
from common.images import Normalization, ResizeMethod, check_resize_method, normalization_stats

Classification = Literal["sigmoid", "softmax"]

# The 91 COCO names (with "N/A" for the unused category ids) so that label index == COCO category id, index 0
# named "background" as datasets.coco names it with label_space="category_id".
COCO_CLASS_NAMES: tuple[str, ...] = (
    "background",
    *SSDLite320_MobileNet_V3_Large_Weights.COCO_V1.meta["categories"][1:],
)


@dataclass(frozen=True)
class SSDLitePreset(Preset):
    """One SSDLite recipe. `num_classes` counts the background class (index 0): 91 for COCO, 21 for VOC."""

    num_classes: int
    image_size: tuple[int, int]  # (height, width) the network sees
    width_mult: float = 1.0
    classification: Classification = "softmax"
    padding_mode: PaddingMode = "symmetric"
    bn_eps: float = 1e-3
    bn_momentum: float = 0.03
    normalization: Normalization = "imagenet"
    resize: ResizeMethod = "opencv_linear"  # the resize the model was trained with (common.images.resize_pixels)
    # TF multiple_grid_anchor_generator.create_ssd_anchors settings. TF's configs write 1/3 as 0.3333; we keep that
    # so imported heads see the very anchors they were trained with.
    min_scale: float = 0.2
    max_scale: float = 0.95
    aspect_ratios: tuple[float, ...] = (1.0, 2.0, 0.5, 3.0, 0.3333)
    reduce_first_map: bool = True
    # Post-processing defaults (`predict` and the evaluators take other values as arguments).
    score_threshold: float = 0.01
    nms_iou: float = 0.6
    pre_nms_topk: int = 1000
    detections_per_image: int = 100
    description: str = ""

    def __post_init__(self) -> None:
        if self.num_classes < 2:
            raise ValueError(f"num_classes counts the background, so it must be at least 2, got {self.num_classes}")
        if self.classification not in ("sigmoid", "softmax"):
            raise ValueError(f"classification must be 'sigmoid' or 'softmax', got {self.classification!r}")
        normalization_stats(self.normalization)  # raises on an unknown name
        check_resize_method(self.resize)
        if min(self.image_size) < 32:
            raise ValueError(f"image_size {self.image_size} is too small: SSDLite needs at least 32×32")

    @property
    def mean(self) -> tuple[float, float, float]:
        return normalization_stats(self.normalization)[0]

    @property
    def std(self) -> tuple[float, float, float]:
        return normalization_stats(self.normalization)[1]

    @classmethod
    def from_config(cls, config: Mapping[str, Any]) -> "SSDLitePreset":
        """Also reads checkpoints written before presets recorded their resize (TF-padded presets were Google's
        models, resized by TF; the others were trained here) or a description."""
        config = dict(config)
        config.setdefault("resize", "tf_bilinear" if config.get("padding_mode") == "tf_same" else "opencv_linear")
        return super().from_config(config)


# Bit-compatible with the TF Object Detection API `ssdlite_mobilenet_v2_coco` (model zoo 2018_05_09): TF "SAME"
# padding, BN eps 1e-3 (decay 0.997), inputs in [-1, 1], sigmoid scores, and its pipeline.config's post-processing
# (score threshold 1e-8, NMS IoU 0.6, 100 detections).
SSDLITE_TF_COCO300 = SSDLitePreset(
    name="ssdlite_tf_coco300",
    num_classes=91,
    image_size=(300, 300),
    classification="sigmoid",
    padding_mode="tf_same",
    bn_eps=1e-3,
    bn_momentum=0.003,
    normalization="tf",
    resize="tf_bilinear",
    score_threshold=1e-8,
    description="TF Object Detection API ssdlite_mobilenet_v2_coco: 300×300, TF padding, sigmoid, [-1, 1] input",
)

# The paper's 320×320 model (Table 6) trained in PyTorch: same architecture and anchors, but the conventions of
# torchvision's ImageNet backbone weights (symmetric padding, ImageNet normalisation) and softmax scores, as in
# torchvision's and mmdetection's SSDLite recipes.
SSDLITE320_COCO = SSDLitePreset(
    name="ssdlite320_coco",
    num_classes=91,
    image_size=(320, 320),
    nms_iou=0.55,
    description="paper Table 6: SSDLite 320×320 on COCO (22.1 mAP, 4.3M, 0.8B MAdds)",
)
SSDLITE320_VOC = dataclasses.replace(
    SSDLITE320_COCO, name="ssdlite320_voc", num_classes=21, description="SSDLite 320×320 for the 20 VOC classes"
)

PRESETS: dict[str, SSDLitePreset] = preset_table(SSDLITE_TF_COCO300, SSDLITE320_COCO, SSDLITE320_VOC)


def get_preset(name: str) -> SSDLitePreset:
    """The preset called `name`, or a ValueError listing the known names (for --preset flags)."""
    return lookup(PRESETS, name, "SSDLite")
