"""MobileNetV2 feature extractor shared by the SSDLite and Mobile DeepLabv3 heads."""

from backbone.checkpoint import load_checkpoint, load_state_dict_checked, model_from_checkpoint, save_checkpoint
from backbone.layers import ConvBNAct, InvertedResidual, NormSpec, TFSamePad2d
from backbone.mobilenet_weights import load_pretrained
from backbone.mobilenetv2 import MobileNetV2, dilation_schedule, make_divisible
from backbone.named_weights import PretrainedWeights, get_weights, known_names, resolve
from common.errors import WeightsError

__all__ = [
    "ConvBNAct",
    "InvertedResidual",
    "MobileNetV2",
    "NormSpec",
    "PretrainedWeights",
    "TFSamePad2d",
    "WeightsError",
    "dilation_schedule",
    "get_weights",
    "known_names",
    "load_checkpoint",
    "load_pretrained",
    "load_state_dict_checked",
    "make_divisible",
    "model_from_checkpoint",
    "resolve",
    "save_checkpoint",
]
