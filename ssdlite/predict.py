"""Inference on raw images of any size and channel count: resize to the preset's input, normalise, run, and return
detections in each original image's pixels. The one path the demo, evaluation and tests share."""

from __future__ import annotations

import copy
from typing import Sequence

import numpy as np
import torch
from PIL import Image
from torch import nn
from torch.nn.utils.fusion import fuse_conv_bn_eval

from backbone.layers import ConvBNAct
from ssdlite.model import SSDLite
from ssdlite.postprocess import Detections, postprocess


def fuse_for_inference(model: SSDLite) -> SSDLite:
    """An eval-mode copy with each BatchNorm folded into the conv before it, for deployment (demo, benchmarks).

    Same outputs up to float rounding; on CPU it saves the ~25% of inference time eager BatchNorm takes. The copy
    has other state-dict keys and cannot be trained, so checkpoints are always written from the unfolded model.
    """
    folded = copy.deepcopy(model).eval()
    for module in folded.modules():
        if isinstance(module, ConvBNAct) and isinstance(module.bn, nn.BatchNorm2d):
            module.conv = fuse_conv_bn_eval(module.conv, module.bn)
            module.bn = nn.Identity()
    return folded.to(memory_format=torch.channels_last)


def as_rgb(image: np.ndarray) -> np.ndarray:
    """HxW, HxWx1 (gray), HxWx3 (RGB) or HxWx4 (RGBA, alpha dropped) uint8 → HxWx3 uint8."""
    if not isinstance(image, np.ndarray):
        raise ValueError(f"expected an image as a numpy array, got {type(image).__name__}")
    if image.dtype != np.uint8:
        raise ValueError(f"expected 8-bit pixels (uint8), got {image.dtype}: convert the image to uint8 first")
    if image.ndim == 2:
        image = image[:, :, None]
    if image.ndim != 3 or image.shape[2] not in (1, 3, 4):
        raise ValueError(
            f"expected an HxW, HxWx1, HxWx3 or HxWx4 image, got shape {image.shape}: "
            "gray, RGB and RGBA images are supported"
        )
    if image.shape[0] == 0 or image.shape[1] == 0:
        raise ValueError(f"empty image of shape {image.shape}")
    if image.shape[2] == 1:
        return np.repeat(image, 3, axis=2)
    return image[:, :, :3]


def preprocess(images: Sequence[np.ndarray], model: SSDLite) -> tuple[torch.Tensor, list[tuple[int, int]]]:
    """A normalised [B, 3, H, W] batch at the preset's input size (PIL bilinear, aspect not kept, like TF's
    fixed-shape resizer) and the original (h, w) of each image."""
    preset = model.preset
    height, width = preset.image_size
    batch, sizes = [], []
    for image in images:
        rgb = as_rgb(image)
        sizes.append(rgb.shape[:2])
        if rgb.shape[:2] != (height, width):
            rgb = np.asarray(Image.fromarray(rgb).resize((width, height), Image.BILINEAR))
        batch.append(rgb)
    x = torch.from_numpy(np.stack(batch)).permute(0, 3, 1, 2).float().div_(255.0)
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

    Puts the model in eval mode: BatchNorm must use its running statistics for single images.
    """
    if not len(images):
        return []
    preset = model.preset
    device = next(model.parameters()).device
    x, sizes = preprocess(images, model)
    model.eval()
    box_regression, class_logits = model(x.to(device))
    return postprocess(
        box_regression,
        class_logits,
        model.anchors(preset.image_size, device),
        sizes,
        preset.classification,
        preset.score_threshold if score_threshold is None else score_threshold,
        preset.nms_iou if nms_iou is None else nms_iou,
        preset.pre_nms_topk,
        preset.detections_per_image if detections_per_image is None else detections_per_image,
    )
