"""SSDLite object detection on the shared MobileNetV2 backbone (MobileNetV2 paper, Section 6.2).

`Detector.from_pretrained(name_or_path)` is the public entry point; `SSDLITE_WEIGHTS` lists the named weights."""

from common.images import as_rgb  # re-exported: inference accepts any image it takes
from ssdlite.anchors import AnchorGenerator, feature_map_sizes
from ssdlite.api import DetectionResult, Detector
from ssdlite.checkpoint import checkpoint_dict, load_ssdlite, save_ssdlite, ssdlite_from_checkpoint
from ssdlite.loss import SSDLiteLoss, pad_targets
from ssdlite.matcher import match_anchors
from ssdlite.model import SSDLite, build_ssdlite
from ssdlite.postprocess import Detections, postprocess, postprocess_with_preset
from ssdlite.predict import fuse_for_inference, predict, preprocess
from ssdlite.presets import (
    PRESETS,
    SSDLITE320_COCO,
    SSDLITE320_VOC,
    SSDLITE_TF_COCO300,
    SSDLitePreset,
    get_preset,
)
from ssdlite.weights import SSDLITE_WEIGHTS

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
    "as_rgb",
    "build_ssdlite",
    "checkpoint_dict",
    "feature_map_sizes",
    "fuse_for_inference",
    "get_preset",
    "load_ssdlite",
    "match_anchors",
    "pad_targets",
    "postprocess",
    "postprocess_with_preset",
    "predict",
    "preprocess",
    "save_ssdlite",
    "ssdlite_from_checkpoint",
]
