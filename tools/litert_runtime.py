"""Running a .tflite written by tools.export in the LiteRT interpreter (XNNPACK on CPU), the runtime a phone app
links: images in, the suite's own detections or masks out. The export verifies with it, the video demo shows
with it (`--det x.tflite`), the deploy benchmark times it.

The file's input is [1, 3, H, W], float32 or int8 with the scale and zero point the file states, normalised
with the metadata's mean and std; SSDLite's outputs are the network's box regression and class logits (decoded
here against the anchors stored in the file, then the suite's NMS), DeepLab's the argmax mask at H×W.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

import cv2
import numpy as np
import torch

from common.images import resize_batch
from deeplab_mobile.segmenter import padded_region
from ssdlite.postprocess import Detections, decode_outputs, select_detections
from tools.export_metadata import ExportError, require
from tools.litert_metadata import EXTRA, read_tflite_metadata


class LiteRTModel:
    """One .tflite of ours with its interpreter; `detect` (SSDLite) or `segment` (DeepLab) by its metadata."""

    def __init__(self, path: str | os.PathLike, threads: int | None = None) -> None:
        self.path = Path(path)
        self.metadata, anchors = read_tflite_metadata(self.path)
        self.anchors = None if anchors is None else torch.from_numpy(anchors)
        interpreter = require("ai_edge_litert.interpreter", EXTRA).Interpreter
        self.interpreter = interpreter(model_path=str(self.path), num_threads=threads or torch.get_num_threads())
        self.interpreter.allocate_tensors()
        self.input = self.interpreter.get_input_details()[0]
        # outputs in the order the graph returned them (the converter names them ..._output_<i>)
        self.outputs = sorted(self.interpreter.get_output_details(), key=lambda d: d["name"])
        self.is_detector = self.metadata["arch"].startswith("ssdlite")
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
        return self.input["dtype"] != np.float32

    def prepare(self, images: Sequence[np.ndarray]) -> tuple[np.ndarray, list[tuple[int, int]]]:
        """Float [B, 3, H, W] inputs (resized as the suite's preprocessing does, normalised) and original sizes."""
        return self.prepare_at(images, self.image_size)

    def prepare_at(self, images: Sequence[np.ndarray],
                   size: tuple[int, int]) -> tuple[np.ndarray, list[tuple[int, int]]]:  # fmt: skip
        # The preset's resize, as the head's preprocessing (files written before it was recorded: OpenCV's).
        pixels, sizes = resize_batch(images, size, self.metadata.get("resize", "opencv_linear"))
        mean, std = (np.asarray(self.metadata[key], np.float32) * np.float32(255.0) for key in ("mean", "std"))
        x = (pixels - mean) / std
        return np.ascontiguousarray(x.transpose(0, 3, 1, 2)), sizes

    def run(self, x: np.ndarray) -> list[np.ndarray]:
        """The file's outputs for a float batch, one image per invoke (the file's batch is 1), dequantised."""
        per_image = [self._invoke(image[None]) for image in x]
        return [np.concatenate(column) for column in zip(*per_image)]

    def _invoke(self, x: np.ndarray) -> list[np.ndarray]:
        detail = self.input
        if self.is_int8:
            scale, zero_point = detail["quantization"]
            info = np.iinfo(detail["dtype"])
            x = np.clip(np.round(x / scale) + zero_point, info.min, info.max).astype(detail["dtype"])
        self.interpreter.set_tensor(detail["index"], x)
        self.interpreter.invoke()
        return [_dequantised(self.interpreter.get_tensor(d["index"]), d) for d in self.outputs]

    def detect(self, images: Sequence[np.ndarray], score_threshold: float | None = None) -> list[Detections]:
        """SSDLite detections in each image's pixels, thresholds from the file's preset unless given."""
        if not self.is_detector:
            raise ExportError(f"{self.path}: a segmentation model; it has masks, not boxes")
        x, sizes = self.prepare(images)
        box_regression, class_logits = (torch.from_numpy(out) for out in self.run(x))
        meta = self.metadata
        boxes, scores = decode_outputs(box_regression, class_logits, self.anchors, meta["classification"])
        threshold = meta["score_threshold"] if score_threshold is None else score_threshold
        return select_detections(boxes, scores, sizes, score_threshold=threshold, nms_iou=meta["nms_iou"],
                                 pre_nms_topk=meta["pre_nms_topk"], detections_per_image=meta["detections_per_image"])

    def segment(self, images: Sequence[np.ndarray]) -> list[np.ndarray]:
        """DeepLab class masks (uint8) at each image's own size (nearest-neighbour from the file's H×W). A "pad"
        preset (TF DeepLab) sees each image as the PyTorch model does: long side to the input size, aspect kept,
        the rest filled with the mean colour, and the mask cropped back."""
        if self.is_detector:
            raise ExportError(f"{self.path}: a detection model; it has boxes, not masks")
        if self.metadata.get("input_mode") != "pad":
            x, sizes = self.prepare(images)
            return [_resized_mask(mask, size) for mask, size in zip(self.run(x)[0], sizes)]
        masks = []
        for image in images:
            region = padded_region(image.shape[:2], max(self.image_size))
            x, _ = self.prepare_at([image], region)
            padded = np.zeros((1, 3, *self.image_size), np.float32)  # 0 after normalising: the mean colour
            padded[:, :, : region[0], : region[1]] = x
            masks.append(_resized_mask(self.run(padded)[0][0][: region[0], : region[1]], image.shape[:2]))
        return masks


def _dequantised(tensor: np.ndarray, detail: dict) -> np.ndarray:
    if tensor.dtype in (np.int8, np.uint8, np.int16) and detail["quantization"][0] != 0.0:
        scale, zero_point = detail["quantization"]
        return (tensor.astype(np.float32) - zero_point) * scale
    return tensor.copy()


def _resized_mask(mask: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    return cv2.resize(mask.astype(np.uint8), (size[1], size[0]), interpolation=cv2.INTER_NEAREST)
