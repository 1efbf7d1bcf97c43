"""What an export writes: the checkpoint's model wrapped with its fixed-shape post-processing, its preprocessing, its
metadata, and the rule by which an exported file's outputs count as agreeing with eager PyTorch.

SSDLite → "boxes" [batch, A, 4] (x0, y0, x1, y1) in [0, 1] of the input, clipped, and "scores" [batch, A, C - 1]
(no background column); NMS is the separate step `ssdlite_postprocess_onnx`. DeepLab → "logits" [batch, C, H, W]
and "mask" [batch, H, W] (int64 argmax).
"""

from __future__ import annotations

import importlib
import os
from collections.abc import Mapping, Sequence
from types import ModuleType
from typing import Any

import numpy as np
import torch
from torch import nn

from backbone.checkpoint import load_checkpoint
from backbone.named_weights import resolve
from common.errors import UserError, WeightsError
from common.images import as_rgb, normalization_stats
from deeplab_mobile.checkpoint import ARCH as DEEPLAB_ARCH
from deeplab_mobile.checkpoint import deeplab_from_checkpoint
from deeplab_mobile.model import MobileDeepLabV3
from deeplab_mobile.presets import DeepLabPreset
from deeplab_mobile.segmenter import preprocess_image as deeplab_preprocess_image
from ssdlite.checkpoint import ARCH as SSDLITE_ARCH
from ssdlite.checkpoint import ssdlite_from_checkpoint
from ssdlite.detector import preprocess
from ssdlite.model import SSDLite
from ssdlite.postprocess import Detections, decode_outputs, select_detections


class ExportError(UserError):
    """An export that cannot be done as asked; the message says what to do."""


def require(module: str, extra: str = "export") -> ModuleType:
    """Import an optional dependency, or say in one line which extra installs it."""
    try:
        return importlib.import_module(module)
    except ImportError:
        raise ExportError(f"{module} is not installed: pip install -e '.[{extra}]'") from None


ATOL = 1e-4  # the most an exported file's raw outputs may differ from eager PyTorch
BOX_ATOL_PX = 0.01  # detections after NMS count as the same when their boxes agree to a hundredth of a pixel
Outputs = tuple[torch.Tensor, ...]


class SSDLiteGraph(nn.Module):
    """What an exported SSDLite computes: decoded, clipped boxes and class scores, with the anchors of the export
    size as constants. NMS stays outside the graph: its output size depends on the data, and ONNX's
    NonMaxSuppression differs from the torchvision batched NMS that our evaluation and demo use."""

    output_names = ("boxes", "scores")

    def __init__(self, model: SSDLite, training_args: Mapping[str, Any] | None = None) -> None:
        super().__init__()
        self.model = model
        self.training_args = training_args  # the flags it was trained with, if trained here (where its data was)
        self.register_buffer("anchors", model.anchors(model.preset.image_size).clone())

    @property
    def image_size(self) -> tuple[int, int]:
        return tuple(self.model.preset.image_size)

    def forward(self, images: torch.Tensor) -> Outputs:
        box_regression, class_logits = self.model(images)
        return decode_outputs(box_regression, class_logits, self.anchors, self.model.preset.classification)

    def prepare(self, images: Sequence[np.ndarray]) -> tuple[torch.Tensor, list[tuple[int, int]]]:
        """The graph's input for uint8 images of any size (the head's own preprocessing), and their own sizes."""
        return preprocess(images, self.model.preset)

    def metadata(self) -> dict[str, Any]:
        preset = self.model.preset
        return {
            "arch": SSDLITE_ARCH,
            "preset": preset.name,
            "image_size": list(preset.image_size),
            "resize": preset.resize,
            "mean": list(preset.mean),
            "std": list(preset.std),
            "class_names": list(self.model.class_names),
            "outputs": list(self.output_names),
            "score_threshold": preset.score_threshold,
            "nms_iou": preset.nms_iou,
            "pre_nms_topk": preset.pre_nms_topk,
            "detections_per_image": preset.detections_per_image,
        }

    def agreement(self, expected: Outputs, actual: Outputs, sizes: list[tuple[int, int]]) -> tuple[bool, str]:
        """Whether NMS keeps the same detections from both outputs: same count per image, and each of eager
        PyTorch's matched by one of the same class, box within BOX_ATOL_PX. Both go through NMS with eager's scores
        (the file's are compared raw, within ATOL, by the caller): scores that tie to within float error (an
        untrained model's 1/C everywhere) would otherwise be ranked in either order and keep other boxes."""
        metadata = self.metadata()
        (boxes, scores), (other_boxes, _) = expected, actual
        ours, theirs = (ssdlite_postprocess_onnx(b, scores, sizes, metadata) for b in (boxes, other_boxes))
        gaps = [_detection_gap(a, b) for a, b in zip(ours, theirs, strict=True)]
        count = sum(len(d["labels"]) for d in ours)
        if max(gaps) > BOX_ATOL_PX:
            return False, f"DIFFERENT detections in image {np.argmax(gaps)} of {len(gaps)}"
        return True, f"same {count} detections (boxes ±{max(gaps):.1e} px)"


class DeepLabGraph(nn.Module):
    """What an exported DeepLab computes: logits at the input size and their argmax."""

    output_names = ("logits", "mask")

    def __init__(
        self, model: MobileDeepLabV3, crop_size: int | None = None, training_args: Mapping[str, Any] | None = None
    ) -> None:
        super().__init__()
        self.model = model  # owns its preset and class names
        self.training_args = training_args  # the flags it was trained with, if trained here (where its data was)
        preset = model.preset
        # A fixed input: "any" becomes "pad" (an image larger than the crop is brought down to it).
        changes = {
            "crop_size": crop_size or preset.crop_size,
            "input_mode": "pad" if preset.input_mode == "any" else preset.input_mode,
        }
        self.input_preset: DeepLabPreset = preset.derive(**changes)
        self.image_size = (self.input_preset.crop_size,) * 2

    def forward(self, images: torch.Tensor) -> Outputs:
        logits = self.model(images)
        return logits, logits.argmax(1)

    def prepare(self, images: Sequence[np.ndarray]) -> tuple[torch.Tensor, list[tuple[int, int]]]:
        """Images as the head's own preprocessing feeds them at the export size (`deeplab_mobile.preprocess_image`
        with `input_preset`), and their own sizes."""
        rgb = [as_rgb(image) for image in images]
        return (
            torch.stack([deeplab_preprocess_image(image, self.input_preset)[0] for image in rgb]),
            [image.shape[:2] for image in rgb],
        )

    def metadata(self) -> dict[str, Any]:
        preset = self.model.preset
        mean, std = normalization_stats(preset.normalization)
        return {
            "arch": DEEPLAB_ARCH,
            "preset": preset.name,
            "image_size": list(self.image_size),
            "resize": preset.resize,
            "mean": list(mean),
            "std": list(std),
            "class_names": list(self.model.class_names),
            "outputs": list(self.output_names),
            "input_mode": self.input_preset.input_mode,
        }

    def agreement(self, expected: Outputs, actual: Outputs, sizes: list[tuple[int, int]]) -> tuple[bool, str]:
        """Whether the argmax masks are the same pixel for pixel, except where eager PyTorch's two best logits are
        within 2·ATOL of each other: there, logits that each agree within ATOL may pick either class."""
        (logits, mask), other = expected, actual[1]
        if other.shape != mask.shape:
            return False, f"argmax: shape {list(other.shape)}, eager {list(mask.shape)}"
        differ = mask != other
        if not differ.any():
            return True, f"argmax identical ({mask.numel():,} px)"
        gap = logits.amax(1) - logits.gather(1, other[:, None]).squeeze(1)
        real = int((differ & (gap > 2 * ATOL)).sum())
        summary = f"argmax differs on {int(differ.sum())} of {mask.numel():,} px, {real} of them beyond a logit tie"
        return real == 0, summary


ExportGraph = SSDLiteGraph | DeepLabGraph


def _detection_gap(ours: Detections, theirs: Detections) -> float:
    """The largest box difference (px) between each of `ours` and its closest match of the same class in `theirs`;
    inf when one is unmatched or the counts differ."""
    if len(ours["labels"]) != len(theirs["labels"]):
        return float("inf")
    if not len(ours["labels"]):
        return 0.0
    gap = (ours["boxes"][:, None] - theirs["boxes"][None]).abs().amax(-1)
    gap[ours["labels"][:, None] != theirs["labels"][None]] = float("inf")
    return float(gap.amin(1).max())


def load_graph(path: str | os.PathLike, image_size: tuple[int, int] | None = None) -> ExportGraph:
    """The exportable form of the checkpoint in `path` (or of a weights name), SSDLite or DeepLab by its "arch"
    entry, in eval mode.

    `image_size` (h, w) replaces the preset's input size (SSDLite: a model of that size, the anchors follow;
    DeepLab: its square crop size)."""
    path = resolve(path)
    checkpoint = load_checkpoint(path)
    arch = checkpoint.get("arch") if isinstance(checkpoint, Mapping) else None
    if arch == SSDLITE_ARCH:
        model = ssdlite_from_checkpoint(checkpoint, str(path)).eval()
        if image_size is not None and tuple(image_size) != model.preset.image_size:  # the same weights, other anchors
            resized = SSDLite(model.preset.derive(image_size=tuple(image_size)), model.class_names)
            resized.load_state_dict(model.state_dict())
            model = resized.eval()
        return SSDLiteGraph(model, checkpoint.get("args")).eval()
    if arch == DEEPLAB_ARCH:
        if image_size is not None and image_size[0] != image_size[1]:
            raise ExportError(
                f"--imgsz {image_size[0]} {image_size[1]}: a DeepLab file takes a square input (its "
                "crop size, padded as the model was trained); give one size"
            )
        model = deeplab_from_checkpoint(checkpoint, str(path))
        return DeepLabGraph(model, image_size[0] if image_size else None, checkpoint.get("args")).eval()
    found = f"its arch is {arch!r}" if arch is not None else "no 'arch' entry"
    raise WeightsError(
        f"{path}: not an SSDLite or DeepLab checkpoint ({found}): pass a .pt written by train/ssdlite.py, "
        "train/deeplab.py, tools.import_tf_detection or tools.import_tf_segmentation"
    )


def ssdlite_postprocess_onnx(
    boxes: np.ndarray | torch.Tensor,
    scores: np.ndarray | torch.Tensor,
    image_sizes: Sequence[tuple[int, int]],
    metadata: Mapping[str, Any],
    score_threshold: float | None = None,
    nms_iou: float | None = None,
    detections_per_image: int | None = None,
) -> list[Detections]:
    """The NMS step after an exported SSDLite (ONNX or TorchScript): the suite's own `select_detections`, so the
    detections are those `ssdlite.predict` gives. Boxes come in pixels of `image_sizes` (h, w), the sizes of the
    images before resizing; thresholds default to the exported preset's (`metadata`, see `read_metadata`)."""
    return select_detections(
        torch.as_tensor(boxes),
        torch.as_tensor(scores),
        image_sizes,
        score_threshold=metadata["score_threshold"] if score_threshold is None else score_threshold,
        nms_iou=metadata["nms_iou"] if nms_iou is None else nms_iou,
        pre_nms_topk=metadata["pre_nms_topk"],
        detections_per_image=metadata["detections_per_image"] if detections_per_image is None else detections_per_image,
    )
