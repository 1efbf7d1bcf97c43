"""COCO box mAP (pycocotools) of an SSDLite checkpoint, ours or imported, on any COCO-format set.

    python eval/coco_map.py --weights runs/ssdlite/exp/best.pt --data coco --data-root /data/coco
    python eval/coco_map.py --weights my.pt --ann my/instances_val.json --images my/val_images
    python eval/coco_map.py --weights ssdlite_tf_coco.pt --data coco --data-root /data/coco --max-images 500
    torchrun --nproc_per_node=4 eval/coco_map.py --weights best.pt --data coco --data-root /data/coco

Results go to runs/eval/<name>/ (exp, exp2, ...): report.md (the 12 COCOeval numbers, per-class AP, the setup),
metrics.json, pr_curve.png and detections.json (COCO result format with the file's category ids).

Label spaces, decided from the checkpoint's class count and class names against the annotation file:
  - K + 1 classes for a file with K categories: contiguous labels 1..K in sorted category-id order (how this
    suite trains on COCO-format data); detections are mapped back to the category ids.
  - max category id + 1 classes (91 for COCO): labels are the category ids themselves (TF Object Detection API
    and torchvision COCO models, e.g. tools/import_tf_detection.py output); detections of ids the file does not
    define ("N/A" slots) are dropped.
  - otherwise, or where the names at those labels disagree: the checkpoint's classes matched to the file's
    categories by name (any case; VOC and COCO spellings such as aeroplane/airplane are the same class). Only the
    categories both know are scored; the report lists those left out on either side. So a person-only detector
    is scored on COCO's person category.

The input size, normalisation and post-processing come from the checkpoint's preset (--score-threshold and
--nms-iou override the latter). Under torchrun every process evaluates a contiguous share of the images and
rank 0 gathers the detections, scores them and writes the report.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path
from typing import Sequence

import torch

from common.cli import OneLineArgumentParser, new_parser, run_cli
from common.distributed import gather_objects, init_distributed
from common.errors import UserError
from datasets.coco import CocoDetection
from datasets.errors import SkipCounter
from datasets.loading import collate_detection
from datasets.sources import add_data_arguments, data_root
from datasets.transforms import DetectionEvalTransform
from eval import cli
from eval.coco_report import evaluate_coco, write_coco_report
from eval.detection import LabelMatch, detect, match_labels
from ssdlite.model import SSDLite


def coco_source(args: argparse.Namespace) -> tuple[Path, Path]:
    """(image folder, annotation JSON) the flags name."""
    if args.ann is not None or args.images is not None:
        if args.ann is None or args.images is None:
            raise UserError("--ann and --images go together: the instances JSON and the folder of its images")
        return args.images, args.ann
    if args.data == "voc":
        raise UserError(
            "--data voc is not in COCO format: use eval/voc_map.py for VOC mAP, or --ann/--images for "
            "a COCO-format copy of the set"
        )
    if args.data == "custom":
        missing = [flag for flag, v in (("--val-ann", args.val_ann), ("--val-images", args.val_images)) if v is None]
        if missing:
            raise UserError(f"--data custom needs {' and '.join(missing)} (or --ann JSON --images DIR)")
        return args.val_images, args.val_ann
    root = data_root(args)
    if args.data == "synthetic":
        return root / "coco" / "val", root / "coco" / "annotations" / "instances_val.json"
    return root / "val2017", root / "annotations" / "instances_val2017.json"


LABEL_SPACE_TEXT = {
    "contiguous": "contiguous: the checkpoint's {n} classes are the background and the file's {k} categories in "
    "sorted category-id order (this suite's training convention); detections are mapped back to "
    "the category ids",
    "category_id": "COCO category ids: the checkpoint's {n} classes are the background and category ids 1..{m} "
    "(TF Object Detection API / imported models); detections of ids the file does not define are "
    "dropped",
    "class_name": "by class name: the checkpoint's {n} classes matched onto the file's {k} categories by name (any "
    "case, COCO/VOC spellings); only the categories both know are scored",
}


def coco_dataset_for(
    model: SSDLite, args: argparse.Namespace, transform: DetectionEvalTransform, skip: SkipCounter | None
) -> tuple[CocoDetection, str, LabelMatch | None]:
    """The COCO-format set in the label space the checkpoint fits: its class count read as contiguous labels or
    category ids where its names agree (or it has none), else its classes matched to the file's by name."""
    images, ann = coco_source(args)
    dataset = CocoDetection(images, ann, transform, skip=skip)
    match = match_labels(model.class_names, dataset.class_names)
    categories = len(dataset.class_names) - 1
    if model.num_classes == categories + 1 and (match is None or match.positional):
        return dataset, "contiguous", None
    ids = dataset.coco.getCatIds()
    if min(ids) >= 1 and model.num_classes == max(ids) + 1:
        by_id = CocoDetection(images, ann, transform, label_space="category_id", skip=skip)
        by_id_match = match_labels(model.class_names, by_id.class_names)
        if by_id_match is None or by_id_match.positional:
            return by_id, "category_id", None
    if match is not None:
        return dataset, "class_name", match
    raise UserError(
        f"--weights {args.weights} has {model.num_classes} classes (background included) but {ann} has "
        f"{categories} categories (ids {min(ids)}..{max(ids)}), and none of its class names is one of the file's: "
        f"the checkpoint needs {categories + 1} classes (contiguous labels) or {max(ids) + 1} (labels = category "
        "ids), or class names to match; evaluate it on the data it was trained for"
    )


def build_parser() -> OneLineArgumentParser:
    parser = new_parser("python eval/coco_map.py", __doc__)
    cli.add_common_arguments(parser, batch_size=32)
    g = parser.add_argument_group("COCO-format set (instead of --data)")
    g.add_argument("--ann", type=Path, metavar="JSON", help="instances JSON (COCO format) of the set to evaluate")
    g.add_argument("--images", type=Path, metavar="DIR", help="folder of the images --ann lists")
    add_data_arguments(parser, segmentation=False)
    cli.add_detection_arguments(parser)
    return parser


def evaluate(args: argparse.Namespace) -> Path | None:
    dist = init_distributed(args.device)
    model, checkpoint, thresholds = cli.load_detector(args, dist)
    skip = SkipCounter() if args.skip_bad_samples else None
    dataset, label_space, match = cli.main_first(
        dist, lambda: coco_dataset_for(model, args, cli.detection_transform(model), skip)
    )
    if not dataset.coco.dataset.get("annotations"):  # COCOeval would report 0.000, which reads as a score
        raise UserError(
            f"{dataset.ann_file}: has no annotations, so mAP is undefined (nothing to find): evaluate "
            "on a file with ground-truth boxes"
        )
    subset = cli.first_images(dataset, args.max_images)
    loader = cli.eval_loader(subset, args, dist, collate_detection)
    start = time.perf_counter()
    results, image_ids, dropped = [], [], 0
    for target, found in detect(model, loader, dist.is_main and not args.quiet, **thresholds):
        image_ids.append(int(target["image_id"]))
        found = match.apply(found) if match else found
        known = torch.tensor([int(v) in dataset.label_to_cat for v in found["labels"].tolist()], dtype=torch.bool)
        dropped += int((~known).sum())
        results += dataset.to_coco_results(
            target["image_id"], found["boxes"][known], found["scores"][known].tolist(), found["labels"][known].tolist()
        )
    gathered = gather_objects((results, image_ids, dropped))
    if not dist.is_main:
        return None
    results = [r for part, _, _ in gathered for r in part]
    image_ids = sorted({i for _, ids, _ in gathered for i in ids})
    dropped = sum(d for _, _, d in gathered)
    seconds = time.perf_counter() - start
    scored = [dataset.label_to_cat[label] for label in sorted(match.to_dataset.values())] if match else None
    result = evaluate_coco(dataset.coco, results, image_ids, scored)

    k = len(dataset.class_names) - 1
    setup = cli.detector_setup(args, model, checkpoint, dist, thresholds)
    setup.update(
        {
            "data": f"{dataset.ann_file} with images in {dataset.image_dir}: {len(image_ids)} of {len(dataset)} images"
            + (f" (--max-images {args.max_images})" if len(subset) < len(dataset) else ""),
            "labels": LABEL_SPACE_TEXT[label_space].format(n=model.num_classes, k=k, m=model.num_classes - 1)
            + (f"; {dropped} detections of undefined ids dropped" if dropped else ""),
            "time": f"{seconds:.1f} s ({len(image_ids) / max(seconds, 1e-9):.1f} images/s)",
        }
    )
    cli.report_class_names(setup, model.class_names, dataset.class_names, match)
    cli.record_skipped(skip, setup)
    out_dir = cli.results_dir(args)
    write_coco_report(result, out_dir, f"COCO box mAP of {Path(args.weights).name}", detections=results, setup=setup)
    print(
        f"COCO mAP@[.5:.95] {result.stats['AP']:.3f}, AP50 {result.stats['AP50']:.3f} on {len(image_ids)} images "
        f"({label_space.replace('_', ' ')} labels); report: {out_dir / 'report.md'}"
    )
    return out_dir


def main(argv: Sequence[str] | None = None) -> Path | None:
    """Run the evaluation; the results folder on rank 0 (None on the other torchrun processes)."""
    return run_cli(build_parser(), argv, cli.check_detection_arguments, evaluate)


if __name__ == "__main__":
    main()
