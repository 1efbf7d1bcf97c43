"""Mobile DeepLabv3 (MobileNetV2 paper, Section 6.3): semantic segmentation on the OS16 (or OS8) MobileNetV2
backbone up to its 320-channel layer, with image pooling, a 1×1 branch and optional ASPP.

`Segmenter.from_pretrained(name_or_path)` is the public entry point; `DEEPLAB_WEIGHTS` lists the named weights."""

from deeplab_mobile.checkpoint import checkpoint_dict, deeplab_from_checkpoint, load_deeplab, save_deeplab
from deeplab_mobile.loss import check_target, segmentation_loss
from deeplab_mobile.model import MobileDeepLabV3, build_deeplab
from deeplab_mobile.named_weights import DEEPLAB_WEIGHTS
from deeplab_mobile.presets import PRESETS, VOC_CLASSES, DeepLabPreset, get_preset
from deeplab_mobile.segmenter import PAPER_MF_SCALES, Segmenter, predict, predict_logits, preprocess_image

__all__ = [
    "DEEPLAB_WEIGHTS",
    "PAPER_MF_SCALES",
    "PRESETS",
    "VOC_CLASSES",
    "DeepLabPreset",
    "MobileDeepLabV3",
    "Segmenter",
    "build_deeplab",
    "check_target",
    "checkpoint_dict",
    "deeplab_from_checkpoint",
    "get_preset",
    "load_deeplab",
    "predict",
    "predict_logits",
    "preprocess_image",
    "save_deeplab",
    "segmentation_loss",
]
