"""Inference on raw images of any size and channel count: resize to the preset's input, normalise, run, and return
detections in each original image's pixels. The one path the demo, evaluation and tests share."""

from __future__ import annotations

import dataclasses
from typing import Sequence

import numpy as np
import torch

from backbone.fusion import fuse_for_inference  # noqa: F401  (re-exported for the demo and benchmarks)
from common.images import resize_rgb_batch
from ssdlite.model import SSDLite
from ssdlite.postprocess import Detections, postprocess_with_preset


def preprocess(images: Sequence[np.ndarray], model: SSDLite) -> tuple[torch.Tensor, list[tuple[int, int]]]:
    """A normalised [B, 3, H, W] batch at the preset's input size (PIL bilinear, aspect not kept, like TF's
    fixed-shape resizer) and the original (h, w) of each image."""
    preset = model.preset
    pixels, sizes = resize_rgb_batch(images, preset.image_size)
    x = torch.from_numpy(pixels).permute(0, 3, 1, 2).float().div_(255.0)
    mean = torch.tensor(preset.mean).view(1, 3, 1, 1)
    std = torch.tensor(preset.std).view(1, 3, 1, 1)
    return (x - mean) / std, sizes


@torch.inference_mode()
def predict(
    model: SSDLite,
    images: Sequence[np.ndarray],
    score_threshold: float | None = None,
    nms_iou: float | None = None,
    detections_per_image: int | None = None,
) -> list[Detections]:
    """Detections for each image, boxes (x0, y0, x1, y1) in its own pixels; thresholds default to the preset's.

    Runs in eval mode (BatchNorm must use its running statistics for single images) and gives the model back in
    the mode it came in, as `deeplab_mobile.predict` does.
    """
    if not len(images):
        return []
    preset = model.preset
    device = next(model.parameters()).device
    x, sizes = preprocess(images, model)
    was_training = model.training
    model.eval()
    try:
        box_regression, class_logits = model(x.to(device))
    finally:
        model.train(was_training)
    overrides = {"score_threshold": score_threshold, "nms_iou": nms_iou, "detections_per_image": detections_per_image}
    settings = dataclasses.replace(preset, **{k: v for k, v in overrides.items() if v is not None})
    return postprocess_with_preset(box_regression, class_logits, model.anchors(preset.image_size, device), sizes,
                                   settings)  # fmt: skip
