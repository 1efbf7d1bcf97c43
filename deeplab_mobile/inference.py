"""Segment one image as a preset expects it: channels to RGB, size per `input_mode`, pixel normalisation, then
logits back at the image's own size so the mask always covers every pixel, odd sizes included."""

from __future__ import annotations

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
    rgb = as_rgb(image)
    device = next(model.parameters()).device
    pixels = torch.tensor(rgb, device=device).permute(2, 0, 1)[None].float()
    x, (h, w) = _network_input(pixels, preset)
    was_training = model.training
    model.eval()
    try:
        logits = model(x)[:, :, :h, :w]
    finally:
        model.train(was_training)
    if (h, w) != rgb.shape[:2]:
        logits = F.interpolate(logits, size=rgb.shape[:2], mode="bilinear", align_corners=False)
    return logits[0]


def predict(model: MobileDeepLabV3, image: np.ndarray, preset: DeepLabPreset) -> np.ndarray:
    """Class-id mask H×W (uint8 up to 256 classes, else int32) for an H×W(×C) uint8 image."""
    mask = predict_logits(model, image, preset).argmax(0).cpu().numpy()
    return mask.astype(np.uint8 if model.num_classes <= 256 else np.int32)
