"""The detector a user holds: built from a weights name or a checkpoint, called on a list of images.

    detector = Detector.from_pretrained("ssdlite_pedestrian")
    for found in detector([image]):
        print(found.names, found.scores, found.boxes)

Same shape as `deeplab_mobile.Segmenter` (backbone/predictor.py): `from_pretrained`, `load`, `save`, `to`, `.model`,
`.preset`, `.class_names`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np

from backbone.predictor import Predictor
from ssdlite.checkpoint import load_ssdlite, save_ssdlite
from ssdlite.model import SSDLite
from ssdlite.predict import predict
from ssdlite.presets import SSDLitePreset

SCORE_THRESHOLD = 0.3  # what a person wants to see (the video demo's default); evaluation uses the preset's own


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
        """Detections scoring at least `score_threshold` for each uint8 image (H×W, H×W×1, ×3 RGB or ×4 RGBA;
        any size), in one batch."""
        found = predict(self.model, images, score_threshold=score_threshold)
        names = self.class_names
        return [
            DetectionResult(d["boxes"].cpu().numpy(), d["scores"].cpu().numpy(), d["labels"].cpu().numpy(),
                            [names[i] for i in d["labels"].tolist()])  # fmt: skip
            for d in found
        ]
