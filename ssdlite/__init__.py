"""SSDLite object detection on the shared MobileNetV2 backbone (MobileNetV2 paper, Section 6.2).

`Detector.from_pretrained(name_or_path)` is the public entry point; `SSDLITE_WEIGHTS` lists the named weights."""

from ssdlite.anchors import AnchorGenerator, feature_map_sizes, match_anchors
from ssdlite.checkpoint import checkpoint_dict, load_ssdlite, save_ssdlite, ssdlite_from_checkpoint
from ssdlite.detector import DetectionResult, Detector, detect_inputs, predict, preprocess, preprocess_image
from ssdlite.loss import SSDLiteLoss, pad_targets
from ssdlite.model import SSDLite, build_ssdlite
from ssdlite.named_weights import SSDLITE_WEIGHTS
from ssdlite.postprocess import Detections, postprocess
from ssdlite.presets import (
    PRESETS,
    SSDLITE320_COCO,
    SSDLITE320_VOC,
    SSDLITE_TF_COCO300,
    SSDLitePreset,
    get_preset,
)

__all__ = [
    "PRESETS",
    "SSDLITE320_COCO",
    "SSDLITE320_VOC",
    "SSDLITE_TF_COCO300",
    "SSDLITE_WEIGHTS",
    "AnchorGenerator",
    "DetectionResult",
    "Detections",
    "Detector",
    "SSDLite",
    "SSDLiteLoss",
    "SSDLitePreset",
    "build_ssdlite",
    "checkpoint_dict",
    "detect_inputs",
    "feature_map_sizes",
    "get_preset",
    "load_ssdlite",
    "match_anchors",
    "pad_targets",
    "postprocess",
    "predict",
    "preprocess",
    "preprocess_image",
    "save_ssdlite",
    "ssdlite_from_checkpoint",
]
