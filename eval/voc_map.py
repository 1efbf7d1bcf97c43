"""PASCAL VOC detection mAP of an SSDLite checkpoint, ours or imported: the VOC07 11-point and the VOC2010+ area
metrics from one pass, with `difficult` objects neither rewarded nor penalised (as the VOC devkit counts them).

    python eval/voc_map.py --weights runs/ssdlite/voc/best.pt --data voc --data-root /data/VOCdevkit
    python eval/voc_map.py --weights my.pt --data custom --data-root my/VOC_like --split val
    torchrun --nproc_per_node=4 eval/voc_map.py --weights best.pt --data voc --data-root /data/VOCdevkit

--data voc evaluates VOC2007 test (4,952 images), the set behind the 68.6 VOC07 mAP that pytorch-ssd publishes
for its mb2-ssd-lite; --data synthetic the synthetic dataset's VOC files; --data custom any VOC-layout folder
(Annotations/, JPEGImages/, ImageSets/Main/<split>.txt) whose class names are the checkpoint's.
A checkpoint with other classes (a COCO detector on VOC, a person-only one) is scored on the classes it shares with
the data, matched by name (COCO and VOC spellings alike); the report lists those left out on either side.
Results go to runs/eval/<name>/: report.md (both mAPs, per-class AP), metrics.json and detections.json.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from typing import Sequence

import numpy as np
import torch

from common.cli import new_parser, run_cli
from common.distributed import gather_objects, init_distributed
from common.errors import UserError
from common.files import write_atomic
from datasets.errors import SkipCounter
from datasets.loading import collate_detection
from datasets.sources import add_data_arguments, data_root, year_folder
from datasets.synthetic import SYNTHETIC_CLASSES
from datasets.transforms import DetectionEvalTransform
from datasets.voc import VOC_CLASSES, VOCDetection
from eval import cli
from eval.detection import LabelMatch, detect, match_labels
from eval.segmentation_report import DASH, json_safe, setup_section
from eval.voc_ap import ImageDetections, ImageGroundTruth, voc_detection_ap
from ssdlite.model import SSDLite

PYTORCH_SSD_MB2_SSDLITE_VOC07 = 68.6  # github.com/qfgaohao/pytorch-ssd README: mb2-ssd-lite, VOC2007 test


def voc_dataset(
    args: argparse.Namespace, model: SSDLite, transform: DetectionEvalTransform, skip: SkipCounter | None
) -> tuple[VOCDetection, LabelMatch | None]:
    """The VOC-layout set the flags name, `difficult` objects kept (flagged) for the evaluation, and how the
    checkpoint's labels match its classes: as they are where count and names agree, else by class name."""
    if args.data == "coco":
        raise UserError("--data coco is not in VOC format: use eval/coco_map.py for COCO mAP")
    root = data_root(args)
    names = model.class_names
    if args.data == "voc":
        dataset = VOCDetection(year_folder(root, "2007"), args.split or "test", transform, skip=skip)
    elif args.data == "synthetic":
        dataset = VOCDetection(root / "voc", args.split or "val", transform, classes=SYNTHETIC_CLASSES, skip=skip)
    else:
        dataset = VOCDetection(root, args.split or "val", transform, classes=names[1:], skip=skip)
    match = match_labels(names, dataset.class_names)
    if len(dataset.class_names) == model.num_classes and (match is None or match.positional):
        return dataset, None
    if match is None:
        raise UserError(
            f"--weights {args.weights} has {model.num_classes} classes (background included) but the dataset "
            f"{dataset.root} has {len(dataset.class_names)} ({', '.join(dataset.class_names[1:4])}, ...), and none "
            "of its class names is one of the dataset's: evaluate the checkpoint on the data it was trained for"
        )
    return dataset, match


def build_parser() -> argparse.ArgumentParser:
    parser = new_parser("python eval/voc_map.py", __doc__)
    cli.add_common_arguments(parser, batch_size=32)
    add_data_arguments(parser, segmentation=False)
    parser.add_argument(
        "--split", default=None, help="ImageSets/Main list to evaluate (default: test for --data voc, else val)"
    )
    parser.add_argument("--iou", type=float, default=0.5, help="IoU a detection needs to match (default: 0.5)")
    cli.add_detection_arguments(parser)
    return parser


def check_arguments(parser: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    cli.check_detection_arguments(parser, args)
    if not 0.0 < args.iou < 1.0:
        parser.error(f"--iou must be in (0, 1), got {args.iou}")


def nanmean(values: Sequence[float]) -> float:
    """Mean over the finite values (classes with objects); NaN when there are none."""
    finite = [v for v in values if np.isfinite(v)]
    return float(np.mean(finite)) if finite else float("nan")


def _ap(value: float) -> str:
    return DASH if not np.isfinite(value) else f"{100 * value:.2f}"


def write_voc_report(
    out_dir: Path,
    title: str,
    class_names: Sequence[str],
    ap07: Sequence[float],
    ap10: Sequence[float],
    positives: Sequence[int],
    setup: dict,
    num_images: int,
    detections: list[dict],
    reference: bool,
) -> Path:
    """report.md, metrics.json, detections.json in `out_dir` (atomic writes)."""
    map07, map10 = nanmean(ap07), nanmean(ap10)
    per_class = [
        {"name": n, "positives": int(p), "AP_voc07": a, "AP_voc2010": b}
        for n, p, a, b in zip(class_names[1:], positives, ap07, ap10, strict=True)
    ]
    write_atomic(out_dir / "detections.json", json.dumps(detections))
    metrics = {
        "mAP_voc07": map07,
        "mAP_voc2010": map10,
        "per_class": per_class,
        "num_images": num_images,
        "num_detections": len(detections),
        "setup": setup,
    }
    write_atomic(out_dir / "metrics.json", json.dumps(json_safe(metrics), indent=2, allow_nan=False) + "\n")
    lines = [
        f"# {title}",
        "",
        f"{num_images} images, {len(detections)} detections; a detection matches at IoU ≥ {setup['match_iou']}, "
        "`difficult` objects are ignored.",
        "",
        "| metric | mAP (%) |",
        "|---|---:|",
        f"| VOC07 11-point | {_ap(map07)} |",
        f"| VOC2010+ area | {_ap(map10)} |",
    ]
    if reference:
        lines += [
            "",
            f"For comparison: pytorch-ssd publishes {PYTORCH_SSD_MB2_SSDLITE_VOC07} VOC07 mAP for its "
            "mb2-ssd-lite on VOC2007 test (the same 11-point metric).",
        ]
    lines += ["", *setup_section(setup)]
    lines += [
        "",
        "## Per-class AP",
        "",
        "| class | objects (not difficult) | AP VOC07 (%) | AP VOC2010+ (%) |",
        "|---|---:|---:|---:|",
        *(f"| {c['name']} | {c['positives']} | {_ap(c['AP_voc07'])} | {_ap(c['AP_voc2010'])} |" for c in per_class),
        "",
        f"{DASH}: no non-difficult object of the class in the evaluated images (left out of the mean).",
    ]
    report = out_dir / "report.md"
    write_atomic(report, "\n".join(lines) + "\n")
    return report


def evaluate(args: argparse.Namespace) -> Path | None:
    dist = init_distributed(args.device)
    model, checkpoint, thresholds = cli.load_detector(args, dist)
    skip = SkipCounter() if args.skip_bad_samples else None
    dataset, match = cli.main_first(dist, lambda: voc_dataset(args, model, cli.detection_transform(model), skip))
    subset = cli.first_images(dataset, args.max_images)
    loader = cli.eval_loader(subset, args, dist, collate_detection)
    records = {r.image_id: r for r in dataset.records}
    start = time.perf_counter()
    pairs = []
    for target, found in detect(model, loader, dist.is_main and not args.quiet, **thresholds):
        record = records[target["image_id"]]  # the file's boxes, not the resized ones of the target
        truth = ImageGroundTruth(
            torch.from_numpy(record.boxes), torch.from_numpy(record.labels), torch.from_numpy(record.extra["difficult"])
        )
        found = match.apply(found) if match else found
        pairs.append((record.image_id, truth, ImageDetections(found["boxes"], found["scores"], found["labels"])))
    pairs = [p for part in gather_objects(pairs) for p in part]
    if not dist.is_main:
        return None
    seconds = time.perf_counter() - start
    truths, detections = [g for _, g, _ in pairs], [d for _, _, d in pairs]
    num_classes = len(dataset.class_names)
    ap07 = voc_detection_ap(detections, truths, num_classes, args.iou, use_07_metric=True)
    ap10 = voc_detection_ap(detections, truths, num_classes, args.iou, use_07_metric=False)
    results = [
        {
            "image_id": image_id,
            "label": dataset.class_names[int(label)],
            "bbox_xyxy": [round(float(v), 2) for v in box.tolist()],
            "score": round(float(score), 5),
        }
        for image_id, _, d in pairs
        for box, score, label in zip(d.boxes, d.scores, d.labels, strict=True)
    ]
    positives = [sum(int(((g.labels == c) & ~g.difficult).sum()) for g in truths) for c in range(1, num_classes)]
    scored = sorted(match.to_dataset.values()) if match else range(1, num_classes)  # the classes both know
    class_names = ["background", *(dataset.class_names[c] for c in scored)]
    ap07, ap10, positives = ([values[c - 1] for c in scored] for values in (ap07, ap10, positives))

    out_dir = cli.results_dir(args)
    setup = cli.detector_setup(args, model, checkpoint, dist, thresholds)
    setup.update(
        {
            "data": f"{dataset.root} split {args.split or ('test' if args.data == 'voc' else 'val')}: {len(pairs)} of "
            f"{len(dataset)} images" + (f" (--max-images {args.max_images})" if len(subset) < len(dataset) else ""),
            "match_iou": args.iou,
            "time": f"{seconds:.1f} s ({len(pairs) / max(seconds, 1e-9):.1f} images/s)",
        }
    )
    cli.report_class_names(setup, model.class_names, dataset.class_names, match)
    cli.record_skipped(skip, setup)
    reference = args.data == "voc" and list(dataset.class_names[1:]) == list(VOC_CLASSES) and len(subset) == 4952
    report = write_voc_report(
        out_dir,
        f"VOC detection mAP of {Path(args.weights).name}",
        class_names,
        ap07,
        ap10,
        positives,
        setup,
        len(pairs),
        results,
        reference,
    )
    print(f"VOC07 mAP {_ap(nanmean(ap07))}, VOC2010+ mAP {_ap(nanmean(ap10))} on {len(pairs)} images; report: {report}")
    return out_dir


def main(argv: Sequence[str] | None = None) -> Path | None:
    """Run the evaluation; the results folder on rank 0 (None on the other torchrun processes)."""
    return run_cli(build_parser(), argv, check_arguments, evaluate)


if __name__ == "__main__":
    main()
