"""Command-line plumbing the evaluation entry points share (eval/coco_map.py, eval/voc_map.py, eval/voc_miou.py):
the common flags, the results folder and the sharded loader (the parser and error handling are common.cli's), and
what the two detection evaluators share: their flags, the detector with its thresholds, its evaluation transform,
the report's setup lines."""

from __future__ import annotations

import argparse
import os
import sys
from functools import partial
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence, TypeVar

from torch.utils.data import DataLoader, Dataset, Subset

import deeplab_mobile  # noqa: F401  (registers the named segmenters, so a detection evaluator names them as such)
from common.cli import check_flags
from common.distributed import DistInfo, barrier, gather_objects, shard_dataset
from common.files import next_run_dir
from common.labels import canonical_class_name
from datasets.errors import SkipCounter
from datasets.loading import make_loader
from datasets.transforms import DetectionEvalTransform
from eval.detection import LabelMatch
from ssdlite.checkpoint import load_ssdlite
from ssdlite.detector import preprocess_image
from ssdlite.model import SSDLite

T = TypeVar("T")


def add_common_arguments(parser: argparse.ArgumentParser, batch_size: int) -> None:
    """--weights and the run flags every evaluation entry point takes."""
    g = parser.add_argument_group("model")
    g.add_argument(
        "--weights",
        required=True,
        metavar="CKPT",
        help="checkpoint to evaluate: a training run's best.pt/last.pt, an imported model or a weights "
        "name (README: Model zoo)",
    )
    g.add_argument(
        "--no-ema", action="store_true", help="evaluate a training checkpoint's raw weights instead of its EMA weights"
    )
    g = parser.add_argument_group("run")
    g.add_argument(
        "--batch-size", type=int, default=batch_size, help=f"images per batch and process (default: {batch_size})"
    )
    g.add_argument(
        "--workers",
        type=int,
        default=min(4, os.cpu_count() or 1),
        help="data-loading processes per process (default: 4, at most the CPU count)",
    )
    g.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N (default: auto)")
    g.add_argument(
        "--max-images", type=int, default=None, metavar="N", help="evaluate only the first N images (a quick check)"
    )
    g.add_argument("--project", type=Path, default=Path("runs/eval"), help="results parent folder (default: runs/eval)")
    g.add_argument("--name", default="exp", help="results folder name; taken names get 2, 3, ... (default: exp)")
    g.add_argument("--exist-ok", action="store_true", help="write into --project/--name even if it exists")
    g.add_argument("--quiet", action="store_true", help="no progress bar")


def check_common_arguments(parser: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    check_flags(parser, args)  # the rules training shares, in common.cli


def record_skipped(skip: SkipCounter | None, details: dict[str, Any]) -> None:
    """Put the count of samples the skip policy dropped into the report's details and print it."""
    if skip is not None and skip.total:
        details["skipped"] = skip.summary()
        print(skip.summary())


def main_first(dist: DistInfo, build: Callable[[], T]) -> T:
    """`build()` on rank 0, then on the other ranks: files it creates once (the synthetic dataset, COCO→VOC mask
    cache) are not raced for. An error on rank 0 is raised after the barrier, so the others do not hang."""
    if not dist.distributed:
        return build()
    result, error = None, None
    if dist.is_main:
        try:
            result = build()
        except Exception as e:  # noqa: BLE001 - re-raised below
            error = e
    barrier()
    if error is not None:
        raise error
    return result if dist.is_main else build()  # type: ignore[return-value]


def first_images(dataset: Dataset, max_images: int | None) -> Dataset:
    """The first `max_images` samples (all without it), as a Subset so the reader's metadata stays reachable."""
    if max_images is None or max_images >= len(dataset):
        return dataset
    return Subset(dataset, range(max_images))


def eval_loader(
    dataset: Dataset, args: argparse.Namespace, dist: DistInfo, collate: Callable, batch_size: int | None = None
) -> DataLoader:
    return make_loader(
        shard_dataset(dataset, dist),
        batch_size or args.batch_size,
        train=False,
        workers=args.workers,
        collate_fn=collate,
    )


def results_dir(args: argparse.Namespace) -> Path:
    """runs/eval/<name>, or <name>2, <name>3... if taken (call on rank 0 only: it creates the folder)."""
    out = next_run_dir(args.project, args.name, args.exist_ok)
    out.mkdir(parents=True, exist_ok=True)
    return out


def process_count(n: int) -> int:
    """Sum of an integer over the processes."""
    return sum(gather_objects(n))  # type: ignore[arg-type]


# ---- what the detection evaluators (eval/coco_map.py, eval/voc_map.py) share


def add_detection_arguments(parser: argparse.ArgumentParser) -> None:
    g = parser.add_argument_group("post-processing (default: the checkpoint preset's)")
    g.add_argument("--score-threshold", type=float, default=None, help="drop detections scoring below this")
    g.add_argument("--nms-iou", type=float, default=None, help="per-class NMS IoU threshold")


def check_detection_arguments(parser: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    check_common_arguments(parser, args)
    if args.score_threshold is not None and not 0.0 <= args.score_threshold < 1.0:
        parser.error(f"--score-threshold must be in [0, 1), got {args.score_threshold}")
    if args.nms_iou is not None and not 0.0 < args.nms_iou <= 1.0:
        parser.error(f"--nms-iou must be in (0, 1], got {args.nms_iou}")


def load_detector(args: argparse.Namespace, dist: DistInfo) -> tuple[SSDLite, dict[str, Any], dict[str, float]]:
    """The SSDLite of --weights on the device, in eval mode, its checkpoint, and the post-processing thresholds to
    evaluate with (--score-threshold / --nms-iou, else the preset's), passed explicitly to `eval.detection.detect`."""
    model, checkpoint = load_ssdlite(args.weights, ema=not args.no_ema)
    preset = model.preset
    thresholds = {
        "score_threshold": preset.score_threshold if args.score_threshold is None else args.score_threshold,
        "nms_iou": preset.nms_iou if args.nms_iou is None else args.nms_iou,
    }
    return model.to(dist.device).eval(), checkpoint, thresholds


def detection_transform(model: SSDLite) -> DetectionEvalTransform:
    """The evaluation transform: the detector's own preprocessing with its preset, as `Detector` feeds images."""
    return DetectionEvalTransform(partial(preprocess_image, preset=model.preset))


def detector_setup(
    args: argparse.Namespace,
    model: SSDLite,
    checkpoint: Mapping[str, Any],
    dist: DistInfo,
    thresholds: Mapping[str, float],
) -> dict[str, Any]:
    p = model.preset
    kind = ""
    if "ema" in checkpoint:  # a training checkpoint: say which of its weights were evaluated
        kind = ", raw weights" if args.no_ema or checkpoint.get("ema") is None else ", EMA weights"
    return {
        "checkpoint": f"{args.weights} (preset {p.name}, {p.num_classes} classes with the background{kind})",
        "input": f"{p.image_size[0]}×{p.image_size[1]} resized by {p.resize}, {p.normalization} normalisation, "
        f"{p.classification} scores (ssdlite.preprocess_image, as Detector)",
        "post_processing": f"score > {thresholds['score_threshold']:g}, NMS IoU {thresholds['nms_iou']:g}, top "
        f"{p.pre_nms_topk} before NMS, {p.detections_per_image} detections per image",
        "processes": f"{dist.world_size} on {dist.device.type}",
    }


def report_class_names(
    setup: dict[str, Any], model_names: Sequence[str], dataset_names: Sequence[str], match: LabelMatch | None
) -> None:
    """Add to the report the classes a by-name match scored and left out, or a warning when labels read as they
    are carry other names."""
    if match is not None:
        setup.update(match.describe(dataset_names))
        print(
            f"classes matched by name: {len(match.to_dataset)} scored, {len(match.dataset_only)} of the data's and "
            f"{len(match.model_only)} of the checkpoint's left out (listed in the report)"
        )
    elif warning := class_name_warning(model_names, dataset_names):
        setup["warning"] = warning
        print(f"warning: {warning}", file=sys.stderr)


def class_name_warning(names: Sequence[str], dataset_names: Sequence[str]) -> str | None:
    """A warning when the checkpoint's class names differ from the dataset's at the same labels."""
    if len(names) != len(dataset_names):
        return None
    pairs = [
        (i, a, b)
        for i, (a, b) in enumerate(zip(names, dataset_names, strict=True))
        if i > 0 and b != "N/A" and canonical_class_name(a) != canonical_class_name(b)
    ]
    if not pairs:
        return None
    shown = ", ".join(f"{i}: {a!r} vs {b!r}" for i, a, b in pairs[:5])
    more = f" and {len(pairs) - 5} more" if len(pairs) > 5 else ""
    return f"the checkpoint's class names differ from the dataset's at {len(pairs)} labels ({shown}{more})"
