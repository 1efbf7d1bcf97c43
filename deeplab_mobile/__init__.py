"""Mobile DeepLabv3 (MobileNetV2 paper, Section 6.3): semantic segmentation on the OS16 (or OS8) MobileNetV2
backbone up to its 320-channel layer, with image pooling, a 1×1 branch and optional ASPP."""

from deeplab_mobile.checkpoint import checkpoint_dict, load_deeplab, save_deeplab
from deeplab_mobile.inference import fuse_for_inference, predict, predict_logits
from deeplab_mobile.loss import IGNORE_INDEX, check_target, segmentation_loss
from deeplab_mobile.model import MobileDeepLabV3
from deeplab_mobile.presets import PRESETS, VOC_CLASSES, DeepLabPreset, build_deeplab, get_preset

__all__ = [
    "IGNORE_INDEX",
    "PRESETS",
    "VOC_CLASSES",
    "DeepLabPreset",
    "MobileDeepLabV3",
    "build_deeplab",
    "check_target",
    "checkpoint_dict",
    "fuse_for_inference",
    "get_preset",
    "load_deeplab",
    "predict",
    "predict_logits",
    "save_deeplab",
    "segmentation_loss",
]
