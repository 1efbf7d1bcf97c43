"""The phone file: a LiteRT (.tflite) model written by Google's litert-torch converter, fp32 or int8, with the
interface phone runtimes expect and the metadata they read (tools/litert_metadata.py), checked in the LiteRT
interpreter and in MediaPipe Tasks against eager PyTorch before it is put in place.

Interface (what MediaPipe Tasks, Android Studio's ML binding and this suite's runtime all take): input uint8 RGB
[1, H, W, 3], resized by the caller, normalised inside; SSDLite out: locations [1, A, 4] (ty, tx, th, tw) and
activated class scores [1, A, C - 1] (MediaPipe's 2-output SSD form, anchors in the metadata); DeepLab out: class
logits [1, H, W, C]. Outputs are float32 (a quantised file ends in DEQUANTIZE ops: MediaPipe refuses int8 outputs).

int8 is post-training quantisation with PT2E (torch.export → prepare_pt2e → calibration → convert_pt2e) and the
converter's quantiser, taught that conv + ReLU6 is one op (`relu6_aware_quantizer`): symmetric int8, weights per
output channel, activation ranges (MinMax) from calibration images that match what the model was trained on: the
folder `--calib-data` names, or the checkpoint's own training data when it is here; never, silently, other data.

Verification judges what int8 can keep: detections away from the threshold (none ≥ 0.5 gained or lost; where no
image has one, the top detections compared directly, which the table says), and masks where the fp32 model is
decided (pixels whose two best classes are at least MARGIN apart in probability), so that Google's own int8 DeepLab
passes against our fp32 model and a broken file does not.
"""

from __future__ import annotations

import contextlib
import importlib.util
import io
import logging
import os
import tempfile
import warnings
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from types import ModuleType
from typing import Any, TextIO

import numpy as np
import torch
from torch import nn
from torchvision.ops import box_iou, nms
from tqdm import tqdm

from backbone.predictor import fuse_for_inference
from common.cli import native_stderr_captured
from common.errors import UserError
from common.files import write_atomic
from common.images import IMAGE_SUFFIXES, read_image
from datasets.sources import DEFAULT_SYNTHETIC_ROOT, ensure_synthetic, training_images
from deeplab_mobile.segmenter import preprocess_image as deeplab_preprocess
from deeplab_mobile.segmenter import scores_at_image_size
from ssdlite.anchors import decode_boxes
from ssdlite.detector import predict as torch_detect
from ssdlite.detector import preprocess as ssdlite_preprocess
from ssdlite.postprocess import class_scores
from tools import mediapipe_tasks
from tools.export_formats import Check, VerificationError
from tools.export_graphs import DeepLabGraph, ExportError, ExportGraph, SSDLiteGraph, require
from tools.litert_metadata import EXTRA, model_metadata, phone_file
from tools.litert_runtime import LiteRTModel, phone_input

# What a phone file must keep of eager PyTorch, fp32 and int8 alike, in LiteRT and in MediaPipe: every decision
# fp32 makes clearly. A decision is clear when changing it needs a move of at least MARGIN in probability: a pixel
# whose two best classes are MARGIN apart; a detection scoring at least SCORE_THRESHOLD + MARGIN whose runner-up
# class at that box scores at least MARGIN less. Near-ties are what 8 bits may flip (a step of an int8 activation is
# 1/127 of its range, and a network rounds dozens of them in series), so they are not judged; a model with no clear
# decision on the check images ships with a note saying so. MARGIN = 0.3 is where Google's own int8 DeepLab
# (quantisation-aware trained) agrees with our fp32 import on 99.55% of coffee's decided pixels.
MARGIN = 0.3
SCORE_THRESHOLD = 0.5  # a detection at or above this score is one an app shows (MediaPipe's examples use 0.5)
MATCH_IOU = 0.5  # a detection's counterpart overlaps it this much (COCO AP50's criterion)
MIN_AGREEMENT = 0.98  # the share of decided pixels that must keep fp32's class
MEDIAPIPE_NMS_IOU = 0.3  # MediaPipe's detector suppresses boxes overlapping by more, whatever their class
NOTHING_DECIDED = "nothing decided"  # the summary's words where fp32 makes no clear decision on an image

# ---- calibration images

DATA_KINDS = ("synthetic", "coco", "voc")
DEFAULT_COUNT = 200  # "a few hundred": ranges settle by then on the suite's models, and it stays a minute or two


def image_folder(kind: str, root: Path | None) -> Path:
    """The training-image folder of `--calib-data kind` with `--calib-root` (the synthetic set is drawn if absent)."""
    if kind == "synthetic":
        return training_images(kind, ensure_synthetic(root or DEFAULT_SYNTHETIC_ROOT))
    if root is None:
        raise UserError(f"--calib-data {kind} needs --calib-root (the dataset folder, as --data-root in training)")
    return training_images(kind, root)


def training_folder(training_args: Mapping[str, Any] | None) -> Path | None:
    """The image folder a checkpoint was trained on, from its stored arguments, when that folder is here (looked
    up only: nothing is drawn or redrawn)."""
    if not training_args:
        return None
    kind, root = training_args.get("data"), training_args.get("data_root")
    if kind == "custom":
        folder = (
            Path(training_args["train_images"])
            if training_args.get("train_images")
            else (Path(root) / "JPEGImages" if root else None)
        )
    elif kind in DATA_KINDS and (root or kind == "synthetic"):  # looked up, never drawn
        folder = training_images(kind, Path(root or DEFAULT_SYNTHETIC_ROOT))
    else:
        folder = None
    return folder if folder is not None and folder.is_dir() else None


def calibration_set(
    spec: str | None, root: Path | None, checkpoint: Mapping[str, Any], count: int = DEFAULT_COUNT
) -> tuple[list[np.ndarray], str]:
    """(calibration images, where they came from) for --calib-data `spec` (a kind or a folder), else the
    checkpoint's training data when it is here; else a UserError asking for --calib-data, at once (before the
    minutes of conversion): ranges taken on other data (drawn shapes, or any photos at hand) make a file that
    verification then refuses."""
    if spec is not None:
        folder = image_folder(spec, root) if spec in DATA_KINDS else Path(spec)
        if spec not in DATA_KINDS and not folder.is_dir():
            raise UserError(f"--calib-data {spec}: not a folder of images nor one of {', '.join(DATA_KINDS)}")
        return calibration_images(folder, count), f"--calib-data {spec}"
    training_args = checkpoint.get("args")
    trained_on = training_folder(training_args)
    if trained_on is not None:
        return calibration_images(trained_on, count), f"{trained_on}, the checkpoint's training data"
    if training_args:
        raise UserError(
            f"the data this model was trained on ({training_args.get('data')} at "
            f"{training_args.get('data_root') or training_args.get('train_images')}) is not here: pass "
            "--calib-data with a folder of images like those it was trained on"
        )
    raise UserError(
        "an imported model records no training data to calibrate on: pass --calib-data with a folder "
        "of a few hundred photos like those it will see (for Google's COCO and VOC models: COCO or VOC "
        "photos, e.g. --calib-data coco --calib-root DIR)"
    )


def calibration_images(folder: Path, count: int = DEFAULT_COUNT) -> list[np.ndarray]:
    """`count` images spread evenly over `folder`'s sorted image files (all of them when fewer), decoded to RGB."""
    if count < 1:
        raise UserError(f"--calib-images {count}: give at least 1")
    try:
        paths = sorted(p for p in folder.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file())
    except OSError as e:
        raise UserError(f"--calib-data {folder}: cannot be read ({e.strerror})") from None
    if not paths:
        raise UserError(f"--calib-data {folder}: no images ({' '.join(IMAGE_SUFFIXES)}) in this folder or below it")
    picked = [paths[i] for i in np.linspace(0, len(paths) - 1, min(count, len(paths))).round().astype(int)]
    return [read_image(path) for path in dict.fromkeys(picked)]


# ---- what goes into the file


class FloatConv(nn.Conv2d):
    """A prediction layer kept in float in an int8 file (the quantiser skips this type): SSDLite's box and class
    outputs at 8 bits move boxes by several pixels (a step of the width code is about 1.6% of the box) and make
    anchors tie, which another runtime's resize then breaks the other way; the layers are small."""


# torch.export records a node's module types as "module.QualName" strings, which is what the quantiser compares.
FLOAT_CONV = f"{FloatConv.__module__}.{FloatConv.__qualname__}"


class PhoneModel(nn.Module):
    """A head as phone runtimes take it: uint8 RGB [1, H, W, 3] in, normalised inside (BatchNorm folded); SSDLite
    → (locations (ty, tx, th, tw), activated scores without the background), DeepLab → logits [1, H, W, C]."""

    def __init__(self, graph: ExportGraph) -> None:
        super().__init__()
        self.model = fuse_for_inference(graph.model).to(memory_format=torch.contiguous_format)
        self.classification = getattr(graph.model.preset, "classification", None)
        if self.classification is not None:
            for branch in [*self.model.head.box, *self.model.head.cls]:
                branch.conv.__class__ = FloatConv
        mean, std = (torch.tensor(graph.metadata()[k], dtype=torch.float32) * 255.0 for k in ("mean", "std"))
        self.register_buffer("mean", mean.view(1, 1, 1, 3))
        self.register_buffer("std", std.view(1, 1, 1, 3))

    def forward(self, pixels: torch.Tensor) -> tuple[torch.Tensor, ...]:
        x = ((pixels.float() - self.mean) / self.std).permute(0, 3, 1, 2)
        if self.classification is None:
            return (self.model(x).permute(0, 2, 3, 1),)
        box_regression, class_logits = self.model(x)
        return box_regression[..., [1, 0, 3, 2]], class_scores(class_logits, self.classification)


def file_metadata(graph: ExportGraph, int8: bool, calibration_source: str | None) -> tuple[dict, bytes, list, Any]:
    """(the suite's metadata, the phone runtimes' TFLITE_METADATA, labels, anchors or None) of the file."""
    suite = {**graph.metadata(), "format": "tflite", "int8": int8, "input": "uint8 NHWC"}
    if calibration_source:
        suite["calibration"] = calibration_source
    names, preset = list(graph.model.class_names), graph.model.preset
    common = dict(
        name=f"{suite['arch']} {preset.name}",
        version=f"mobilenetv2-suite, {'int8' if int8 else 'fp32'}",
        author="mobilenetv2-suite (tools/export.py)",
        licence="the licence of the weights (README: Model zoo) for imported models; yours for your own",
    )
    if isinstance(graph, SSDLiteGraph):
        suite.update(outputs=["location", "score"], classification=preset.classification)
        anchors = graph.anchors.numpy()
        phone = model_metadata(
            description=f"SSDLite-MobileNetV2 detector, {len(names) - 1} classes; boxes decoded "
            "against the anchors of this metadata, NMS by the runtime",
            detector=True,
            anchors=anchors,
            num_classes=len(names) - 1,
            **common,
        )
        return suite, phone, names[1:], anchors
    suite.update(outputs=["logits"])
    phone = model_metadata(
        description=f"Mobile DeepLabv3 (MobileNetV2) segmenter, {len(names)} classes", detector=False, **common
    )
    return suite, phone, names, None


# ---- conversion


@dataclass
class Quiet:
    said: io.StringIO  # what the converter printed, for a failed conversion's message
    terminal: TextIO  # the real stderr, for the one progress bar the user should see


@contextlib.contextmanager
def quiet_converter() -> Iterator[Quiet]:
    """litert-torch prints a progress tree of every lowering pass, and the TensorFlow, JAX and absl libraries under
    it log from C++ straight to the process's stderr (I0000/W0000 lines, "WARNING: All log messages before
    absl::InitializeLog()"), plus torch deprecation warnings: all of it goes into `said`, which a failed conversion
    quotes. Our own lines (the calibration bar, errors) go to `terminal`, the real stderr."""
    previous = logging.root.level
    logging.root.setLevel(logging.ERROR)
    terminal = os.fdopen(os.dup(2), "w", buffering=1)
    said = io.StringIO()
    try:
        with (
            native_stderr_captured() as native,
            warnings.catch_warnings(),
            contextlib.redirect_stdout(said),
            contextlib.redirect_stderr(said),
        ):
            warnings.simplefilter("ignore")
            yield Quiet(said, terminal)
    finally:
        said.write(native.getvalue())
        terminal.close()
        logging.root.setLevel(previous)


def convert(graph: ExportGraph, calibration: Sequence[np.ndarray] | None) -> bytes:
    """The .tflite flatbuffer of `graph` at batch 1: fp32, or int8 calibrated on `calibration` (uint8 RGB images)."""
    with quiet_converter():  # imported quietly (torchao logs a torch deprecation warning as it loads) and before
        litert_torch = require("litert_torch", EXTRA)  # any work: a missing extra is the first thing said
    module = PhoneModel(graph).eval()
    inputs = None if calibration is None else [_phone_pixels(graph, image) for image in calibration]
    try:
        with quiet_converter() as quiet, torch.no_grad():
            return _convert(litert_torch, module, graph, inputs, quiet.terminal)
    except ExportError:
        raise
    except Exception as e:  # the converter's own errors name the op or node it refused; pass that on in one line
        first = next((line for line in str(e).splitlines() if line.strip()), type(e).__name__)
        said = quiet.said.getvalue().strip().splitlines()
        raise ExportError(
            f"litert-torch could not convert this {graph.metadata()['arch']} model: {first[:300]}"
            + (f" (it said: {said[-1][:200]})" if said else "")
        ) from e


def _phone_pixels(graph: ExportGraph, image: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(phone_input(image, graph.metadata())[0])[None]


def _convert(
    litert_torch: ModuleType,
    module: nn.Module,
    graph: ExportGraph,
    calibration: list[torch.Tensor] | None,
    terminal: TextIO,
) -> bytes:
    example = (torch.zeros(1, *graph.image_size, 3, dtype=torch.uint8),)
    if calibration is None:
        return litert_torch.convert(module, example).model_content()
    quant_config = require("litert_torch.quantize.quant_config", EXTRA)
    pt2e = require("torchao.quantization.pt2e.quantize_pt2e", EXTRA)
    quantizer = relu6_aware_quantizer()
    observed = pt2e.prepare_pt2e(torch.export.export(module, example).module(), quantizer)
    for pixels in tqdm(calibration, desc="calibrating", unit="image", leave=False, file=terminal, disable=None):
        observed(pixels)  # observers record the ranges
    quantized = pt2e.convert_pt2e(observed, fold_quantize=False)
    config = quant_config.QuantConfig(pt2e_quantizer=quantizer)
    return litert_torch.convert(quantized, example, quant_config=config).model_content()


def relu6_aware_quantizer() -> Any:
    """litert-torch's PT2E quantiser (symmetric int8, weights per output channel, MinMax activation ranges), taught
    that a convolution followed by ReLU6 is one quantised op, as TFLite runs it (RELU6 fused into CONV_2D).

    Its own patterns know conv + ReLU only: before a ReLU6 it quantises the convolution's raw output over its whole
    pre-activation range (often ±20, against ReLU6's [0, 6]), then the clipped result again, so every ReLU6 layer of
    MobileNetV2 lost 2-3 bits; measured on ssdlite_pedestrian (simulated int8, astronaut photo, 12 inputs with ±1
    level noise): box error mean 4.5 → 2.1 px, box regression error halved. MinMax rather than its histogram
    observer: calibrated on 12 to 108 photos, the histogram's clipping cost more (box error mean 5.9-6.3 px)."""
    pt2e_quantizer = require("litert_torch.quantize.pt2e_quantizer", EXTRA)
    utils = require("litert_torch.quantize.pt2e_quantizer_utils", EXTRA)
    observers = require("torchao.quantization.pt2e.observer", EXTRA)
    annotation = require("torchao.quantization.pt2e.quantizer", EXTRA).QuantizationAnnotation
    convolutions = (torch.ops.aten.conv2d.default, torch.ops.aten.convolution.default)
    relu6 = (torch.ops.aten.hardtanh.default, torch.ops.aten.hardtanh_.default)

    class ReLU6AwareQuantizer(pt2e_quantizer.PT2EQuantizer):
        def annotate(self, model: torch.fx.GraphModule) -> torch.fx.GraphModule:
            config = self.global_config
            for clip in model.graph.nodes:
                conv = clip.args[0] if clip.op == "call_function" and clip.target in relu6 else None
                if (
                    conv is None
                    or tuple(clip.args[1:3]) != (0.0, 6.0)
                    or getattr(conv, "target", None) not in convolutions
                    or len(conv.users) != 1
                    or _kept_float(conv, self.module_type_config)
                ):
                    continue
                inputs = {conv.args[0]: utils.get_input_act_qspec(config), conv.args[1]: utils.get_weight_qspec(config)}
                if len(conv.args) > 2 and isinstance(conv.args[2], torch.fx.Node):
                    inputs[conv.args[2]] = utils.get_bias_qspec(config)
                conv.meta["quantization_annotation"] = annotation(input_qspec_map=inputs, _annotated=True)
                clip.meta["quantization_annotation"] = annotation(
                    output_qspec=utils.get_output_act_qspec(config), _annotated=True
                )
            return super().annotate(model)  # the rest by litert-torch's patterns (annotated nodes are skipped)

    config = pt2e_quantizer.get_symmetric_quantization_config(is_per_channel=True)
    minmax = replace(config.input_activation, observer_or_fake_quant_ctr=observers.MinMaxObserver.with_args(eps=2**-12))
    config = replace(config, input_activation=minmax, output_activation=minmax)
    return ReLU6AwareQuantizer().set_global(config).set_module_type(FLOAT_CONV, None)  # no config: left in float


def _kept_float(node: torch.fx.Node, module_types: Mapping[Any, Any]) -> bool:
    """Whether `node` comes from a module type the quantiser was told to leave in float."""
    return any(module_type in module_types for _, module_type in node.meta.get("nn_module_stack", {}).values())


# ---- verification


def detections_agree(expected: Sequence[dict], actual: Sequence[dict]) -> list[tuple[bool, str]]:
    """Per image, by the rule above: every clear fp32 detection of `expected` (decoded as the runtime decodes; its
    "runner_up" scores from `with_runner_up` or `mediapipe_reference`) has a counterpart in `actual` of the same
    class overlapping it by MATCH_IOU and scoring at least SCORE_THRESHOLD; every detection of `actual` scoring at
    least SCORE_THRESHOLD + MARGIN has one in `expected`, its own class or the runner-up's, scoring at least
    SCORE_THRESHOLD - MARGIN."""
    return [_agree(e, a) for e, a in zip(expected, actual, strict=True)]


def clear_detections(found: dict) -> torch.Tensor:
    """Which detections of `found` (with "runner_up" scores) fp32 makes clearly: score and runner-up both at least
    MARGIN from changing the decision."""
    return (found["scores"] >= SCORE_THRESHOLD + MARGIN) & (found["scores"] - found["runner_up"] >= MARGIN)


def with_runner_up(found: dict) -> dict:
    """Detections decoded per class (the suite's NMS) with "runner_up": the best score of another class among the
    detections overlapping each by MATCH_IOU (0 where none), i.e. the class the box would take next."""
    boxes, scores, labels = found["boxes"], found["scores"], found["labels"]
    if not len(boxes):
        return {**found, "runner_up": scores.clone()}
    other = (box_iou(boxes, boxes) >= MATCH_IOU) & (labels[:, None] != labels[None, :])
    runner_up = torch.where(other, scores[None, :], torch.zeros(())).amax(1)
    return {**found, "runner_up": runner_up}


def _agree(expected: dict, actual: dict) -> tuple[bool, str]:
    problems, box_gap, score_gap = [], 0.0, 0.0
    clear = clear_detections(expected)
    overlaps = box_iou(expected["boxes"], actual["boxes"]) if len(expected["boxes"]) and len(actual["boxes"]) else None
    for i in torch.nonzero(clear).flatten().tolist():
        box, score, label = expected["boxes"][i], float(expected["scores"][i]), int(expected["labels"][i])
        candidates = (actual["labels"] == label) & (actual["scores"] >= SCORE_THRESHOLD)
        if overlaps is not None:
            candidates &= overlaps[i] >= MATCH_IOU
        if overlaps is None or not candidates.any():
            problems.append(f"lost: class {label} scoring {score:.2f} at {[round(v) for v in box.tolist()]}")
            continue
        j = int(torch.where(candidates, overlaps[i], -1.0).argmax())
        box_gap = max(box_gap, float((actual["boxes"][j] - box).abs().max()))
        score_gap = max(score_gap, abs(float(actual["scores"][j]) - score))
    for j in torch.nonzero(actual["scores"] >= SCORE_THRESHOLD + MARGIN).flatten().tolist():
        label = actual["labels"][j]
        same = expected["labels"] == label
        if "runner_up_labels" in expected:
            same |= expected["runner_up_labels"] == label
            scores = torch.where(expected["labels"] == label, expected["scores"], expected["runner_up"])
        else:
            scores = expected["scores"]
        counterpart = same & (scores >= SCORE_THRESHOLD - MARGIN)
        if overlaps is not None:
            counterpart &= overlaps[:, j] >= MATCH_IOU
        if overlaps is None or not counterpart.any():
            box = [round(v) for v in actual["boxes"][j].tolist()]
            problems.append(f"gained: class {int(label)} scoring {float(actual['scores'][j]):.2f} at {box}")
    if problems:
        return False, "; ".join(problems)
    if not clear.any():
        return True, f"{NOTHING_DECIDED}: fp32 has no clear detection here; none gained"
    return (
        True,
        f"{int(clear.sum())} clear detections kept, none gained (boxes ±{box_gap:.1f} px, scores ±{score_gap:.3f})",
    )


def masks_agree(probabilities: torch.Tensor, mask: np.ndarray) -> tuple[bool, str]:
    """By the rule above: the file's class on the pixels where fp32 (class probabilities [C, H, W]) is decided (two
    best classes at least MARGIN apart) is fp32's own on MIN_AGREEMENT of them."""
    if tuple(probabilities.shape[1:]) != mask.shape:
        return False, f"mask shape {list(mask.shape)}, eager {list(probabilities.shape[1:])}"
    top = probabilities.topk(2, dim=0)
    decided = (top.values[0] - top.values[1] >= MARGIN).numpy()
    overall = float((top.indices[0].numpy() == mask).mean())
    if not decided.any():
        return True, f"{NOTHING_DECIDED}: fp32 is decided on no pixel here ({100 * overall:.2f}% of all agree)"
    share = float(((top.indices[0].numpy() == mask) & decided).sum() / decided.sum())
    return share >= MIN_AGREEMENT, (
        f"same class on {100 * share:.2f}% of the {100 * decided.mean():.0f}% decided "
        f"pixels ({100 * overall:.2f}% of all)"
    )


def nothing_decided_note(checks: Sequence[Check]) -> str | None:
    """One line for a file whose fp32 model made no clear decision on any check image: it passed on "none gained"
    alone, which the user should know (a weakly trained model, or check photos unlike its training data)."""
    if not checks or not all(NOTHING_DECIDED in check.summary for check in checks):
        return None
    detector = any("detection" in check.summary for check in checks)
    criterion = (
        f"no detection ≥ {SCORE_THRESHOLD + MARGIN:.1f} clear of its runner-up class by {MARGIN}"
        if detector
        else f"no pixel whose two best classes are {MARGIN} apart"
    )
    return (
        f"note: the fp32 model makes no clear decision on any check image ({criterion}), so the file was checked "
        "only for decisions it adds; --images with photos the model is sure of checks more"
    )


def as_detections(found: Mapping[str, Any], class_names: Sequence[str]) -> dict[str, torch.Tensor]:
    """MediaPipe's detections (class names) as the suite's (class indices)."""
    labels = [class_names.index(name) if name in class_names else -1 for name in found["names"]]
    return {
        "boxes": torch.from_numpy(np.asarray(found["boxes"], np.float32)).reshape(-1, 4),
        "scores": torch.from_numpy(np.asarray(found["scores"], np.float32)),
        "labels": torch.tensor(labels, dtype=torch.int64),
    }


@torch.no_grad()
def mediapipe_reference(graph: SSDLiteGraph, images: Sequence[np.ndarray], threshold: float) -> list[dict]:
    """Eager PyTorch's detections decoded as MediaPipe decodes a 2-output SSD: each box's best class, then boxes
    overlapping by more than MEDIAPIPE_NMS_IOU suppressed whatever their class (the suite's own NMS is per class at
    the preset's IoU, which a MediaPipe app does not get); each with its second-best class and score ("runner_up",
    "runner_up_labels"), the decision that verification judges near-ties by."""
    model, preset = graph.model, graph.model.preset
    x, sizes = ssdlite_preprocess(images, preset)
    box_regression, class_logits = model.eval()(x)
    boxes = decode_boxes(box_regression, graph.anchors).clamp(0.0, 1.0)
    top = class_scores(class_logits, preset.classification).topk(min(2, len(graph.model.class_names) - 1), dim=-1)
    found = []
    for b, s, lab, (h, w) in zip(boxes, top.values, top.indices + 1, sizes, strict=True):
        keep = s[:, 0] >= threshold
        b, s, lab = b[keep] * torch.tensor([w, h, w, h]), s[keep], lab[keep]
        kept = nms(b, s[:, 0], MEDIAPIPE_NMS_IOU)[: mediapipe_tasks.MAX_DETECTIONS]
        second = s[kept, 1] if s.shape[1] > 1 else torch.zeros(len(kept))
        found.append(
            {
                "boxes": b[kept],
                "scores": s[kept, 0],
                "labels": lab[kept, 0],
                "runner_up": second,
                "runner_up_labels": lab[kept, 1] if s.shape[1] > 1 else torch.zeros(len(kept), dtype=torch.int64),
            }
        )
    return found


@torch.no_grad()
def fp32_probabilities(graph: DeepLabGraph, images: Sequence[np.ndarray], stretched: bool) -> list[torch.Tensor]:
    """Eager PyTorch's class probabilities [C, H, W] at each image's size, fed as the file is fed: the export
    preset's way (the suite's runtime), or stretched to the input (`stretched`: how MediaPipe feeds any file)."""
    preset = graph.input_preset.derive(input_mode="resize") if stretched else graph.input_preset
    prepared = [deeplab_preprocess(image, preset) for image in images]
    scores = scores_at_image_size(
        graph.model, [x for x, _ in prepared], [r for _, r in prepared], [image.shape[:2] for image in images]
    )
    return [s.softmax(0) for s in scores]


def verify_on_device(
    graph: ExportGraph, path: str | os.PathLike, images: Sequence[np.ndarray], label: str
) -> list[Check]:
    """One Check per image and runtime: the file in the LiteRT interpreter (the suite's runtime) and, when it is
    installed, in MediaPipe Tasks (as an app runs it), each against eager PyTorch by the bounds above."""
    runtime = LiteRTModel(path)
    checks = []
    loose = 0.01
    if isinstance(graph, SSDLiteGraph):
        expected = [with_runner_up(found) for found in torch_detect(graph.model, images, score_threshold=loose)]
        checks += [
            Check(label, 1, {}, ok, summary)
            for ok, summary in detections_agree(expected, runtime.detect(images, loose))
        ]
        if mediapipe_tasks.available():
            names = list(graph.model.class_names)
            found = [as_detections(d, names) for d in mediapipe_tasks.detect(path, images, loose)]
            reference = mediapipe_reference(graph, images, loose)
            checks += [
                Check(f"{label} MediaPipe", 1, {}, ok, summary) for ok, summary in detections_agree(reference, found)
            ]
        return checks
    assert isinstance(graph, DeepLabGraph)
    for probabilities, mask in zip(fp32_probabilities(graph, images, False), runtime.segment(images), strict=True):
        checks.append(Check(label, 1, {}, *masks_agree(probabilities, mask)))
    if mediapipe_tasks.available():
        masks = mediapipe_tasks.segment(path, images)
        for probabilities, mask in zip(fp32_probabilities(graph, images, True), masks, strict=True):
            checks.append(Check(f"{label} MediaPipe", 1, {}, *masks_agree(probabilities, mask)))
    return checks


# ---- the file


def installed() -> bool:
    """Whether the phone file can be built here (the .[mobile] extra: litert-torch and its LiteRT runtime)."""
    return importlib.util.find_spec("litert_torch") is not None


def build_tflite(
    graph: ExportGraph,
    calibration: Sequence[np.ndarray] | None = None,
    calibration_source: str | None = None,
    images: Sequence[np.ndarray] = (),
) -> tuple[bytes, list[Check]]:
    """The .tflite bytes (int8 when `calibration` is given) with its metadata, and, given `images`, its checks: a
    file that misses the bounds raises VerificationError. Nothing is written where the caller would see it (the
    runtimes read a temporary copy)."""
    int8 = calibration is not None
    if int8 and not len(calibration):
        raise ExportError("int8 needs calibration images, and none were given")
    suite, phone, labels, anchors = file_metadata(graph, int8, calibration_source)
    content = phone_file(convert(graph, calibration), suite, labels, anchors, phone)
    if not len(images):
        return content, []
    with tempfile.TemporaryDirectory() as folder:
        staged = Path(folder) / "model.tflite"
        staged.write_bytes(content)
        checks = verify_on_device(graph, staged, images, "tflite int8" if int8 else "tflite")
    if not all(check.ok for check in checks):
        raise VerificationError(checks)
    return content, checks


def export_tflite(
    graph: ExportGraph,
    path: Path,
    calibration: Sequence[np.ndarray] | None = None,
    calibration_source: str | None = None,
    images: Sequence[np.ndarray] = (),
) -> list[Check]:
    """`build_tflite`, then the file written atomically to `path` (only once it passed)."""
    content, checks = build_tflite(graph, calibration, calibration_source, images)
    write_atomic(path, content)
    return checks
