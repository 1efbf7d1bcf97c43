"""Segmenting images: DeepLab's one preprocessing, the one path from network inputs to class scores at each
image's own size, and the object a user holds.

    segmenter = Segmenter.from_pretrained("deeplab_coral_voc")
    mask = segmenter([image])[0]          # H×W class ids, segmenter.class_names[i] names id i

`preprocess_image` (resize + normalise as the preset says) and `masks_at_image_size` (batch equal inputs, run,
average scales and flips, cut the image region out and bring it to the image's size: `scores_at_image_size`, then
the argmax) are what `Segmenter`, evaluation (eval/voc_miou.py and training's validation, through the evaluation
transform), the export checks and the on-device runtime all call, so a reported mIoU is what a user gets. Images
beyond LARGE × the crop size run at a bounded size (see LARGE). Same shape as `ssdlite.Detector`
(backbone/predictor.py): `from_pretrained`, `load`, `save`, `to`, `.model`, `.preset`, `.class_names`.
"""

from __future__ import annotations

from typing import Sequence

import cv2
import numpy as np
import torch
import torch.nn.functional as F

from backbone.predictor import Predictor, inference_view
from common.images import as_rgb, check_image_list, normalized_tensor, resize_pixels
from deeplab_mobile.checkpoint import load_deeplab, save_deeplab
from deeplab_mobile.model import MobileDeepLabV3
from deeplab_mobile.presets import DeepLabPreset

PAPER_MF_SCALES = (0.5, 0.75, 1.0, 1.25, 1.5, 1.75)  # DeepLabv3's multi-scale inputs; with flip this is "MF"
# An image whose long side exceeds LARGE × the crop size runs brought down to that (input mode "any"), and one with
# more pixels than (LARGE × crop)² gets its mask (not its class scores) resized back: a 10000×10000 photo costs what
# a 1539×1539 one costs (crop 513) instead of gigabytes of full-size scores.
LARGE = 3
Region = tuple[int, int]  # (h, w) of the image inside a network input, from the top-left corner


def padded_region(size: tuple[int, int], crop: int) -> Region:
    """The "pad" input mode's image region: the image's own size when it fits the crop (TF DeepLab's eval pads,
    never rescales), else the long side brought down to `crop`, aspect kept (TF's `resize_to_range`)."""
    h, w = size
    if max(h, w) <= crop:
        return h, w
    scale = crop / max(h, w)
    return min(crop, max(1, round(h * scale))), min(crop, max(1, round(w * scale)))


def network_region(size: tuple[int, int], preset: DeepLabPreset) -> Region:
    """The size an image of `size` (h, w) takes inside the network input, by the preset's input mode ("any" brings
    only images beyond LARGE × the crop down, aspect kept)."""
    if preset.input_mode == "resize":
        return preset.crop_size, preset.crop_size
    return padded_region(size, preset.crop_size * (1 if preset.input_mode == "pad" else LARGE))


def is_large(size: tuple[int, int], preset: DeepLabPreset) -> bool:
    """Whether an image of `size` gets its mask resized back rather than its scores (see LARGE)."""
    return size[0] * size[1] > (LARGE * preset.crop_size) ** 2


def preprocess_image(image: np.ndarray, preset: DeepLabPreset) -> tuple[torch.Tensor, Region]:
    """DeepLab's one preprocessing: an H×W×3 uint8 image → the normalised [3, H', W'] network input and the region
    the image fills in it (from the top-left). Resized (if the input mode asks) by the preset's method, the one the
    model was trained with; then padded bottom/right up to the crop size with 0 after normalising, which is the
    mean pixel, as TF DeepLab pads."""
    region = network_region(image.shape[:2], preset)
    x = normalized_tensor(resize_pixels(image, region, preset.resize), preset.normalization)
    crop = preset.crop_size
    return F.pad(x, [0, max(0, crop - region[1]), 0, max(0, crop - region[0])]), region


def class_scores(
    model: torch.nn.Module, x: torch.Tensor, scales: Sequence[float] = (1.0,), flip: bool = False
) -> torch.Tensor:
    """[B, C, H, W] scores of a batch of network inputs at their own size: the logits at one scale without flip,
    else the class probabilities averaged over the rescaled (and horizontally flipped) inputs."""
    if tuple(scales) == (1.0,) and not flip:
        return model(x)
    size, total = x.shape[-2:], None
    for scale in scales:
        scaled = x if scale == 1.0 else F.interpolate(x, scale_factor=scale, mode="bilinear", align_corners=False)
        for flipped in (False, True) if flip else (False,):
            logits = model(scaled.flip(-1) if flipped else scaled)
            logits = logits.flip(-1) if flipped else logits
            if logits.shape[-2:] != size:
                logits = F.interpolate(logits, size=size, mode="bilinear", align_corners=False)
            total = logits.softmax(1) if total is None else total + logits.softmax(1)
    return total / (len(scales) * (2 if flip else 1))


@torch.inference_mode()
def scores_at_image_size(
    model: MobileDeepLabV3,
    inputs: Sequence[torch.Tensor],
    regions: Sequence[Region],
    sizes: Sequence[tuple[int, int]],
    scales: Sequence[float] = (1.0,),
    flip: bool = False,
) -> list[torch.Tensor]:
    """Class scores [C, h, w] at each image's own size (h, w) = `sizes[i]`, from `preprocess_image`'s inputs and
    regions. Inputs of one shape share a forward pass (video frames, padded VOC images). Runs on an eval-mode view
    of the model, which is left as it was (backbone.predictor.inference_view)."""
    network = inference_view(model)
    device = next(model.parameters()).device
    by_shape: dict[tuple[int, ...], list[int]] = {}
    for i, x in enumerate(inputs):
        by_shape.setdefault(tuple(x.shape), []).append(i)
    out: list[torch.Tensor] = [torch.empty(0)] * len(inputs)
    for indices in by_shape.values():
        scores = class_scores(network, torch.stack([inputs[i] for i in indices]).to(device), scales, flip)
        for i, one in zip(indices, scores, strict=True):
            (h, w), size = regions[i], tuple(sizes[i])
            one = one[:, :h, :w]
            out[i] = (
                one if (h, w) == size else F.interpolate(one[None], size=size, mode="bilinear", align_corners=False)[0]
            )
    return out


def masks_at_image_size(
    model: MobileDeepLabV3,
    inputs: Sequence[torch.Tensor],
    regions: Sequence[Region],
    sizes: Sequence[tuple[int, int]],
    scales: Sequence[float] = (1.0,),
    flip: bool = False,
) -> list[torch.Tensor]:
    """The argmax of `scores_at_image_size` per image (`mask_at_image_size`: for a large image the argmax at the
    network's size, resized back by nearest neighbour). `predict` and evaluation both take their masks from here."""
    large = [is_large(tuple(size), model.preset) for size in sizes]
    scores = scores_at_image_size(
        model, inputs, regions, [r if big else s for r, s, big in zip(regions, sizes, large, strict=True)], scales, flip
    )
    return [mask_at_image_size(one, tuple(size), model.preset) for one, size in zip(scores, sizes, strict=True)]


def mask_at_image_size(scores: torch.Tensor, size: tuple[int, int], preset: DeepLabPreset) -> torch.Tensor:
    """The class-id mask (uint8 up to 256 classes, else int32) at `size` (h, w) of class scores [C, h', w'] of the
    image's region: bilinear on the scores, or for a large image (`is_large`) nearest neighbour on the argmax. The
    on-device runtime (tools/litert_runtime.py) finishes its masks here too."""
    if not is_large(size, preset) and tuple(scores.shape[-2:]) != size:
        scores = F.interpolate(scores[None].float(), size=size, mode="bilinear", align_corners=False)[0]
    mask = scores.argmax(0).to(torch.uint8 if scores.shape[0] <= 256 else torch.int32).cpu()
    if tuple(mask.shape) != size:
        mask = torch.from_numpy(cv2.resize(mask.numpy(), (size[1], size[0]), interpolation=cv2.INTER_NEAREST))
    return mask


def _prepared(model: MobileDeepLabV3, images: Sequence[np.ndarray]) -> tuple[list, list, list]:
    """(network inputs, regions, image sizes) of in-memory images (any `as_rgb` input)."""
    rgb = [as_rgb(image) for image in check_image_list(images)]
    prepared = [preprocess_image(image, model.preset) for image in rgb]
    return [x for x, _ in prepared], [r for _, r in prepared], [image.shape[:2] for image in rgb]


def predict_logits(
    model: MobileDeepLabV3, images: Sequence[np.ndarray], scales: Sequence[float] = (1.0,), flip: bool = False
) -> list[torch.Tensor]:
    """Class scores [C, H, W] at the size of each image (uint8, any size and channel layout, see `as_rgb`): logits,
    or with several `scales` / `flip` the averaged probabilities (`class_scores`). Full-size float scores of a very
    large image take gigabytes (C × H × W × 4 bytes): `predict`'s masks do not."""
    return scores_at_image_size(model, *_prepared(model, images), scales, flip)


def predict(
    model: MobileDeepLabV3, images: Sequence[np.ndarray], scales: Sequence[float] = (1.0,), flip: bool = False
) -> list[np.ndarray]:
    """A class-id mask H×W per image (uint8 up to 256 classes, else int32), at that image's own size."""
    return [mask.numpy() for mask in masks_at_image_size(model, *_prepared(model, images), scales, flip)]


class Segmenter(Predictor):
    """A Mobile DeepLabv3 model with its preset and class names; `segmenter(images)` segments each image."""

    load_model = staticmethod(load_deeplab)
    save_model = staticmethod(save_deeplab)
    model: MobileDeepLabV3
    preset: DeepLabPreset

    def __call__(
        self, images: Sequence[np.ndarray], logits: bool = False, scales: Sequence[float] = (1.0,), flip: bool = False
    ) -> list[np.ndarray] | list[torch.Tensor]:
        """For each uint8 image (H×W, H×W×1, ×3 RGB or ×4 RGBA; any size): an H×W mask of class ids, or with
        `logits=True` the [C, H, W] class scores at the image's size. `scales` and `flip` average the predictions
        of rescaled and mirrored inputs (`PAPER_MF_SCALES` with `flip=True` is the paper's "MF")."""
        return predict_logits(self.model, images, scales, flip) if logits else predict(self.model, images, scales, flip)
