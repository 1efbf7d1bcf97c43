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

How images are fed follows the checkpoint's preset (DeepLab's evaluation protocol):
  - input_mode "any" (this suite's presets) and "pad" (imported TF models): padded bottom/right with the mean
    pixel to at least the crop size (label padding is 255, so it never counts), never rescaled. The image
    pooling averages the whole padded input, as TF DeepLab's eval.py does (its window follows the eval crop
    size); at the native crop this is the exported graph's fixed window exactly.
  - input_mode "resize" (e.g. the 257×257 picamera2 model): each image stretched to the crop size and the
    prediction resized back to the image, one image at a time.
Metrics are always computed at each image's own resolution.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path
from typing import Any, Iterator, Mapping, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader
from tqdm import tqdm

from common.cli import new_parser, run_cli
from common.distributed import DistInfo, all_reduce_sum, init_distributed
from common.errors import UserError
from common.labels import IGNORE_INDEX
from datasets.errors import SkipCounter
from datasets.loading import collate_segmentation
from datasets.sources import add_data_arguments, segmentation_split
from datasets.transforms import normalization_stats, segmentation_eval_transform
from deeplab_mobile.checkpoint import load_deeplab
from deeplab_mobile.head import ImagePooling
from deeplab_mobile.presets import DeepLabPreset
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
from eval.segmentation import PAPER_MF_SCALES, predict_probabilities, predicted_masks
from eval.segmentation_metrics import ConfusionMatrix
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
    g.add_argument("--split", default=None, help="ImageSets/Segmentation list for --data voc/custom/synthetic "
                   "(default: val)")  # fmt: skip
    g.add_argument("--scales", type=float, nargs="+", default=None, metavar="S",
                   help="input scales whose class probabilities are averaged (default: 1.0)")  # fmt: skip
    g.add_argument("--flip", action="store_true", help="also average horizontally flipped inputs")
    g.add_argument("--mf", action="store_true",
                   help=f"the paper's multi-scale + flip: --scales {' '.join(f'{s:g}' for s in PAPER_MF_SCALES)} "
                        "--flip")  # fmt: skip
    g.add_argument("--crop-size", type=int, default=None,
                   help="pad inputs to at least this size (default: the training run's --crop-size recorded in the "
                        "checkpoint, else the preset's crop size)")  # fmt: skip
    g.add_argument("--overlays", type=int, default=4, metavar="N",
                   help="prediction overlays to draw from the first images (default: 4)")  # fmt: skip
    return parser


def check_arguments(parser: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    check_common_arguments(parser, args)
    if args.mf and args.scales is not None:
        parser.error("--mf sets the scales (and --flip) itself: give either --mf or --scales")
    if args.mf:
        args.scales, args.flip = list(PAPER_MF_SCALES), True
    args.scales = args.scales or [1.0]
    bad = [s for s in args.scales if not 0.0 < s <= 8.0]
    if bad:
        parser.error(f"--scales must lie in (0, 8], got {' '.join(f'{s:g}' for s in bad)}")
    if args.overlays < 0:
        parser.error(f"--overlays must be 0 or more, got {args.overlays}")


def load_model(args: argparse.Namespace) -> tuple[nn.Module, DeepLabPreset, list[str], dict[str, Any]]:
    """The checkpoint's model (EMA weights of a training checkpoint unless --no-ema), its preset, class names and
    the notes the report shows about it."""
    model, raw = load_deeplab(args.weights, ema=not args.no_ema)  # raw: the training flags live here
    preset, names = model.preset, model.class_names
    has_ema = isinstance(raw.get("ema"), Mapping)
    notes: dict[str, Any] = {"weights": (", raw weights" if args.no_ema else ", EMA weights") if has_ema else ""}
    trained = raw.get("args") if isinstance(raw.get("args"), Mapping) else {}
    notes["training_crop"] = trained.get("crop_size")
    pooling = [m for m in model.modules() if isinstance(m, ImagePooling) and m.kernel is not None]
    for module in pooling:
        module.kernel = None  # global over the padded input: TF eval.py (see the module docstring)
    notes["fixed_pooling"] = bool(pooling)
    return model, preset, names, notes


def resized_predictions(model: nn.Module, loader: DataLoader, device: torch.device, size: int,
                        scales: Sequence[float], flip: bool, progress: bool,
                        ) -> Iterator[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]:  # fmt: skip
    """predicted_masks for input_mode "resize": each image (batch of one) stretched to size × size, the class
    probabilities resized back to the image."""
    for batch in tqdm(loader, desc="segment", disable=not progress, dynamic_ncols=True):
        if batch is None:
            continue
        images, masks = batch
        x = images.to(device, non_blocking=True)
        height, width = x.shape[-2:]
        x = F.interpolate(x, size=(size, size), mode="bilinear", align_corners=False, antialias=True)
        probs = predict_probabilities(model, x, scales, flip)
        probs = F.interpolate(probs, size=(height, width), mode="bilinear", align_corners=False)
        yield images, probs.argmax(1).cpu(), masks


def to_overlay(image: torch.Tensor, truth: torch.Tensor, predicted: torch.Tensor, normalization: str,
               name: str) -> Overlay:  # fmt: skip
    """Undo the normalisation and cut off the bottom/right padding (rows and columns that are all 255)."""
    mean, std = normalization_stats(normalization)  # type: ignore[arg-type]
    pixels = image.float().cpu() * torch.tensor(std).view(3, 1, 1) + torch.tensor(mean).view(3, 1, 1)
    rgb = (pixels.clamp(0, 1) * 255).round().byte().permute(1, 2, 0).numpy()
    truth_np, pred_np = truth.cpu().numpy(), predicted.cpu().numpy()
    labelled = truth_np != IGNORE_INDEX
    rows, cols = np.flatnonzero(labelled.any(axis=1)), np.flatnonzero(labelled.any(axis=0))
    h = rows[-1] + 1 if len(rows) else truth_np.shape[0]
    w = cols[-1] + 1 if len(cols) else truth_np.shape[1]
    return Overlay(rgb[:h, :w], truth_np[:h, :w], pred_np[:h, :w], name)


def reduce_matrix(matrix: ConfusionMatrix, dist: DistInfo) -> ConfusionMatrix:
    """Sum over processes on the process group's device (NCCL reduces CUDA tensors only), kept on the CPU."""
    matrix.matrix = all_reduce_sum(matrix.matrix.to(dist.device)).cpu()
    return matrix


def evaluate(args: argparse.Namespace) -> Path | None:
    dist = init_distributed(args.device)
    model, preset, ckpt_names, notes = load_model(args)
    resize = preset.input_mode == "resize"
    if resize and args.crop_size is not None:
        raise UserError(f"--crop-size: preset {preset.name} stretches every image to {preset.crop_size}×"
                        f"{preset.crop_size} (input_mode resize); drop the flag")  # fmt: skip
    crop = preset.crop_size if resize else (args.crop_size or notes["training_crop"] or preset.crop_size)
    transform = segmentation_eval_transform(1 if resize else crop, preset.normalization)  # 1: no padding
    skip = SkipCounter() if args.skip_bad_samples else None
    if args.data == "coco" and args.split:
        raise UserError("--split does not apply to --data coco (the COCO val2017 images are evaluated)")
    dataset, class_names, source = main_first(dist, lambda: segmentation_split(
        args, args.split or "val", transform, skip, ckpt_names, dist.is_main and not args.quiet))  # fmt: skip
    if len(class_names) != model.num_classes:
        raise UserError(f"--weights {args.weights} has {model.num_classes} classes (background included) but the "
                        f"dataset {source} has {len(class_names)}: evaluate the checkpoint on the data it was "
                        "trained for" + (" (or pass --num-classes)" if args.data == "custom" else ""))  # fmt: skip
    subset = first_images(dataset, args.max_images)
    batch_size = 1 if resize else args.batch_size
    if resize and args.batch_size != 1 and dist.is_main:
        print(f"note: preset {preset.name} resizes every image to {crop}×{crop}: evaluating one image at a time")
    loader = eval_loader(subset, args, dist, collate_segmentation, batch_size)
    model = model.to(dist.device).eval()

    progress = dist.is_main and not args.quiet
    matrix = ConfusionMatrix(model.num_classes)
    overlays: list[Overlay] = []
    count = 0
    start = time.perf_counter()
    with torch.inference_mode():
        predictions = (resized_predictions(model, loader, dist.device, crop, args.scales, args.flip, progress)
                       if resize else predicted_masks(model, loader, dist.device, args.scales, args.flip, progress))
        for images, predicted, truth in predictions:
            matrix.update(predicted, truth)
            for i in range(images.shape[0]):
                if dist.is_main and len(overlays) < args.overlays:
                    overlays.append(to_overlay(images[i], truth[i], predicted[i], preset.normalization,
                                               f"image {count + i + 1}"))  # fmt: skip
            count += images.shape[0]
    reduce_matrix(matrix, dist)
    count = process_count(count)
    if not dist.is_main:
        return None
    seconds = time.perf_counter() - start
    metrics = matrix.compute()

    scales = " ".join(f"{s:g}" for s in args.scales)
    mode = "multi-scale" if len(args.scales) > 1 else "single scale"
    feeding = (f"each image resized to {crop}×{crop} (input_mode resize), prediction resized back" if resize else
               f"padded bottom/right to at least {crop}×{crop}, not rescaled (input_mode {preset.input_mode})")
    details = {
        "checkpoint": f"{args.weights} (preset {preset.name}, {model.num_classes} classes with the background"
                      f"{notes['weights']})",
        "data": f"{source}: {count} of {len(dataset)} images"
                + (f" (--max-images {args.max_images})" if len(subset) < len(dataset) else ""),
        "input": f"{feeding}, {preset.normalization} normalisation",
        "scales": f"{scales}{' + flip' if args.flip else ''} ({'the paper’s MF' if args.mf else mode})",
        "image_pooling": "global over the whole input, as TF eval.py pools (the checkpoint's fixed window "
                         "equals it at the native crop)" if notes["fixed_pooling"] else "global",
        "processes": f"{dist.world_size} on {dist.device.type}",
        "time": f"{seconds:.1f} s ({count / max(seconds, 1e-9):.2f} images/s)",
    }  # fmt: skip
    record_skipped(skip, details)
    out_dir = results_dir(args)
    title = f"Segmentation mIoU of {Path(args.weights).name}" + (" (MF)" if args.mf else "")
    report = write_segmentation_report(metrics, class_names, matrix, out_dir, title, overlays, details)
    print(f"mIoU {100 * metrics['mIoU']:.2f}% (pixel accuracy {100 * metrics['pixel_accuracy']:.2f}%) on {count} "
          f"images, {mode}{' + flip' if args.flip else ''}; report: {report}")  # fmt: skip
    return out_dir


def main(argv: Sequence[str] | None = None) -> Path | None:
    """Run the evaluation; the results folder on rank 0 (None on the other torchrun processes)."""
    return run_cli(build_parser(), argv, check_arguments, evaluate)


if __name__ == "__main__":
    main()
