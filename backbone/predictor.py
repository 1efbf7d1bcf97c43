"""Inference that both heads share: the base of their public objects (ssdlite.Detector, deeplab_mobile.Segmenter:
a model that owns its preset and class names, built from a weights name or a checkpoint, saved as one, moved
between devices), an eval-mode view of a model that may be training, and the deployment copy with BatchNorm
folded."""

from __future__ import annotations

import copy
import os
from pathlib import Path
from typing import Any, Callable, ClassVar

import torch
from torch import nn
from torch.nn.utils.fusion import fuse_conv_bn_eval

from backbone.layers import ConvBNAct


def inference_view(model: nn.Module) -> nn.Module:
    """`model` itself when all of it is in eval mode, else an eval-mode view of it: the same parameters and buffers
    (shared, not copied), every module's `training` flag off. Prediction runs on the view, so it never switches the
    shared model's mode nor touches its BatchNorm statistics: calls from several threads, or during training, give
    the eval-mode answer and leave the model as they found it."""
    if not any(module.training for module in model.modules()):
        return model
    return _eval_view(model)


def _eval_view(module: nn.Module) -> nn.Module:
    view = copy.copy(module)  # a shallow copy shares the parameter, buffer and hook dicts
    view.__dict__["_modules"] = {
        name: None if child is None else _eval_view(child) for name, child in module._modules.items()
    }
    view.training = False
    return view


def fuse_for_inference(model: nn.Module) -> nn.Module:
    """An eval-mode copy with each BatchNorm folded into the conv before it, in channels_last memory.

    Same outputs up to float rounding, without BN's separate pass over every map (about a quarter of a CPU
    inference profile). The copy has other state-dict keys and cannot be trained: checkpoints are always
    written from the unfolded model.
    """
    folded = copy.deepcopy(model).eval()
    for module in folded.modules():
        if isinstance(module, ConvBNAct) and isinstance(module.bn, nn.BatchNorm2d):
            module.conv = fuse_conv_bn_eval(module.conv, module.bn)
            module.bn = nn.Identity()
    return folded.to(memory_format=torch.channels_last)


class Predictor:
    """Subclasses name their head's checkpoint functions (`load_ssdlite` / `save_ssdlite`, ...) and add `__call__`."""

    load_model: ClassVar[Callable[..., tuple[nn.Module, dict[str, Any]]]]
    save_model: ClassVar[Callable[..., Path]]

    def __init__(self, model: nn.Module) -> None:
        self.model = model.eval()

    @classmethod
    def from_pretrained(cls, name_or_path: str | os.PathLike, device: str | torch.device = "cpu"):
        """A weights name (README: Model zoo) or a checkpoint file, on `device`."""
        model, _ = cls.load_model(name_or_path)
        return cls(model).to(device)

    load = from_pretrained  # a checkpoint path is one kind of `name_or_path`

    def save(self, path: str | os.PathLike, **extra: Any) -> Path:
        """A checkpoint that `load`, the head's loader and every `--weights` flag read."""
        return type(self).save_model(self.model, path, **extra)

    def to(self, device: str | torch.device):
        self.model.to(device)
        return self

    @property
    def preset(self) -> Any:
        return self.model.preset

    @property
    def class_names(self) -> list[str]:
        return self.model.class_names
