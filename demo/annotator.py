"""What the video demo draws on a frame: SSDLite boxes and Mobile DeepLabv3 masks from the loaded models, with a
legend of the classes shown. A model is a checkpoint or weights name (PyTorch, BatchNorm folded) or an on-device
.tflite written by tools.export (run in the LiteRT interpreter, so what is shipped is what is shown).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from backbone.predictor import fuse_for_inference
from common.errors import UserError, WeightsError
from deeplab_mobile.checkpoint import load_deeplab
from deeplab_mobile.segmenter import predict as segment
from demo.overlay import Colour, blend, class_colours, draw_detections, draw_legend
from ssdlite.checkpoint import load_ssdlite
from ssdlite.detector import predict as detect
from ssdlite.postprocess import Detections
from tools.export_graphs import ExportError
from tools.litert_runtime import LiteRTModel

Detector = Callable[[Sequence[np.ndarray], float], list[Detections]]  # frames, score threshold → detections
Segmenter = Callable[[Sequence[np.ndarray]], list[np.ndarray]]  # frames → uint8 class masks at their sizes


@dataclass
class Annotated:
    image: np.ndarray  # the frame with masks, boxes and legend (not the FPS, which depends on the run)
    classes: list[str]  # the legend: classes drawn in this frame


@dataclass
class Annotator:
    """The loaded models and how to draw their outputs; one call annotates a batch of frames with one model call
    per model."""

    detector: Detector | None = None
    det_names: Sequence[str] = ()
    segmenter: Segmenter | None = None
    seg_names: Sequence[str] = ()
    score_threshold: float = 0.3
    runtimes: dict[str, str] = field(default_factory=dict)  # flag → what runs it, for the run's summary line
    det_colours: list[Colour] = field(init=False)
    seg_colours: list[Colour] = field(init=False)

    def __post_init__(self) -> None:
        self.det_colours = class_colours(self.det_names, self.seg_names)
        self.seg_colours = class_colours(self.seg_names)

    def __call__(self, frames: Sequence[np.ndarray]) -> list[Annotated]:
        detections = self.detector(frames, self.score_threshold) if self.detector else [None] * len(frames)
        masks = self.segmenter(frames) if self.segmenter else [None] * len(frames)
        return [self._draw(frame, det, mask) for frame, det, mask in zip(frames, detections, masks, strict=True)]

    def _draw(self, frame: np.ndarray, detections: Detections | None, mask: np.ndarray | None) -> Annotated:
        legend: dict[str, Colour] = {}  # name → colour, in drawing order
        image = frame.copy() if mask is None else blend(frame, mask)
        for index in np.flatnonzero(np.bincount(mask.ravel())) if mask is not None else ():  # classes present
            if index:  # not the background
                legend[self.seg_names[index]] = self.seg_colours[index]
        if detections is not None:
            labels = detections["labels"].cpu().numpy()
            boxes, scores = (detections[key].float().cpu().numpy() for key in ("boxes", "scores"))
            draw_detections(image, boxes, scores, labels, self.det_names, self.det_colours)
            for label in labels:
                legend.setdefault(self.det_names[label], self.det_colours[label])
        draw_legend(image, legend)
        return Annotated(image, list(legend))


def _on_device(path: str, head: str, half: bool) -> LiteRTModel:
    if half:
        raise ExportError(f"{path}: a LiteRT file runs on the CPU in the precision it was exported in; drop --half")
    model = LiteRTModel(path)
    if model.is_detector != (head == "det"):
        kind = "an SSDLite (boxes): pass it as --det" if model.is_detector else "a DeepLab (masks): pass it as --seg"
        raise ExportError(f"{path} is {kind}")
    return model


def _pytorch(device: torch.device, half: bool) -> str:
    return f"PyTorch, {device}, {'fp16' if half else 'fp32'}"


def _litert(model: LiteRTModel) -> str:
    return f"LiteRT {'int8' if model.is_int8 else 'fp32'}, CPU"


def load_detector(spec: str, device: torch.device, half: bool) -> tuple[Detector, list[str], str]:
    """SSDLite from a checkpoint, weights name or .tflite: (frames, threshold → detections, class names, runtime)."""
    if Path(spec).suffix == ".tflite":
        model = _on_device(spec, "det", half)
        return model.detect, model.class_names, _litert(model)
    network, checkpoint = load_ssdlite(spec)
    network = fuse_for_inference(network).to(device)

    def run(frames: Sequence[np.ndarray], threshold: float) -> list[Detections]:
        # fp16 by autocast: predict() feeds fp32 tensors, autocast runs the convolutions in half precision.
        with torch.autocast("cuda", torch.float16, enabled=half):
            return detect(network, frames, score_threshold=threshold)

    return run, list(checkpoint["class_names"]), _pytorch(device, half)


def load_segmenter(spec: str, device: torch.device, half: bool) -> tuple[Segmenter, list[str], str]:
    """DeepLab from a checkpoint, weights name or .tflite: (frames → masks, class names, runtime)."""
    if Path(spec).suffix == ".tflite":
        model = _on_device(spec, "seg", half)
        return model.segment, model.class_names, _litert(model)
    network, _ = load_deeplab(spec)
    names, network = list(network.class_names), fuse_for_inference(network).to(device)

    def run(frames: Sequence[np.ndarray]) -> list[np.ndarray]:
        with torch.autocast("cuda", torch.float16, enabled=half):  # frames of one size share a forward pass
            return segment(network, frames)

    return run, names, _pytorch(device, half)


def load_annotator(
    det: str | None, seg: str | None, device: torch.device, half: bool, score_threshold: float
) -> Annotator:
    """Both models; one that cannot be used (missing, corrupt, the other head, no runtime for a .tflite) is a
    UserError naming its flag and file."""
    detector, det_names, segmenter, seg_names, runtimes = None, [], None, [], {}
    for flag, spec in (("--det", det), ("--seg", seg)):
        if spec is None:
            continue
        try:
            if flag == "--det":
                detector, det_names, runtimes[flag] = load_detector(spec, device, half)
            else:
                segmenter, seg_names, runtimes[flag] = load_segmenter(spec, device, half)
        except (WeightsError, ExportError) as e:
            raise UserError(f"{flag} {e}") from None
    return Annotator(detector, det_names, segmenter, seg_names, score_threshold, runtimes)
