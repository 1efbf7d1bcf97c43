"""Segmentation mIoU of a Mobile DeepLabv3 checkpoint, ours or imported, on VOC val or any VOC-layout set.

    python eval/voc_miou.py --weights runs/deeplab/exp/best.pt --data voc --data-root /data/VOCdevkit
    python eval/voc_miou.py --weights deeplabv3_mnv2_pascal.pt --data voc --data-root /data/VOCdevkit --mf
    python eval/voc_miou.py --weights best.pt --data custom --data-root my/VOC_like --scales 0.75 1 1.25 --flip
    torchrun --nproc_per_node=4 eval/voc_miou.py --weights best.pt --data voc --data-root /data/VOCdevkit

A streaming confusion matrix (pixels labelled 255 ignored) gives per-class IoU, mIoU, pixel accuracy and mean
class accuracy, at one scale or averaged over --scales (and horizontal flips): --mf is the paper's "MF", scales
0.5..1.75 with flip. --data voc evaluates VOC2012 val (1,449 images); --data coco the COCO val images with the 20
VOC classes; --data custom any VOC-layout folder (JPEGImages/, SegmentationClass/, ImageSets/Segmentation/).
Results go to runs/eval/<name>/: report.md, metrics.json, confusion_matrix.png and a few prediction overlays.

Images are fed exactly as `deeplab_mobile.Segmenter` feeds them (`deeplab_mobile.preprocess_image`, the
checkpoint's preset): "any" (this suite's presets) and "pad" (imported TF models) pad bottom/right with the mean
pixel up to the crop size (TF DeepLab's evaluation protocol; "pad" first brings an image larger than the crop
down to it), "resize" (the 257×257 picamera2 model) stretches to the crop; the scores are cut to the image and
brought back to its size. Image pooling averages the whole input, as TF DeepLab's eval.py pools. Metrics are
computed at each image's own resolution; the masks are the segmenter's, pixel for pixel.
"""

from __future__ import annotations

import argparse
import time
from functools import partial
from pathlib import Path
from typing import Mapping, Sequence

import cv2
import torch

from common.cli import new_parser, run_cli
from common.distributed import DistInfo, all_reduce_sum, init_distributed
from common.errors import UserError
from common.images import normalization_stats
from datasets.errors import SkipCounter
from datasets.loading import collate_segmentation_eval
from datasets.sources import add_data_arguments, segmentation_split
from datasets.transforms import SegmentationEvalTransform
from deeplab_mobile.checkpoint import load_deeplab
from deeplab_mobile.presets import DeepLabPreset
from deeplab_mobile.segmenter import PAPER_MF_SCALES, Region, preprocess_image
from eval.cli import (
    add_common_arguments,
    check_common_arguments,
    eval_loader,
    first_images,
    main_first,
    process_count,
    record_skipped,
    results_dir,
)
from eval.segmentation import ConfusionMatrix, predicted_masks
from eval.segmentation_report import Overlay, write_segmentation_report


def build_parser() -> argparse.ArgumentParser:
    parser = new_parser("python eval/voc_miou.py", __doc__)
    add_common_arguments(parser, batch_size=8)
    add_data_arguments(parser, segmentation=True)
    parser.set_defaults(num_classes=None)  # --data custom: the checkpoint's class count unless given
    for action in parser._actions:
        if action.dest == "num_classes":
            action.help = "--data custom: classes including background (default: the checkpoint's)"
    g = parser.add_argument_group("evaluation")
    g.add_argument(
        "--split", default=None, help="ImageSets/Segmentation list for --data voc/custom/synthetic (default: val)"
    )
    g.add_argument(
        "--scales",
        type=float,
        nargs="+",
        default=None,
        metavar="S",
        help="input scales whose class probabilities are averaged (default: 1.0)",
    )
    g.add_argument("--flip", action="store_true", help="also average horizontally flipped inputs")
    g.add_argument(
        "--mf",
        action="store_true",
        help=f"the paper's multi-scale + flip: --scales {' '.join(f'{s:g}' for s in PAPER_MF_SCALES)} --flip",
    )
    g.add_argument(
        "--crop-size",
        type=int,
        default=None,
        help="the crop size images are padded to (input mode any, pad; pad also brings larger images "
        "down to it) (default: the checkpoint preset's, the training crop)",
    )
    g.add_argument(
        "--overlays",
        type=int,
        default=4,
        metavar="N",
        help="prediction overlays to draw from the first images (default: 4)",
    )
    return parser


def check_arguments(parser: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    check_common_arguments(parser, args)
    if args.mf and args.scales is not None:
        parser.error("--mf sets the scales (and --flip) itself: give either --mf or --scales")
    bad = [s for s in args.scales or () if not 0.0 < s <= 8.0]
    if bad:
        parser.error(f"--scales must lie in (0, 8], got {' '.join(f'{s:g}' for s in bad)}")
    if args.overlays < 0:
        parser.error(f"--overlays must be 0 or more, got {args.overlays}")


def scales_and_flip(args: argparse.Namespace) -> tuple[tuple[float, ...], bool]:
    """What --mf, --scales and --flip ask for."""
    return (PAPER_MF_SCALES, True) if args.mf else (tuple(args.scales or (1.0,)), args.flip)


def evaluation_preset(preset: DeepLabPreset, crop_size: int | None) -> DeepLabPreset:
    """How images are fed: the checkpoint's preset, with --crop-size if given (named so in the report)."""
    if crop_size is None:
        return preset
    if preset.input_mode == "resize":
        raise UserError(
            f"--crop-size: preset {preset.name} stretches every image to {preset.crop_size}×"
            f"{preset.crop_size} (input_mode resize); drop the flag"
        )
    return preset.derive(crop_size=crop_size)


def to_overlay(
    x: torch.Tensor, region: Region, truth: torch.Tensor, predicted: torch.Tensor, normalization: str, name: str
) -> Overlay:
    """The image as the network saw it (normalisation undone, padding cut off) at its own size, beside its masks."""
    mean, std = normalization_stats(normalization)  # type: ignore[arg-type]
    pixels = x.float().cpu()[:, : region[0], : region[1]] * torch.tensor(std).view(3, 1, 1) + torch.tensor(mean).view(
        3, 1, 1
    )
    rgb = (pixels.clamp(0, 1) * 255).round().byte().permute(1, 2, 0).numpy()
    h, w = truth.shape
    if rgb.shape[:2] != (h, w):
        rgb = cv2.resize(rgb, (w, h), interpolation=cv2.INTER_LINEAR)
    return Overlay(rgb, truth.cpu().numpy(), predicted.cpu().numpy(), name)


def reduce_matrix(matrix: ConfusionMatrix, dist: DistInfo) -> ConfusionMatrix:
    """Sum over processes on the process group's device (NCCL reduces CUDA tensors only), kept on the CPU."""
    matrix.matrix = all_reduce_sum(matrix.matrix.to(dist.device)).cpu()
    return matrix


def evaluate(args: argparse.Namespace) -> Path | None:
    dist = init_distributed(args.device)
    model, checkpoint = load_deeplab(args.weights, ema=not args.no_ema)
    preset = evaluation_preset(model.preset, args.crop_size)
    scales, flip = scales_and_flip(args)
    transform = SegmentationEvalTransform(partial(preprocess_image, preset=preset))
    skip = SkipCounter() if args.skip_bad_samples else None
    if args.data == "coco" and args.split:
        raise UserError("--split does not apply to --data coco (the COCO val2017 images are evaluated)")
    dataset, class_names, source = main_first(
        dist,
        lambda: segmentation_split(
            args, args.split or "val", transform, skip, model.class_names, dist.is_main and not args.quiet
        ),
    )
    if len(class_names) != model.num_classes:
        raise UserError(
            f"--weights {args.weights} has {model.num_classes} classes (background included) but the "
            f"dataset {source} has {len(class_names)}: evaluate the checkpoint on the data it was "
            "trained for" + (" (or pass --num-classes)" if args.data == "custom" else "")
        )
    subset = first_images(dataset, args.max_images)
    loader = eval_loader(subset, args, dist, collate_segmentation_eval)
    model = model.to(dist.device).eval()

    progress = dist.is_main and not args.quiet
    matrix = ConfusionMatrix(model.num_classes)
    overlays: list[Overlay] = []
    count = 0
    start = time.perf_counter()
    for inputs, regions, predicted, truth in predicted_masks(model, loader, scales, flip, progress):
        for x, region, one, expected in zip(inputs, regions, predicted, truth, strict=True):
            matrix.update(one, expected)
            count += 1
            if dist.is_main and len(overlays) < args.overlays:
                overlays.append(to_overlay(x, region, expected, one, preset.normalization, f"image {count}"))
    reduce_matrix(matrix, dist)
    count = process_count(count)
    if not dist.is_main:
        return None
    seconds = time.perf_counter() - start
    metrics = matrix.compute()

    scale_text = " ".join(f"{s:g}" for s in scales)
    mode = "multi-scale" if len(scales) > 1 else "single scale"
    crop = preset.crop_size
    feeding = {
        "resize": f"each image stretched to {crop}×{crop} (input_mode resize), scores resized back",
        "pad": f"padded bottom/right to {crop}×{crop}, an image larger than that first brought down to it "
        "(input_mode pad)",
        "any": f"padded bottom/right to at least {crop}×{crop}, never rescaled (input_mode any)",
    }[preset.input_mode]
    has_ema = isinstance(checkpoint.get("ema"), Mapping)
    weights = (", raw weights" if args.no_ema else ", EMA weights") if has_ema else ""
    details = {
        "checkpoint": f"{args.weights} (preset {model.preset.name}, {model.num_classes} classes with the background"
        f"{weights})",
        "data": f"{source}: {count} of {len(dataset)} images"
        + (f" (--max-images {args.max_images})" if len(subset) < len(dataset) else ""),
        "input": f"{feeding}, resized by {preset.resize}, {preset.normalization} normalisation "
        f"(deeplab_mobile.preprocess_image, as Segmenter)",
        "scales": f"{scale_text}{' + flip' if flip else ''} ({'the paper’s MF' if args.mf else mode})",
        "image_pooling": "global over the whole input, as TF DeepLab's eval.py pools",
        "processes": f"{dist.world_size} on {dist.device.type}",
        "time": f"{seconds:.1f} s ({count / max(seconds, 1e-9):.2f} images/s)",
    }
    record_skipped(skip, details)
    out_dir = results_dir(args)
    title = f"Segmentation mIoU of {Path(args.weights).name}" + (" (MF)" if args.mf else "")
    report = write_segmentation_report(metrics, class_names, matrix, out_dir, title, overlays, details)
    print(
        f"mIoU {100 * metrics['mIoU']:.2f}% (pixel accuracy {100 * metrics['pixel_accuracy']:.2f}%) on {count} "
        f"images, {mode}{' + flip' if flip else ''}; report: {report}"
    )
    return out_dir


def main(argv: Sequence[str] | None = None) -> Path | None:
    """Run the evaluation; the results folder on rank 0 (None on the other torchrun processes)."""
    return run_cli(build_parser(), argv, check_arguments, evaluate)


if __name__ == "__main__":
    main()
