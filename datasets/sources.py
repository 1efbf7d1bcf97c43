"""The `--data` choices of the training and evaluation entry points: which readers, folders and splits.

    synthetic  the embedded dataset (generated into --data-root on first use, default data/synthetic)
    coco       a COCO 2017 tree: train2017/, val2017/, annotations/instances_{train,val}2017.json
    voc        a VOCdevkit: detection trains on 07+12 trainval and validates on 07 test; segmentation trains on
               trainaug (VOC2012 + SBD via --sbd-root) and validates on VOC2012 val
    custom     your own data: COCO-format JSON + images (detection) or a VOC-layout folder (segmentation)
"""

from __future__ import annotations

import argparse
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from torch.utils.data import Dataset

from datasets.coco import CocoDetection
from datasets.errors import DatasetError, SkipCounter
from datasets.segmentation import (
    VOC_SEG_CLASSES,
    SegmentationDataset,
    coco_voc_segmentation_samples,
    trainaug_samples,
    voc_segmentation_samples,
)
from datasets.synthetic import FORMAT_VERSION, SYNTHETIC_CLASSES, generate, synthetic_detection, synthetic_segmentation
from datasets.voc import VOC0712_TRAINVAL, VOC_CLASSES, VOCDetection, voc_detection_union

DATA_KINDS = ("synthetic", "coco", "voc", "custom")
DEFAULT_SYNTHETIC_ROOT = Path("data/synthetic")


@dataclass
class DataSplits:
    """Training and validation datasets and the class names (index 0 = background) they share."""

    train: Dataset
    val: Dataset
    class_names: list[str]


def add_data_arguments(parser: argparse.ArgumentParser, segmentation: bool) -> None:
    g = parser.add_argument_group("data")
    g.add_argument("--data", choices=DATA_KINDS, default="synthetic", help="dataset kind (default: synthetic)")
    g.add_argument("--data-root", type=Path, default=None,
                   help=f"dataset folder (default for synthetic: {DEFAULT_SYNTHETIC_ROOT})")  # fmt: skip
    if segmentation:
        g.add_argument("--sbd-root", type=Path, help="--data voc: SBD benchmark_RELEASE/dataset for trainaug")
        g.add_argument("--num-classes", type=int, default=21,
                       help="--data custom: classes including background (default: 21)")  # fmt: skip
    else:
        g.add_argument("--train-ann", type=Path, help="--data custom: training instances JSON (COCO format)")
        g.add_argument("--train-images", type=Path, help="--data custom: training image folder")
        g.add_argument("--val-ann", type=Path, help="--data custom: validation instances JSON (COCO format)")
        g.add_argument("--val-images", type=Path, help="--data custom: validation image folder")
    g.add_argument("--skip-bad-samples", action="store_true",
                   help="drop unreadable images and bad annotations with a warning instead of stopping")  # fmt: skip


def ensure_synthetic(root: Path, **params: Any) -> Path:
    """The synthetic dataset at `root`, drawn first if the folder is absent (deterministic, a few seconds).

    A folder drawn by an older `FORMAT_VERSION` is redrawn with its own counts, seed and size (`params`, the
    keyword arguments of `generate`, override them), so stale data never trains or scores a model silently."""
    info = root / "synthetic.json"
    if info.is_file():
        drawn = json.loads(info.read_text())
        if drawn.get("version") == FORMAT_VERSION:
            return root
        kept = {key: drawn[key] for key in ("num_train", "num_val", "seed", "size") if key in drawn}
        print(f"redrawing the synthetic dataset in {root}: it has format {drawn.get('version')}, "
              f"this version draws format {FORMAT_VERSION}")
        generate(root, **{**kept, **params}, overwrite=True)
        return root
    if root.exists() and any(root.iterdir()):
        raise DatasetError(root, "exists but holds no synthetic dataset (synthetic.json missing)",
                           "Point --data-root elsewhere or remove the folder")  # fmt: skip
    print(f"drawing the synthetic dataset into {root} (once)")
    generate(root, **params)
    return root


def _root(args: argparse.Namespace) -> Path:
    if args.data == "synthetic":
        return ensure_synthetic(args.data_root or DEFAULT_SYNTHETIC_ROOT)
    if args.data_root is None and args.data != "custom":
        raise SystemExit(f"error: --data {args.data} needs --data-root (the dataset folder)")
    return args.data_root


def detection_data(args: argparse.Namespace, train_transform: Callable, val_transform: Callable,
                   skip: SkipCounter | None = None) -> DataSplits:  # fmt: skip
    """Datasets for `--data`; training sets drop images without objects, validation sets keep them."""
    root = _root(args)
    kw: dict[str, Any] = {"skip": skip}
    if args.data == "synthetic":
        train = synthetic_detection(root, "train", train_transform, drop_empty=True, **kw)
        return DataSplits(train, synthetic_detection(root, "val", val_transform, **kw), train.class_names)
    if args.data == "coco":
        def coco(split: str, transform: Callable, drop: bool) -> CocoDetection:
            ann = root / "annotations" / f"instances_{split}2017.json"
            return CocoDetection(root / f"{split}2017", ann, transform, drop_empty=drop, **kw)

        train = coco("train", train_transform, True)
        return DataSplits(train, coco("val", val_transform, False), train.class_names)
    if args.data == "voc":
        train = voc_detection_union(root, VOC0712_TRAINVAL, train_transform, keep_difficult=False, **kw)
        val = VOCDetection(root / "VOC2007", "test", val_transform, **kw)
        return DataSplits(train, val, ["background", *VOC_CLASSES])
    missing = [f"--{n.replace('_', '-')}" for n in ("train_ann", "train_images", "val_ann", "val_images")
               if getattr(args, n) is None]  # fmt: skip
    if missing:
        raise SystemExit(f"error: --data custom needs {', '.join(missing)}")
    train = CocoDetection(args.train_images, args.train_ann, train_transform, drop_empty=True, **kw)
    val = CocoDetection(args.val_images, args.val_ann, val_transform, **kw)
    if val.class_names != train.class_names:
        raise SystemExit(f"error: {args.val_ann} and {args.train_ann} list different categories")
    return DataSplits(train, val, train.class_names)


def segmentation_data(args: argparse.Namespace, train_transform: Callable, val_transform: Callable,
                      skip: SkipCounter | None = None) -> DataSplits:  # fmt: skip
    """Datasets for `--data`: class index masks, 0 = background, 255 = ignore."""
    root = _root(args)
    if args.data == "synthetic":
        names = ["background", *SYNTHETIC_CLASSES]
        return DataSplits(synthetic_segmentation(root, "train", train_transform, skip=skip),
                          synthetic_segmentation(root, "val", val_transform, skip=skip), names)  # fmt: skip
    voc_names = list(VOC_SEG_CLASSES)
    if args.data == "voc":
        voc2012 = root / "VOC2012"
        train_samples = (trainaug_samples(voc2012, args.sbd_root) if args.sbd_root
                         else voc_segmentation_samples(voc2012, "train"))  # fmt: skip
        val_samples = voc_segmentation_samples(voc2012, "val")
        num_classes = len(voc_names)
    elif args.data == "coco":
        cache = root / "voc_masks_cache"
        train_samples = coco_voc_segmentation_samples(root / "train2017", root / "annotations" /
                                                      "instances_train2017.json", cache, skip=skip)  # fmt: skip
        val_samples = coco_voc_segmentation_samples(root / "val2017", root / "annotations" /
                                                    "instances_val2017.json", cache, skip=skip)  # fmt: skip
        num_classes = len(voc_names)
    else:
        train_samples = voc_segmentation_samples(root, "train")
        val_samples = voc_segmentation_samples(root, "val")
        num_classes = args.num_classes
        voc_names = ["background", *(f"class{i}" for i in range(1, num_classes))]
    return DataSplits(
        SegmentationDataset(train_samples, num_classes, train_transform, skip=skip, source=root),
        SegmentationDataset(val_samples, num_classes, val_transform, skip=skip, source=root),
        voc_names,
    )
