"""Export an SSDLite or Mobile DeepLabv3 checkpoint (trained here or imported) to ONNX and TorchScript, or to the
phone file (LiteRT .tflite, fp32 or int8), and check each file against eager PyTorch on real photos before it is
put in place.

    python -m tools.export runs/ssdlite/exp/best.pt                     # ONNX + TorchScript, verified, beside the .pt
    python -m tools.export deeplab_tf.pt --format onnx --opset 17 --out exported/
    python -m tools.export pedestrian.pt --imgsz 320 --images street.jpg crowd.png
    python -m tools.export runs/ssdlite/exp/best.pt --format tflite --int8 --calib-data photos/   # for phones

ONNX / TorchScript input "images": float32 [batch, 3, H, W], RGB, (pixels / 255 - mean) / std with the preset's
mean and std (both in the file's metadata). The batch axis is dynamic; H and W are fixed at export (--imgsz).
  SSDLite → "boxes" [batch, A, 4] (x0, y0, x1, y1) in [0, 1] of the input, clipped, and "scores" [batch, A, C - 1]
            (no background column): box decoding is in the graph, the anchors are constants. NMS is a separate
            step: `tools.export_graphs.ssdlite_postprocess_onnx` gives exactly the suite's detections.
  DeepLab → "logits" [batch, C, H, W] and "mask" [batch, H, W] (int64 argmax).
Files: NAME.onnx and NAME.torchscript (NAME: the checkpoint's), metadata as JSON values (ONNX metadata_props,
TorchScript extra file config.txt; `tools.export_formats.read_metadata`). How to run them: docs/export.md.
The phone file (NAME.tflite, NAME_int8.tflite; the .[mobile] extra and mediapipe) takes uint8 RGB [1, H, W, 3] and
carries its labels, anchors and TFLite Model Metadata: MediaPipe Tasks' ObjectDetector / ImageSegmenter run it as
they run Google's files, and so do tools.litert_runtime.LiteRTModel and demo/video.py (docs/export.md, In an app).

This module is the command line; the work is done in tools/export_graphs.py (what is exported),
tools/export_formats.py (ONNX and TorchScript: writing, metadata, verifying) and tools/export_litert.py (the phone
file: conversion, calibration, checks in LiteRT and MediaPipe), with tools/litert_metadata.py (the file's metadata).
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from common.cli import new_parser, run_cli
from common.files import write_atomic
from common.images import read_image
from tools.export_formats import DEFAULT_OPSET, FORMATS, OPSETS, Check, export, format_table
from tools.export_graphs import ATOL, ExportGraph, load_graph
from tools.export_litert import DATA_KINDS as CALIBRATION_KINDS
from tools.export_litert import DEFAULT_COUNT as DEFAULT_CALIBRATION_COUNT
from tools.export_litert import build_tflite, calibration_set, nothing_decided_note

MIN_SIDE = 32  # SSDLite's six maps need at least 32×32


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


def image_size(values: list[int] | None) -> tuple[int, int] | None:
    """--imgsz HEIGHT [WIDTH] as (h, w)."""
    return None if values is None else (values[0], values[-1])


def formats_asked(names: Sequence[str]) -> list[str]:
    """--format with "both" spelled out, each once, in the order given."""
    return list(dict.fromkeys(f for name in names for f in (FORMATS if name == "both" else (name,))))


def build_parser() -> argparse.ArgumentParser:
    parser = new_parser("python -m tools.export", __doc__)
    parser.add_argument(
        "checkpoint",
        type=Path,
        help="SSDLite or DeepLab checkpoint (.pt), trained here or imported, "
        "or a weights name (README: Model zoo; written to NAME.* in --out or here)",
    )
    parser.add_argument(
        "--format",
        choices=(*FORMATS, "both", "tflite"),
        nargs="+",
        default=["both"],
        metavar="FMT",
        help="one or more of onnx, torchscript, both (= onnx torchscript), tflite (LiteRT, for "
        "phones; the .[mobile] extra) (default: both)",
    )
    g = parser.add_argument_group("on-device (tflite)")
    g.add_argument(
        "--int8",
        action="store_true",
        help="int8 post-training quantisation of the tflite file (NAME_int8.tflite), calibrated on "
        "--calib-data and verified against fp32 before it is written",
    )
    g.add_argument(
        "--calib-data",
        metavar="DIR|KIND",
        help=f"calibration images: a folder, or a dataset kind ({', '.join(CALIBRATION_KINDS)}) with "
        "--calib-root (default: the checkpoint's training data when it is here; an imported model "
        "needs this flag)",
    )
    g.add_argument("--calib-root", type=Path, metavar="DIR", help="--data-root of a --calib-data KIND")
    g.add_argument(
        "--calib-images",
        type=int,
        default=DEFAULT_CALIBRATION_COUNT,
        metavar="N",
        help="how many calibration images, spread over the folder (default: %(default)s)",
    )
    parser.add_argument(
        "--out",
        type=Path,
        metavar="DIR",
        help="folder for NAME.onnx / NAME.torchscript / NAME[_int8].tflite (default: the checkpoint's folder)",
    )
    parser.add_argument(
        "--opset",
        type=int,
        default=DEFAULT_OPSET,
        metavar="N",
        help=f"ONNX opset, {OPSETS.start} to {OPSETS.stop - 1} (default: %(default)s)",
    )
    parser.add_argument(
        "--imgsz",
        "--img",
        "--img-size",
        "--image-size",
        dest="imgsz",
        type=int,
        nargs="+",
        metavar="SIZE",
        help="input HEIGHT [WIDTH] the graph is fixed to (default: the preset's "
        "image_size for SSDLite, crop_size for DeepLab); the batch axis stays dynamic",
    )
    parser.add_argument(
        "--verify",
        action=argparse.BooleanOptionalAction,
        default=True,
        help=f"run the files (ONNX Runtime, CPU; TorchScript) against eager PyTorch and write "
        f"nothing unless raw outputs agree within {ATOL:g}, NMS keeps the same detections and the "
        "argmax masks are the same; the .tflite in the LiteRT interpreter, by the looser bounds of "
        "docs/export.md (every detection and pixel fp32 decides clearly kept, none gained), in "
        "LiteRT and, when installed, in MediaPipe Tasks (default: on)",
    )
    parser.add_argument(
        "--images",
        type=Path,
        nargs="+",
        metavar="FILE",
        help="photos to verify on (default: scikit-image's astronaut, coffee and chelsea)",
    )
    return parser


def check_arguments(parser: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    if args.imgsz is not None and (len(args.imgsz) > 2 or min(args.imgsz) < MIN_SIDE):
        parser.error(f"--imgsz takes HEIGHT [WIDTH], each at least {MIN_SIDE} pixels; got {args.imgsz}")
    if args.opset not in OPSETS:
        parser.error(f"--opset {args.opset}: the exporter writes opsets {OPSETS.start} to {OPSETS.stop - 1}")
    calibration_flags = [
        flag
        for flag, given in (
            ("--calib-data", args.calib_data),
            ("--calib-root", args.calib_root),
            ("--calib-images", args.calib_images != DEFAULT_CALIBRATION_COUNT),
        )
        if given
    ]
    if (args.int8 or calibration_flags) and "tflite" not in args.format:
        flags = " and ".join(["--int8"] * args.int8 + calibration_flags)
        parser.error(f"{flags} apply to the on-device file: add --format tflite")
    if calibration_flags and not args.int8:
        parser.error(f"{' and '.join(calibration_flags)} calibrate int8 quantisation: add --int8")
    if args.calib_root is not None and args.calib_data not in CALIBRATION_KINDS:
        parser.error(f"--calib-root is the folder of a --calib-data kind ({', '.join(CALIBRATION_KINDS)})")
    if args.calib_images < 1:
        parser.error(f"--calib-images {args.calib_images}: give at least 1")


def on_device_file(
    args: argparse.Namespace, graph: ExportGraph, images: list[np.ndarray]
) -> tuple[Path, bytes, list[Check]]:
    """(path, content, checks) of the tflite file, int8 with calibration when asked, verified but not yet written."""
    path = (args.out or args.checkpoint.parent) / f"{args.checkpoint.stem}{'_int8' if args.int8 else ''}.tflite"
    calibration, source = None, None
    if args.int8:
        calibration, source = calibration_set(
            args.calib_data, args.calib_root, {"args": graph.training_args}, args.calib_images
        )
        print(f"calibrating on {len(calibration)} images: {source}", flush=True)
    return (path, *build_tflite(graph, calibration, source, images))


def export_command(args: argparse.Namespace) -> list[Path]:
    """What `python -m tools.export` does: the files written (none unless every check passed)."""
    formats = formats_asked(args.format)
    tables, paths = [], []
    graph = load_graph(args.checkpoint, image_size(args.imgsz))
    images = verification_images(args.images) if args.verify else []
    on_device = on_device_file(args, graph, images) if "tflite" in formats else None  # verified, unwritten
    onnx_torchscript = [f for f in formats if f in FORMATS]
    if onnx_torchscript:
        paths, checks = export(
            graph, onnx_torchscript, args.out or args.checkpoint.parent, args.checkpoint.stem, args.opset, images
        )
        tables.append(checks)
    if on_device:  # written last, so that a refused file of either kind leaves everything as it was
        path, content, checks = on_device
        paths.append(write_atomic(path, content))
        tables.append(checks)
    meta = graph.metadata()
    print(
        f"{args.checkpoint}: {meta['arch']} (preset {meta['preset']}, {len(meta['class_names'])} classes), "
        f"input [batch, 3, {meta['image_size'][0]}, {meta['image_size'][1]}]"
    )
    for checks in tables:
        if checks:
            print(format_table(checks))
    if on_device and (note := nothing_decided_note(on_device[2])):
        print(note)
    for path in paths:
        print(f"wrote {path} ({path.stat().st_size / 1e6:.2f} MB)")
    return paths


def main(argv: list[str] | None = None) -> int:
    """Export; a user error is one `error:` line and exit 2, a file that fails its check exit 1 (with the table)."""
    run_cli(build_parser(), argv, check_arguments, export_command)
    return 0


if __name__ == "__main__":
    sys.exit(main())
