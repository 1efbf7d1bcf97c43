"""Segment one image as a preset expects it: channels to RGB, size per `input_mode`, pixel normalisation, then
logits back at the image's own size so the mask always covers every pixel, odd sizes included."""

from __future__ import annotations

from typing import Sequence

import numpy as np
import torch
import torch.nn.functional as F

from backbone.fusion import fuse_for_inference  # noqa: F401  (re-exported for the demo and benchmarks)
from datasets.images import as_rgb
from datasets.transforms import normalization_stats
from deeplab_mobile.model import MobileDeepLabV3
from deeplab_mobile.presets import DeepLabPreset, Normalization


def normalize(images: torch.Tensor, kind: Normalization) -> torch.Tensor:
    """Float pixels in 0..255 [B, 3, H, W] → the network's input range."""
    mean, std = (torch.tensor(v, dtype=images.dtype, device=images.device).view(1, 3, 1, 1) * 255.0
                 for v in normalization_stats(kind))  # fmt: skip
    return (images - mean) / std


def _network_input(pixels: torch.Tensor, preset: DeepLabPreset) -> tuple[torch.Tensor, tuple[int, int]]:
    """The normalised network input and the size of the image region inside it (smaller than it when padded)."""
    h, w = pixels.shape[-2:]
    crop = preset.crop_size
    if preset.input_mode == "any":
        return normalize(pixels, preset.normalization), (h, w)
    if preset.input_mode == "resize":
        size = (crop, crop)
    else:  # "pad": long side to the crop size, aspect kept
        scale = crop / max(h, w)
        size = (min(crop, max(1, round(h * scale))), min(crop, max(1, round(w * scale))))
    if size != (h, w):
        pixels = F.interpolate(pixels, size=size, mode="bilinear", align_corners=False, antialias=True)
    x = normalize(pixels, preset.normalization)
    # Padding after normalising puts the mean pixel (0) in the border, as TF DeepLab pads with the mean.
    return F.pad(x, [0, crop - size[1], 0, crop - size[0]]), size


@torch.inference_mode()
def predict_logits(model: MobileDeepLabV3, image: np.ndarray, preset: DeepLabPreset) -> torch.Tensor:
    """Class logits [C, H, W] at the size of `image` (uint8, any size and channel layout, see `as_rgb`)."""
    return predict_logits_batch(model, [image], preset)[0]


@torch.inference_mode()
def predict_logits_batch(model: MobileDeepLabV3, images: Sequence[np.ndarray], preset: DeepLabPreset) -> torch.Tensor:
    """Class logits [B, C, H, W] for images of one size in one forward pass: the throughput path for video frames."""
    rgb = [as_rgb(image) for image in images]
    if len({image.shape[:2] for image in rgb}) != 1:
        raise ValueError(f"a batch needs images of one size, got {sorted({image.shape[:2] for image in rgb})}")
    device = next(model.parameters()).device
    pixels = torch.from_numpy(np.stack(rgb)).to(device).permute(0, 3, 1, 2).float()
    x, (h, w) = _network_input(pixels, preset)
    was_training = model.training
    model.eval()
    try:
        logits = model(x)[:, :, :h, :w]
    finally:
        model.train(was_training)
    if (h, w) != rgb[0].shape[:2]:
        logits = F.interpolate(logits, size=rgb[0].shape[:2], mode="bilinear", align_corners=False)
    return logits


def predict(model: MobileDeepLabV3, image: np.ndarray, preset: DeepLabPreset) -> np.ndarray:
    """Class-id mask H×W (uint8 up to 256 classes, else int32) for an H×W(×C) uint8 image."""
    mask = predict_logits(model, image, preset).argmax(0).cpu().numpy()
    return mask.astype(np.uint8 if model.num_classes <= 256 else np.int32)
