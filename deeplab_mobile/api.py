"""The segmenter a user holds: built from a weights name or a checkpoint, called on a list of images.

    segmenter = Segmenter.from_pretrained("deeplab_coral_voc")
    mask = segmenter([image])[0]          # H×W class ids, segmenter.class_names[i] names id i

Same shape as `ssdlite.Detector` (backbone/predictor.py): `from_pretrained`, `load`, `save`, `to`, `.model`,
`.preset`, `.class_names`.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np
import torch

from backbone.predictor import Predictor
from deeplab_mobile.checkpoint import load_deeplab, save_deeplab
from deeplab_mobile.inference import predict, predict_logits
from deeplab_mobile.model import MobileDeepLabV3
from deeplab_mobile.presets import DeepLabPreset


class Segmenter(Predictor):
    """A Mobile DeepLabv3 model with its preset and class names; `segmenter(images)` segments each image."""

    load_model = staticmethod(load_deeplab)
    save_model = staticmethod(save_deeplab)
    model: MobileDeepLabV3
    preset: DeepLabPreset

    def __call__(self, images: Sequence[np.ndarray], logits: bool = False) -> list[np.ndarray] | list[torch.Tensor]:
        """For each uint8 image (H×W, H×W×1, ×3 RGB or ×4 RGBA; any size): an H×W mask of class ids, or with
        `logits=True` the [C, H, W] class logits at the image's size. Images of one size share a batch."""
        return predict_logits(self.model, images) if logits else predict(self.model, images)
