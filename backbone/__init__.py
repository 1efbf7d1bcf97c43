"""MobileNetV2 feature extractor shared by the SSDLite and Mobile DeepLabv3 heads."""

from backbone.checkpoint import WeightsError, load_checkpoint, save_checkpoint
from backbone.layers import ConvBNAct, InvertedResidual, NormSpec, TFSamePad2d
from backbone.mobilenetv2 import MobileNetV2, dilation_schedule, make_divisible
from backbone.weights import load_pretrained, load_state_dict_checked

__all__ = [
    "ConvBNAct",
    "InvertedResidual",
    "MobileNetV2",
    "NormSpec",
    "TFSamePad2d",
    "WeightsError",
    "dilation_schedule",
    "load_checkpoint",
    "load_pretrained",
    "load_state_dict_checked",
    "make_divisible",
    "save_checkpoint",
]
