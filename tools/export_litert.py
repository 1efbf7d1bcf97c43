"""The on-device file: a LiteRT (.tflite) model written by Google's litert-torch converter, fp32 or int8, checked in
the LiteRT interpreter against eager PyTorch before it is put in place.

int8 is post-training quantisation with PT2E (torch.export → prepare_pt2e → calibration → convert_pt2e) and the
converter's own quantiser: symmetric int8, weights per output channel, activation ranges from the calibration
images (tools/calibration.py). Why LiteRT and not ExecuTorch: docs/export.md has the measurements.

What the file computes (tools/litert_runtime.py runs it): SSDLite → the network's box regression and class
logits (decoding against the anchors stored in the file, and NMS, stay outside, as for ONNX); DeepLab → the
argmax mask at the export size (what Google's own int8 DeepLab files return).
"""

from __future__ import annotations

import contextlib
import io
import logging
import os
import tempfile
from collections.abc import Iterator, Sequence
from pathlib import Path
from types import ModuleType

import numpy as np
import torch
from torch import nn
from torchvision.ops import box_iou
from tqdm import tqdm

from backbone.predictor import fuse_for_inference
from common.files import write_atomic
from ssdlite.detector import predict as torch_detect
from tools.export_formats import Check, VerificationError
from tools.export_graphs import DeepLabGraph, ExportGraph, SSDLiteGraph
from tools.export_metadata import ExportError, require
from tools.litert_metadata import EXTRA, embed_metadata
from tools.litert_runtime import LiteRTModel

# The bounds an on-device file must meet against eager PyTorch (issue 13), fp32 and int8 alike:
DETECTION_SCORE = 0.5  # SSDLite: detections at or above this score must be kept, none gained
SCORE_TOLERANCE = 0.05  # ... where a counterpart may score this much less (so 0.52 → 0.48 counts as kept)
MATCH_IOU = 0.5  # ... and must overlap it this much (the test also holds the people to 5 px and 0.05)
MIN_AGREEMENT = 0.95  # DeepLab: share of pixels with the same class as eager PyTorch
MIN_FOREGROUND_AGREEMENT = 0.85  # ... and among pixels either calls an object, so a collapse to background fails


class _Mask(nn.Module):
    """DeepLab as exported for phones: the argmax mask only (int), as Google's int8 DeepLab files return."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.model(images).argmax(1)


def on_device_module(graph: ExportGraph) -> nn.Module:
    """What goes into the file, BatchNorm folded (fewer ops for the quantiser and the converter)."""
    model = fuse_for_inference(graph.model).to(memory_format=torch.contiguous_format)
    return model if isinstance(graph, SSDLiteGraph) else _Mask(model).eval()


def tflite_metadata(graph: ExportGraph, int8: bool, calibration_source: str | None) -> dict:
    metadata = {**graph.metadata(), "format": "tflite", "int8": int8}
    if isinstance(graph, SSDLiteGraph):
        metadata.update(outputs=["box_regression", "class_logits"], classification=graph.model.preset.classification)
    else:
        metadata.update(outputs=["mask"])
    if calibration_source:
        metadata["calibration"] = calibration_source
    return metadata


@contextlib.contextmanager
def quiet_converter() -> Iterator[None]:
    """litert-torch prints a progress tree of every lowering pass and absl warnings on stdout/stderr; the export
    prints its own lines and the verification table instead."""
    previous = logging.root.level
    logging.root.setLevel(logging.ERROR)
    try:
        with contextlib.redirect_stdout(io.StringIO()):
            yield
    finally:
        logging.root.setLevel(previous)


def convert(graph: ExportGraph, calibration: Sequence[np.ndarray] | None) -> bytes:
    """The .tflite flatbuffer of `graph` at batch 1: fp32, or int8 calibrated on `calibration` (uint8 RGB images)."""
    litert_torch = require("litert_torch", EXTRA)
    try:
        with quiet_converter(), torch.no_grad():
            return _convert(litert_torch, graph, calibration)
    except ExportError:
        raise
    except Exception as e:  # the converter's own errors name the op or node it refused; pass that on in one line
        first = next((line for line in str(e).splitlines() if line.strip()), type(e).__name__)
        raise ExportError(f"litert-torch could not convert this {graph.metadata()['arch']} model: {first[:300]}") from e


def _convert(litert_torch: ModuleType, graph: ExportGraph, calibration: Sequence[np.ndarray] | None) -> bytes:
    module = on_device_module(graph)
    example = (torch.zeros(1, 3, *graph.image_size),)
    if calibration is None:
        return litert_torch.convert(module, example).model_content()
    pt2e_quantizer = require("litert_torch.quantize.pt2e_quantizer", EXTRA)
    quant_config = require("litert_torch.quantize.quant_config", EXTRA)
    pt2e = require("torchao.quantization.pt2e.quantize_pt2e", EXTRA)

    quantizer = pt2e_quantizer.PT2EQuantizer().set_global(
        pt2e_quantizer.get_symmetric_quantization_config(is_per_channel=True)
    )
    observed = pt2e.prepare_pt2e(torch.export.export(module, example).module(), quantizer)
    for image in tqdm(calibration, desc="calibrating", unit="image", leave=False):  # observers record the ranges
        observed(graph.prepare([image])[0])
    quantized = pt2e.convert_pt2e(observed, fold_quantize=False)
    config = quant_config.QuantConfig(pt2e_quantizer=quantizer)
    return litert_torch.convert(quantized, example, quant_config=config).model_content()


def build_tflite(
    graph: ExportGraph,
    calibration: Sequence[np.ndarray] | None = None,
    calibration_source: str | None = None,
    images: Sequence[np.ndarray] = (),
) -> tuple[bytes, list[Check]]:
    """The .tflite bytes (int8 when `calibration` is given) with our metadata, and, given `images`, its checks in
    the LiteRT interpreter: a file that misses the bounds raises VerificationError. Nothing is written where the
    caller would see it (the interpreter reads a temporary copy)."""
    int8 = calibration is not None
    if int8 and not len(calibration):
        raise ExportError("int8 needs calibration images, and none were given")
    content = convert(graph, calibration)
    anchors = graph.anchors.numpy() if isinstance(graph, SSDLiteGraph) else None
    content = embed_metadata(content, tflite_metadata(graph, int8, calibration_source), anchors)
    if not len(images):
        return content, []
    with tempfile.TemporaryDirectory() as folder:
        staged = Path(folder) / "model.tflite"
        staged.write_bytes(content)
        checks = verify_on_device(graph, staged, images, "tflite int8" if int8 else "tflite")
    if not all(check.ok for check in checks):
        raise VerificationError(checks)
    return content, checks


def export_tflite(graph: ExportGraph, path: Path, calibration: Sequence[np.ndarray] | None = None,
                  calibration_source: str | None = None, images: Sequence[np.ndarray] = ()) -> list[Check]:  # fmt: skip
    """`build_tflite`, then the file written atomically to `path` (only once it passed)."""
    content, checks = build_tflite(graph, calibration, calibration_source, images)
    write_atomic(path, content)
    return checks


@torch.no_grad()
def verify_on_device(graph: ExportGraph, path: str | os.PathLike, images: Sequence[np.ndarray],
                     label: str) -> list[Check]:  # fmt: skip
    """One Check per image: the file in the LiteRT interpreter against eager PyTorch, by the bounds above."""
    runtime = LiteRTModel(path)
    if isinstance(graph, SSDLiteGraph):
        loose = DETECTION_SCORE - SCORE_TOLERANCE
        expected = torch_detect(graph.model, images, score_threshold=loose)
        actual = runtime.detect(images, loose)
        return [Check(label, 1, {}, *_detections_agree(e, a)) for e, a in zip(expected, actual)]
    assert isinstance(graph, DeepLabGraph)
    checks = []
    for image in images:
        x, _ = graph.prepare([image])
        expected = graph(x)[1][0].numpy()
        (actual,) = runtime.run(x.numpy())
        checks.append(Check(label, 1, {}, *_masks_agree(expected, actual[0])))
    return checks


def _detections_agree(expected: dict, actual: dict) -> tuple[bool, str]:
    """No detection ≥ DETECTION_SCORE gained or lost: each one on either side is paired, one to one and best score
    first, with a detection of the same class on the other overlapping it (IoU ≥ MATCH_IOU), and both lists hold
    detections down to DETECTION_SCORE - SCORE_TOLERANCE. The summary gives the largest box and score differences
    of the pairs."""
    problems, box_gap, score_gap = [], 0.0, 0.0
    for this, other, word in ((expected, actual, "lost"), (actual, expected, "gained")):
        overlaps = box_iou(this["boxes"], other["boxes"]) if len(this["boxes"]) and len(other["boxes"]) else None
        free = torch.ones(len(other["boxes"]), dtype=torch.bool)
        for i in torch.argsort(this["scores"], descending=True).tolist():
            box, score, label = this["boxes"][i], float(this["scores"][i]), this["labels"][i]
            if score < DETECTION_SCORE:
                break
            candidates = free & (other["labels"] == label)
            if overlaps is not None:
                candidates &= overlaps[i] >= MATCH_IOU
            if overlaps is None or not candidates.any():
                where = [round(v) for v in box.tolist()]
                problems.append(f"{word}: class {int(label)} scoring {score:.2f} at {where}")
                continue
            j = int(torch.where(candidates, overlaps[i], -1.0).argmax())
            free[j] = False
            box_gap = max(box_gap, float((other["boxes"][j] - box).abs().max()))
            score_gap = max(score_gap, abs(float(other["scores"][j]) - score))
    kept = int((expected["scores"] >= DETECTION_SCORE).sum())
    summary = f"{kept} detections ≥ {DETECTION_SCORE} kept, none gained" if not problems else "; ".join(problems)
    return not problems, f"{summary} (boxes ±{box_gap:.1f} px, scores ±{score_gap:.3f})"


def _masks_agree(expected: np.ndarray, actual: np.ndarray) -> tuple[bool, str]:
    if expected.shape != actual.shape:
        return False, f"mask shape {list(actual.shape)}, eager {list(expected.shape)}"
    same = expected == actual
    foreground = (expected > 0) | (actual > 0)
    agreement = float(same.mean())
    fg_agreement = float(same[foreground].mean()) if foreground.mean() >= 0.01 else 1.0
    ok = agreement >= MIN_AGREEMENT and fg_agreement >= MIN_FOREGROUND_AGREEMENT
    return ok, f"same class on {100 * agreement:.2f}% of pixels, {100 * fg_agreement:.2f}% of object pixels"
