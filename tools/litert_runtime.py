"""Running a .tflite written by tools.export in the LiteRT interpreter (XNNPACK on CPU), the runtime a phone app
links, with the suite's own pre- and post-processing: images in, the suite's detections or masks out. The export
verifies with it, the video demo shows with it (`--det x.tflite`), the deploy benchmark times it.

The file takes what phone runtimes give it: uint8 RGB [1, H, W, 3], resized outside (here by the preset's method,
recorded in the file's metadata, as the head's own preprocessing does; a DeepLab "pad" preset pads with the mean
colour); normalisation is inside. SSDLite's outputs are MediaPipe's 2-output SSD form: locations [1, A, 4] as
(ty, tx, th, tw) against the anchors stored in the file, and activated class scores [1, A, C - 1]; they are decoded
and put through the suite's per-class NMS here. DeepLab's output is [1, H, W, C] class logits.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from common.cli import native_stderr_captured
from common.images import as_rgb, check_image_list, resize_pixels
from deeplab_mobile.presets import DeepLabPreset
from deeplab_mobile.segmenter import mask_at_image_size, network_region
from ssdlite.anchors import decode_boxes
from ssdlite.postprocess import Detections, select_detections
from tools.export_graphs import ExportError, require
from tools.litert_metadata import EXTRA, read_tflite_metadata

Region = tuple[int, int]


def _uint8(pixels: np.ndarray) -> np.ndarray:
    return np.clip(np.round(pixels), 0, 255).astype(np.uint8)


def phone_input(image: np.ndarray, metadata: Mapping[str, Any]) -> tuple[np.ndarray, Region]:
    """The uint8 [H, W, 3] input a file of this metadata takes for an in-memory image, and the image's region in it
    (from the top-left): the head's own preprocessing (the preset's resize; a DeepLab input padded with the mean
    colour, which normalises to about 0 as the padding of `deeplab_mobile.preprocess_image` does) before the
    normalisation, which is inside the file."""
    rgb = as_rgb(image)
    height, width = metadata["image_size"]
    if metadata["arch"] == "ssdlite" or metadata.get("input_mode") == "resize":
        return _uint8(resize_pixels(rgb, (height, width), metadata["resize"])), (height, width)
    region = network_region(rgb.shape[:2], _preset(metadata))
    canvas = np.empty((height, width, 3), np.uint8)
    canvas[:] = _uint8(np.asarray(metadata["mean"]) * 255.0)
    canvas[: region[0], : region[1]] = _uint8(resize_pixels(rgb, region, metadata["resize"]))
    return canvas, region


def _preset(metadata: Mapping[str, Any]) -> DeepLabPreset:
    """The part of a DeepLab file's preset that decides how an image fits its input."""
    return DeepLabPreset(
        metadata["preset"],
        crop_size=metadata["image_size"][0],
        input_mode=metadata["input_mode"],
        resize=metadata["resize"],
        num_classes=len(metadata["class_names"]),
    )


class LiteRTModel:
    """One .tflite of ours with its interpreter; `detect` (SSDLite) or `segment` (DeepLab) by its metadata."""

    def __init__(self, path: str | os.PathLike, threads: int | None = None) -> None:
        self.path = Path(path)
        self.metadata, anchors = read_tflite_metadata(self.path)
        if self.metadata.get("input") != "uint8 NHWC":
            raise ExportError(f"{self.path}: written by an earlier version (a float NCHW input): export it again")
        self.anchors = None if anchors is None else torch.from_numpy(anchors)
        interpreter = require("ai_edge_litert.interpreter", EXTRA).Interpreter
        with native_stderr_captured():  # "INFO: Created TensorFlow Lite XNNPACK delegate for CPU."
            self.interpreter = interpreter(model_path=str(self.path), num_threads=threads or torch.get_num_threads())
            self.interpreter.allocate_tensors()
        self.input = self.interpreter.get_input_details()[0]
        self.outputs = self.interpreter.get_output_details()
        self.is_detector = self.metadata["arch"] == "ssdlite"
        if self.is_detector and self.anchors is None:
            raise ExportError(f"{self.path}: an SSDLite .tflite without its anchors entry: export it again")

    @property
    def class_names(self) -> list[str]:
        return list(self.metadata["class_names"])

    @property
    def image_size(self) -> tuple[int, int]:
        return tuple(self.metadata["image_size"])

    @property
    def is_int8(self) -> bool:
        return bool(self.metadata.get("int8"))

    def run(self, pixels: np.ndarray) -> dict[str, np.ndarray]:
        """The file's outputs (float32) for one uint8 [H, W, 3] input, by output name."""
        self.interpreter.set_tensor(self.input["index"], pixels[None])
        self.interpreter.invoke()
        return {
            name: self.interpreter.get_tensor(detail["index"])[0].copy()
            for name, detail in zip(self.metadata["outputs"], self.outputs, strict=True)
        }  # the subgraph's output order

    def detect(self, images: Sequence[np.ndarray], score_threshold: float | None = None) -> list[Detections]:
        """SSDLite detections in each image's pixels, thresholds from the file's preset unless given."""
        if not self.is_detector:
            raise ExportError(f"{self.path}: a segmentation model; it has masks, not boxes")
        meta = self.metadata
        found = []
        for image in check_image_list(images):
            out = self.run(phone_input(image, meta)[0])
            box_regression = torch.from_numpy(out["location"])[:, [1, 0, 3, 2]]  # (ty, tx, th, tw) → ours
            boxes = decode_boxes(box_regression, self.anchors).clamp(0.0, 1.0)
            found += select_detections(
                boxes[None],
                torch.from_numpy(out["score"])[None],
                [as_rgb(image).shape[:2]],
                score_threshold=meta["score_threshold"] if score_threshold is None else score_threshold,
                nms_iou=meta["nms_iou"],
                pre_nms_topk=meta["pre_nms_topk"],
                detections_per_image=meta["detections_per_image"],
            )
        return found

    def segment(self, images: Sequence[np.ndarray]) -> list[np.ndarray]:
        """DeepLab class masks at each image's own size, finished as `Segmenter` finishes its own
        (`deeplab_mobile.segmenter.mask_at_image_size`)."""
        if self.is_detector:
            raise ExportError(f"{self.path}: a detection model; it has boxes, not masks")
        preset, masks = _preset(self.metadata), []
        for image in check_image_list(images):
            pixels, (h, w) = phone_input(image, self.metadata)
            scores = torch.from_numpy(self.run(pixels)["logits"]).permute(2, 0, 1)[:, :h, :w]
            size = as_rgb(image).shape[:2]
            masks.append(mask_at_image_size(scores, size, preset).numpy())
        return masks
