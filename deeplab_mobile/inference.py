"""Segment images as the model's preset expects them: channels to RGB, size per `input_mode`, pixel normalisation,
then logits back at each image's own size so the mask always covers every pixel, odd sizes included."""

from __future__ import annotations

from typing import Sequence

import numpy as np
import torch
import torch.nn.functional as F

from backbone.fusion import fuse_for_inference  # noqa: F401  (re-exported for the demo and benchmarks)
from common.images import as_rgb, normalization_stats
from deeplab_mobile.model import MobileDeepLabV3
from deeplab_mobile.presets import DeepLabPreset, Normalization


def normalize(images: torch.Tensor, kind: Normalization) -> torch.Tensor:
    """Float pixels in 0..255 [B, 3, H, W] → the network's input range."""
    mean, std = (torch.tensor(v, dtype=images.dtype, device=images.device).view(1, 3, 1, 1) * 255.0
                 for v in normalization_stats(kind))  # fmt: skip
    return (images - mean) / std


def padded_region(size: tuple[int, int], crop: int) -> tuple[int, int]:
    """The "pad" input mode's image region: long side to `crop`, aspect kept (the rest of the crop is padding)."""
    h, w = size
    scale = crop / max(h, w)
    return min(crop, max(1, round(h * scale))), min(crop, max(1, round(w * scale)))


def _network_input(pixels: torch.Tensor, preset: DeepLabPreset) -> tuple[torch.Tensor, tuple[int, int]]:
    """The normalised network input and the size of the image region inside it (smaller than it when padded)."""
    h, w = pixels.shape[-2:]
    crop = preset.crop_size
    if preset.input_mode == "any":
        return normalize(pixels, preset.normalization), (h, w)
    if preset.input_mode == "resize":
        size = (crop, crop)
    else:
        size = padded_region((h, w), crop)
    if size != (h, w):
        pixels = F.interpolate(pixels, size=size, mode="bilinear", align_corners=False, antialias=True)
    x = normalize(pixels, preset.normalization)
    # Padding after normalising puts the mean pixel (0) in the border, as TF DeepLab pads with the mean.
    return F.pad(x, [0, crop - size[1], 0, crop - size[0]]), size


@torch.inference_mode()
def predict_logits(model: MobileDeepLabV3, images: Sequence[np.ndarray]) -> list[torch.Tensor]:
    """Class logits [C, H, W] at the size of each image (uint8, any size and channel layout, see `as_rgb`); images
    of one size share a forward pass (video frames).

    Runs in eval mode and gives the model back in the mode it came in, as `ssdlite.predict` does.
    """
    preset = model.preset
    if preset is None:
        raise ValueError("a MobileDeepLabV3 without a preset: build it with build_deeplab or load_deeplab")
    rgb = [as_rgb(image) for image in images]
    by_size: dict[tuple[int, int], list[int]] = {}
    for i, image in enumerate(rgb):
        by_size.setdefault(image.shape[:2], []).append(i)
    device = next(model.parameters()).device
    out: list[torch.Tensor] = [torch.empty(0)] * len(rgb)
    was_training = model.training
    model.eval()
    try:
        for size, indices in by_size.items():
            pixels = torch.from_numpy(np.stack([rgb[i] for i in indices])).to(device).permute(0, 3, 1, 2).float()
            x, (h, w) = _network_input(pixels, preset)
            logits = model(x)[:, :, :h, :w]
            if (h, w) != size:
                logits = F.interpolate(logits, size=size, mode="bilinear", align_corners=False)
            for i, one in zip(indices, logits):
                out[i] = one
    finally:
        model.train(was_training)
    return out


def predict(model: MobileDeepLabV3, images: Sequence[np.ndarray]) -> list[np.ndarray]:
    """A class-id mask H×W per image (uint8 up to 256 classes, else int32), at that image's own size."""
    dtype = np.uint8 if model.num_classes <= 256 else np.int32
    return [logits.argmax(0).cpu().numpy().astype(dtype) for logits in predict_logits(model, images)]
