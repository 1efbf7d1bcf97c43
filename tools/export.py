"""Export an SSDLite or Mobile DeepLabv3 checkpoint (trained here or imported) to ONNX and TorchScript, and check
the exported files against eager PyTorch on real photos before they are put in place.

    python -m tools.export runs/ssdlite/exp/best.pt                     # both formats, verified, beside the .pt
    python -m tools.export deeplab_tf.pt --format onnx --opset 17 --out exported/
    python -m tools.export pedestrian.pt --imgsz 320 --images street.jpg crowd.png

Input "images": float32 [batch, 3, H, W], RGB, (pixels / 255 - mean) / std with the preset's mean and std (both in
the file's metadata). The batch axis is dynamic; H and W are fixed at export (--imgsz).
  SSDLite → "boxes" [batch, A, 4] (x0, y0, x1, y1) in [0, 1] of the input, clipped, and "scores" [batch, A, C - 1]
            (no background column): box decoding is in the graph, the anchors are constants. NMS is a separate
            step: `ssdlite_postprocess_onnx` in this module gives exactly the suite's detections.
  DeepLab → "logits" [batch, C, H, W] and "mask" [batch, H, W] (int64 argmax).
Files: NAME.onnx and NAME.torchscript (NAME: the checkpoint's), metadata as JSON values (ONNX metadata_props,
TorchScript extra file config.txt; see `read_metadata`). How to run them: docs/export.md.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import importlib
import json
import os
import sys
import uuid
import warnings
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import Any, Callable, Iterator, Mapping, Sequence

import numpy as np
import torch
from torch import nn

from backbone.checkpoint import WeightsError, load_checkpoint
from backbone.fusion import fuse_for_inference
from datasets.images import read_image, resize_rgb_batch
from datasets.transforms import normalization_stats
from deeplab_mobile.checkpoint import ARCH as DEEPLAB_ARCH
from deeplab_mobile.checkpoint import deeplab_from_checkpoint
from deeplab_mobile.inference import normalize
from deeplab_mobile.model import MobileDeepLabV3
from deeplab_mobile.presets import DeepLabPreset
from ssdlite.checkpoint import ARCH as SSDLITE_ARCH
from ssdlite.checkpoint import ssdlite_from_checkpoint
from ssdlite.model import SSDLite
from ssdlite.postprocess import Detections, decode_outputs, select_detections
from ssdlite.predict import preprocess

ATOL = 1e-4  # the most an exported file's raw outputs may differ from eager PyTorch
BOX_ATOL_PX = 0.01  # detections after NMS count as the same when their boxes agree to a hundredth of a pixel
DEFAULT_OPSET = 17  # yolov5's default, read by every current ONNX Runtime
# 11: the first opset with Pad and Resize sizes computed in the graph (TF "SAME" padding, align_corners);
# 20: the newest the TorchScript-based exporter writes.
OPSETS = range(11, 21)
MIN_SIDE = 32  # SSDLite's six maps need at least 32×32
FORMATS = ("onnx", "torchscript")
SUFFIXES = {"onnx": ".onnx", "torchscript": ".torchscript"}  # yolov5's names
INPUT_NAME = "images"
TORCHSCRIPT_METADATA = "config.txt"
Outputs = tuple[torch.Tensor, ...]


class ExportError(RuntimeError):
    """An export that cannot be done as asked; the message says what to do."""


class VerificationError(ExportError):
    """An exported file disagrees with eager PyTorch; nothing was written."""

    def __init__(self, checks: list[Check]) -> None:
        self.checks = checks
        formats = sorted({c.format for c in checks if not c.ok})
        super().__init__(
            f"the {' and '.join(formats)} file disagrees with eager PyTorch (table above), so nothing was written; "
            "--no-verify writes the files anyway, for inspection"
        )


class SSDLiteGraph(nn.Module):
    """What an exported SSDLite computes: decoded, clipped boxes and class scores, with the anchors of the export
    size as constants. NMS stays outside the graph: its output size depends on the data, and ONNX's
    NonMaxSuppression differs from the torchvision batched NMS that our evaluation and demo use."""

    output_names = ("boxes", "scores")

    def __init__(self, model: SSDLite, class_names: Sequence[str]) -> None:
        super().__init__()
        self.model = model
        self.class_names = list(class_names)
        self.register_buffer("anchors", model.anchors(model.preset.image_size).clone())

    @property
    def image_size(self) -> tuple[int, int]:
        return tuple(self.model.preset.image_size)

    def forward(self, images: torch.Tensor) -> Outputs:
        box_regression, class_logits = self.model(images)
        return decode_outputs(box_regression, class_logits, self.anchors, self.model.preset.classification)

    def prepare(self, images: Sequence[np.ndarray]) -> tuple[torch.Tensor, list[tuple[int, int]]]:
        """The graph's input for uint8 images of any size, and their own sizes."""
        return preprocess(images, self.model)

    def metadata(self) -> dict[str, Any]:
        preset = self.model.preset
        return {
            "arch": SSDLITE_ARCH,
            "preset": preset.name,
            "image_size": list(preset.image_size),
            "mean": list(preset.mean),
            "std": list(preset.std),
            "class_names": self.class_names,
            "outputs": list(self.output_names),
            "score_threshold": preset.score_threshold,
            "nms_iou": preset.nms_iou,
            "pre_nms_topk": preset.pre_nms_topk,
            "detections_per_image": preset.detections_per_image,
        }

    def agreement(self, expected: Outputs, actual: Outputs, sizes: list[tuple[int, int]]) -> tuple[bool, str]:
        """Whether NMS keeps the same detections from both outputs: same count per image, and each of eager
        PyTorch's matched by one of the same class, box within BOX_ATOL_PX, score within ATOL."""
        metadata = self.metadata()
        ours, theirs = (ssdlite_postprocess_onnx(*outputs, sizes, metadata) for outputs in (expected, actual))
        gaps = [_detection_gap(a, b) for a, b in zip(ours, theirs)]
        count = sum(len(d["labels"]) for d in ours)
        if max(gaps) > BOX_ATOL_PX:
            return False, f"DIFFERENT detections in image {np.argmax(gaps)} of {len(gaps)}"
        return True, f"same {count} detections (boxes ±{max(gaps):.1e} px)"


class DeepLabGraph(nn.Module):
    """What an exported DeepLab computes: logits at the input size and their argmax."""

    output_names = ("logits", "mask")

    def __init__(
        self, model: MobileDeepLabV3, preset: DeepLabPreset, class_names: Sequence[str], image_size: tuple[int, int]
    ) -> None:
        super().__init__()
        self.model = model
        self.preset = preset
        self.class_names = list(class_names)
        self.image_size = image_size

    def forward(self, images: torch.Tensor) -> Outputs:
        logits = self.model(images)
        return logits, logits.argmax(1)

    def prepare(self, images: Sequence[np.ndarray]) -> tuple[torch.Tensor, list[tuple[int, int]]]:
        """Images stretched to the export size (PIL bilinear) and normalised; the preset's padding to keep the
        aspect ratio, if any, is the caller's business (docs/export.md)."""
        pixels, sizes = resize_rgb_batch(images, self.image_size)
        x = torch.from_numpy(pixels).permute(0, 3, 1, 2).float()
        return normalize(x, self.preset.normalization), sizes

    def metadata(self) -> dict[str, Any]:
        mean, std = normalization_stats(self.preset.normalization)
        return {
            "arch": DEEPLAB_ARCH,
            "preset": self.preset.name,
            "image_size": list(self.image_size),
            "mean": list(mean),
            "std": list(std),
            "class_names": self.class_names,
            "outputs": list(self.output_names),
            "input_mode": self.preset.input_mode,
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


def _detection_gap(ours: Detections, theirs: Detections) -> float:
    """The largest box difference (px) between each of `ours` and its closest match in `theirs` (same class, score
    within ATOL); inf when one is unmatched or the counts differ. Matched in any order: NMS lists detections by
    score, and scores that tie to within float rounding (common among the hundreds of near-zero ones a low
    threshold lets through) come out in either order."""
    if len(ours["labels"]) != len(theirs["labels"]):
        return float("inf")
    if not len(ours["labels"]):
        return 0.0
    gap = (ours["boxes"][:, None] - theirs["boxes"][None]).abs().amax(-1)
    gap[ours["labels"][:, None] != theirs["labels"][None]] = float("inf")
    gap[(ours["scores"][:, None] - theirs["scores"][None]).abs() > ATOL] = float("inf")
    return float(gap.amin(1).max())


ExportGraph = SSDLiteGraph | DeepLabGraph


@dataclass(frozen=True)
class Check:
    """One exported file against eager PyTorch at one batch size."""

    format: str
    batch: int
    diffs: dict[str, float]  # max abs difference of each float output (inf: another shape)
    agrees: bool  # post-processing (NMS or argmax) gives the same result
    summary: str

    @property
    def ok(self) -> bool:
        return self.agrees and all(d <= ATOL for d in self.diffs.values())


def _require(module: str) -> ModuleType:
    """Import an optional dependency of the export extra, or say how to install it."""
    try:
        return importlib.import_module(module)
    except ImportError:
        raise ExportError(f"{module} is not installed: pip install -e '.[export]'") from None


def load_graph(path: Path, image_size: tuple[int, int] | None = None) -> ExportGraph:
    """The exportable form of the checkpoint in `path`, SSDLite or DeepLab by its "arch" entry, in eval mode.

    `image_size` (h, w) replaces the preset's input size (SSDLite: its anchors follow; DeepLab: crop_size)."""
    checkpoint = load_checkpoint(path)
    arch = checkpoint.get("arch") if isinstance(checkpoint, Mapping) else None
    if arch == SSDLITE_ARCH:
        model = ssdlite_from_checkpoint(checkpoint, str(path)).eval()
        if image_size is not None:  # the size preprocess resizes to and the anchors are made for
            model.preset = dataclasses.replace(model.preset, image_size=image_size)
        return SSDLiteGraph(model, checkpoint.get("class_names", [])).eval()
    if arch == DEEPLAB_ARCH:
        model, preset, names = deeplab_from_checkpoint(checkpoint, str(path))
        return DeepLabGraph(model, preset, names, image_size or (preset.crop_size, preset.crop_size)).eval()
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
        metadata["score_threshold"] if score_threshold is None else score_threshold,
        metadata["nms_iou"] if nms_iou is None else nms_iou,
        metadata["pre_nms_topk"],
        metadata["detections_per_image"] if detections_per_image is None else detections_per_image,
    )


def read_metadata(path: str | os.PathLike) -> dict[str, Any]:
    """The metadata an exported .onnx or .torchscript file carries (preset, image size, mean/std, class names,
    NMS settings for SSDLite)."""
    if Path(path).suffix == SUFFIXES["onnx"]:
        proto = _require("onnx").load(str(path), load_external_data=False)
        return {entry.key: json.loads(entry.value) for entry in proto.metadata_props}
    extra = {TORCHSCRIPT_METADATA: ""}
    with _quiet_torchscript():
        torch.jit.load(str(path), _extra_files=extra)
    return json.loads(extra[TORCHSCRIPT_METADATA])


@contextlib.contextmanager
def _quiet_torchscript() -> Iterator[None]:
    """Tracing fixes the spatial size by design (TF "SAME" padding and the pooling window are computed from it),
    which is what the TracerWarnings say, and torch 2.15 flags TorchScript and the ONNX exporter built on it as
    deprecated; the verification is the check that matters, so these warnings would only bury its table."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", torch.jit.TracerWarning)
        warnings.simplefilter("ignore", DeprecationWarning)
        warnings.simplefilter("ignore", FutureWarning)
        yield


def write_onnx(graph: nn.Module, example: torch.Tensor, path: Path, opset: int, metadata: Mapping[str, Any]) -> None:
    """ONNX with a dynamic batch axis on the input and every output, metadata as JSON values.

    The TorchScript-based exporter (dynamo=False), although torch 2.15 defaults to the torch.export-based one:
    both give the same numbers on these models, but the new one needs onnxscript, takes about 10 s per model
    instead of under 1 s, and writes the weights to a separate .data file, so one atomic rename would become two.
    """
    onnx = _require("onnx")
    names = (INPUT_NAME, *graph.output_names)
    with _quiet_torchscript(), torch.no_grad():
        torch.onnx.export(
            graph, (example,), str(path), dynamo=False, opset_version=opset, input_names=[INPUT_NAME],
            output_names=list(graph.output_names), dynamic_axes={name: {0: "batch"} for name in names},
        )  # fmt: skip
    proto = onnx.load(str(path))
    for key, value in metadata.items():
        proto.metadata_props.add(key=key, value=json.dumps(value))
    onnx.checker.check_model(proto)
    onnx.save(proto, str(path))


def write_torchscript(graph: nn.Module, example: torch.Tensor, path: Path, metadata: Mapping[str, Any]) -> None:
    """A traced module (no Python control flow is left to script), metadata in the extra file config.txt."""
    with _quiet_torchscript(), torch.no_grad():
        module = torch.jit.trace(graph, example, check_trace=False)
        torch.jit.save(module, str(path), _extra_files={TORCHSCRIPT_METADATA: json.dumps(metadata)})


def _onnx_runner(path: Path) -> Callable[[torch.Tensor], Outputs]:
    ort = _require("onnxruntime")
    options = ort.SessionOptions()
    options.intra_op_num_threads = torch.get_num_threads()  # the threads eager PyTorch gets, not every core
    session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    return lambda x: tuple(torch.from_numpy(out) for out in session.run(None, {INPUT_NAME: x.numpy()}))


def _torchscript_runner(path: Path) -> Callable[[torch.Tensor], Outputs]:
    with _quiet_torchscript():
        module = torch.jit.load(str(path))
    return lambda x: tuple(module(x))


RUNNERS = {"onnx": _onnx_runner, "torchscript": _torchscript_runner}


def _max_diff(expected: torch.Tensor, actual: torch.Tensor) -> float:
    if expected.shape != actual.shape:
        return float("inf")
    return float((expected - actual).abs().max())


@torch.no_grad()
def verify(graph: ExportGraph, files: Mapping[str, Path], images: Sequence[np.ndarray]) -> list[Check]:
    """Each file against the eager, unfused model on `images`, at batch 1 and at batch len(images) (the dynamic
    axis): raw outputs, then NMS or argmax on both."""
    runners = {fmt: RUNNERS[fmt](path) for fmt, path in files.items()}
    checks = []
    for batch in [images[:1], images] if len(images) > 1 else [images]:
        x, sizes = graph.prepare(batch)
        expected = graph(x)
        for fmt, run in runners.items():
            actual = run(x)
            diffs = {name: _max_diff(e, a) for name, e, a in zip(graph.output_names, expected, actual)
                     if e.is_floating_point()}  # fmt: skip
            agrees, summary = graph.agreement(expected, actual, sizes)
            checks.append(Check(fmt, len(batch), diffs, agrees, summary))
    return checks


def format_table(checks: Sequence[Check]) -> str:
    """The differences, one row per file and batch size."""
    names = list(checks[0].diffs)
    header = ["format", "batch", *(f"max|Δ| {name}" for name in names), "after post-processing", "result"]
    rows = [[c.format, str(c.batch), *(f"{c.diffs[n]:.1e}" for n in names), c.summary, "ok" if c.ok else "FAIL"]
            for c in checks]  # fmt: skip
    table = [header, *rows]
    widths = [max(len(row[i]) for row in table) for i in range(len(header))]
    return "\n".join("  ".join(cell.ljust(width) for cell, width in zip(row, widths)).rstrip() for row in table)


@contextlib.contextmanager
def _staged(path: Path) -> Iterator[Path]:
    """A temporary name beside `path`, renamed onto it only if the block succeeds: never a half-written export.
    (A name, not mkstemp's file, so that the writer creates it with the usual permissions rather than 0600.)"""
    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex[:8]}.tmp")
    try:
        yield tmp
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def export(
    graph: ExportGraph,
    formats: Sequence[str],
    out_dir: Path,
    name: str,
    opset: int = DEFAULT_OPSET,
    images: Sequence[np.ndarray] = (),
) -> tuple[list[Path], list[Check]]:
    """Write `name`.onnx / `name`.torchscript in `out_dir` from the BN-folded model and, given `images`, verify them
    first; files are only put in place once all are written and agree (else VerificationError)."""
    out_dir.mkdir(parents=True, exist_ok=True)
    targets = {fmt: out_dir / f"{name}{SUFFIXES[fmt]}" for fmt in formats}
    deploy = fuse_for_inference(graph)
    example = torch.zeros(2, 3, *graph.image_size)  # batch 2, so that no size of 1 is taken for a constant
    metadata = graph.metadata()
    with contextlib.ExitStack() as stack:
        staged = {fmt: stack.enter_context(_staged(path)) for fmt, path in targets.items()}
        for fmt, tmp in staged.items():
            if fmt == "onnx":
                write_onnx(deploy, example, tmp, opset, metadata)
            else:
                write_torchscript(deploy, example, tmp, metadata)
        checks = verify(graph, staged, images) if len(images) else []
        if not all(check.ok for check in checks):
            raise VerificationError(checks)
    return list(targets.values()), checks


def verification_images(paths: Sequence[Path] | None) -> list[np.ndarray]:
    """Photos to compare the runtimes on: `paths`, else scikit-image's bundled photos, else seeded noise (a weaker
    check, which a note on stderr says)."""
    if paths:
        return [read_image(path) for path in paths]
    try:
        from skimage import data
    except ImportError:
        print("note: scikit-image is absent, so verifying on noise; pass --images for real photos", file=sys.stderr)
        rng = np.random.default_rng(0)
        return [rng.integers(0, 256, (240, 320, 3), dtype=np.uint8) for _ in range(3)]
    return [data.astronaut(), data.coffee(), data.chelsea()]


def _image_size(values: list[int] | None, parser: argparse.ArgumentParser) -> tuple[int, int] | None:
    if values is None:
        return None
    if len(values) > 2 or min(values) < MIN_SIDE:
        parser.error(f"--imgsz takes HEIGHT [WIDTH], each at least {MIN_SIDE} pixels; got {values}")
    return (values[0], values[-1])


def _opset(value: int, parser: argparse.ArgumentParser) -> int:
    if value not in OPSETS:
        parser.error(f"--opset {value}: the exporter writes opsets {OPSETS.start} to {OPSETS.stop - 1}")
    return value


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m tools.export", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("checkpoint", type=Path, help="SSDLite or DeepLab checkpoint (.pt): trained here or imported")
    parser.add_argument("--format", choices=(*FORMATS, "both"), default="both", help="what to write (default: both)")
    parser.add_argument("--out", type=Path, metavar="DIR",
                        help="folder for NAME.onnx / NAME.torchscript (default: the checkpoint's folder)")  # fmt: skip
    parser.add_argument("--opset", type=int, default=DEFAULT_OPSET, metavar="N",
                        help=f"ONNX opset, {OPSETS.start} to {OPSETS.stop - 1} (default: %(default)s)")  # fmt: skip
    parser.add_argument("--imgsz", "--img", "--img-size", "--image-size", dest="imgsz", type=int, nargs="+",
                        metavar="SIZE", help="input HEIGHT [WIDTH] the graph is fixed to (default: the preset's "
                        "image_size for SSDLite, crop_size for DeepLab); the batch axis stays dynamic")  # fmt: skip
    parser.add_argument("--verify", action=argparse.BooleanOptionalAction, default=True,
                        help=f"run the files (ONNX Runtime, CPU; TorchScript) against eager PyTorch and write "
                        f"nothing unless raw outputs agree within {ATOL:g}, NMS keeps the same detections and the "
                        "argmax masks are the same (default: on)")  # fmt: skip
    parser.add_argument("--images", type=Path, nargs="+", metavar="FILE",
                        help="photos to verify on (default: scikit-image's astronaut, coffee and chelsea)")  # fmt: skip
    args = parser.parse_args(argv)
    args.imgsz = _image_size(args.imgsz, parser)
    args.opset = _opset(args.opset, parser)
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    formats = FORMATS if args.format == "both" else (args.format,)
    try:
        graph = load_graph(args.checkpoint, args.imgsz)
        images = verification_images(args.images) if args.verify else []
        paths, checks = export(graph, formats, args.out or args.checkpoint.parent, args.checkpoint.stem, args.opset,
                               images)  # fmt: skip
    except VerificationError as e:
        print(format_table(e.checks))
        print(f"error: {e}", file=sys.stderr)
        return 1
    except (ExportError, ValueError, OSError) as e:  # WeightsError and DatasetError are ValueErrors
        print(f"error: {e}", file=sys.stderr)
        return 2
    meta = graph.metadata()
    print(f"{args.checkpoint}: {meta['arch']} (preset {meta['preset']}, {len(meta['class_names'])} classes), "
          f"input [batch, 3, {meta['image_size'][0]}, {meta['image_size'][1]}]")  # fmt: skip
    if checks:
        print(format_table(checks))
    for path in paths:
        print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
