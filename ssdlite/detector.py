"""Detecting objects in images: SSDLite's one preprocessing, the one path from network inputs to detections in each
image's own pixels, and the object a user holds.

    detector = Detector.from_pretrained("ssdlite_pedestrian")
    for found in detector([image]):
        print(found.names, found.scores, found.boxes)

`preprocess_image` (resize + normalise as the preset says) and `detect_inputs` (run, decode, NMS, boxes back in
the image's pixels) are what `Detector`, evaluation (eval/coco_map.py, eval/voc_map.py and training's validation,
through the evaluation transform), the export checks and the on-device runtime all call, so a reported mAP is what
a user gets. Same shape as `deeplab_mobile.Segmenter` (backbone/predictor.py): `from_pretrained`, `load`, `save`,
`to`, `.model`, `.preset`, `.class_names`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Sequence

import numpy as np
import torch

from backbone.predictor import Predictor, inference_view
from common.images import as_rgb, check_image_list, normalized_tensor, resize_pixels
from ssdlite.checkpoint import load_ssdlite, save_ssdlite
from ssdlite.model import SSDLite
from ssdlite.postprocess import Detections, postprocess
from ssdlite.presets import SSDLitePreset

SCORE_THRESHOLD = 0.3  # what a person wants to see (the video demo's default); evaluation uses the preset's own


def preprocess_image(image: np.ndarray, preset: SSDLitePreset) -> torch.Tensor:
    """SSDLite's one preprocessing: an H×W×3 uint8 image → the normalised [3, H, W] network input at the preset's
    size, stretched (aspect not kept, like TF's fixed-shape resizer) by the preset's resize method, the one the
    model was trained with: TF's bilinear for Google's models, the training pipeline's for ours."""
    return normalized_tensor(resize_pixels(image, preset.image_size, preset.resize), preset.normalization)


def preprocess(images: Sequence[np.ndarray], preset: SSDLitePreset) -> tuple[torch.Tensor, list[tuple[int, int]]]:
    """`preprocess_image` over in-memory images (any `as_rgb` input): [B, 3, H, W] and each image's (h, w)."""
    rgb = [as_rgb(image) for image in check_image_list(images)]
    return torch.stack([preprocess_image(image, preset) for image in rgb]), [image.shape[:2] for image in rgb]


def check_threshold(name: str, value: float | None, low: float = 0.0, high: float = 1.0) -> None:
    """A threshold argument must be a number in [low, high] (NaN would silently keep nothing)."""
    if value is not None and not (isinstance(value, (int, float)) and math.isfinite(value) and low <= value <= high):
        raise ValueError(f"{name} must be a number in [{low:g}, {high:g}], got {value!r}")


@torch.inference_mode()
def detect_inputs(
    model: SSDLite,
    x: torch.Tensor,
    sizes: Sequence[tuple[int, int]],
    *,
    score_threshold: float | None = None,
    nms_iou: float | None = None,
    detections_per_image: int | None = None,
) -> list[Detections]:
    """Detections for a batch of `preprocess_image` inputs, boxes (x0, y0, x1, y1) in the pixels of each original
    image (`sizes`, (h, w)); thresholds default to the preset's. Runs on an eval-mode view of the model, which is
    left as it was (backbone.predictor.inference_view)."""
    check_threshold("score_threshold", score_threshold)
    check_threshold("nms_iou", nms_iou)
    preset = model.preset
    device = next(model.parameters()).device
    box_regression, class_logits = inference_view(model)(x.to(device))
    return postprocess(
        box_regression,
        class_logits,
        model.anchors(preset.image_size, device),
        sizes,
        classification=preset.classification,
        score_threshold=preset.score_threshold if score_threshold is None else score_threshold,
        nms_iou=preset.nms_iou if nms_iou is None else nms_iou,
        pre_nms_topk=preset.pre_nms_topk,
        detections_per_image=preset.detections_per_image if detections_per_image is None else detections_per_image,
    )


def predict(
    model: SSDLite,
    images: Sequence[np.ndarray],
    *,
    score_threshold: float | None = None,
    nms_iou: float | None = None,
    detections_per_image: int | None = None,
) -> list[Detections]:
    """Detections for each image (uint8, any size and channel layout), boxes in its own pixels; thresholds default
    to the preset's."""
    if not len(check_image_list(images)):
        return []
    x, sizes = preprocess(images, model.preset)
    return detect_inputs(
        model, x, sizes, score_threshold=score_threshold, nms_iou=nms_iou, detections_per_image=detections_per_image
    )


@dataclass(frozen=True)
class DetectionResult:
    """One image's detections, best first: boxes [N, 4] (x0, y0, x1, y1) in that image's pixels, scores [N],
    labels [N] (class indices, 0 is the background and never reported) and their names."""

    boxes: np.ndarray
    scores: np.ndarray
    labels: np.ndarray
    names: list[str]

    def __len__(self) -> int:
        return len(self.scores)


class Detector(Predictor):
    """An SSDLite model with its preset and class names; `detector(images)` detects in each image."""

    load_model = staticmethod(load_ssdlite)
    save_model = staticmethod(save_ssdlite)
    model: SSDLite
    preset: SSDLitePreset

    def __call__(self, images: Sequence[np.ndarray], score_threshold: float = SCORE_THRESHOLD) -> list[DetectionResult]:
        """Detections scoring above `score_threshold` for each uint8 image (H×W, H×W×1, ×3 RGB or ×4 RGBA;
        any size), in one batch."""
        found = predict(self.model, images, score_threshold=score_threshold)
        names = self.class_names
        return [
            DetectionResult(
                d["boxes"].cpu().numpy(),
                d["scores"].cpu().numpy(),
                d["labels"].cpu().numpy(),
                [names[i] for i in d["labels"].tolist()],
            )
            for d in found
        ]
