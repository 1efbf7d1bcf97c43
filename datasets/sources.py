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
from typing import Any, Callable, Sequence

from torch.utils.data import Dataset

from common.errors import DatasetError, UserError
from datasets.coco import CocoDetection
from datasets.errors import SkipCounter
from datasets.segmentation import (
    VOC_SEG_CLASSES,
    SegmentationDataset,
    coco_voc_segmentation_samples,
    trainaug_samples,
    voc_segmentation_samples,
)
from datasets.synthetic import (
    FORMAT_VERSION,
    SYNTHETIC_CLASSES,
    SyntheticPaths,
    generate,
    synthetic_detection,
    synthetic_segmentation,
)
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
    g.add_argument(
        "--data-root", type=Path, default=None, help=f"dataset folder (default for synthetic: {DEFAULT_SYNTHETIC_ROOT})"
    )
    if segmentation:
        g.add_argument("--sbd-root", type=Path, help="--data voc: SBD benchmark_RELEASE/dataset for trainaug")
        g.add_argument(
            "--num-classes", type=int, default=21, help="--data custom: classes including background (default: 21)"
        )
    else:
        g.add_argument("--train-ann", type=Path, help="--data custom: training instances JSON (COCO format)")
        g.add_argument("--train-images", type=Path, help="--data custom: training image folder")
        g.add_argument("--val-ann", type=Path, help="--data custom: validation instances JSON (COCO format)")
        g.add_argument("--val-images", type=Path, help="--data custom: validation image folder")
    g.add_argument(
        "--skip-bad-samples",
        action="store_true",
        help="drop unreadable images and bad annotations with a warning instead of stopping",
    )


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
        print(
            f"redrawing the synthetic dataset in {root}: it has format {drawn.get('version')}, "
            f"this version draws format {FORMAT_VERSION}"
        )
        generate(root, **{**kept, **params}, overwrite=True)
        return root
    if root.exists() and any(root.iterdir()):
        raise DatasetError(
            root,
            "exists but holds no synthetic dataset (synthetic.json missing)",
            "Point --data-root elsewhere or remove the folder",
        )
    print(f"drawing the synthetic dataset into {root} (once)")
    generate(root, **params)
    return root


def data_root(args: argparse.Namespace) -> Path:
    """--data-root, drawing the synthetic dataset first where needed; a missing or absent folder is a UserError."""
    if args.data == "synthetic":
        return ensure_synthetic(args.data_root or DEFAULT_SYNTHETIC_ROOT)
    if args.data_root is None:
        raise UserError(f"--data {args.data} needs --data-root (the dataset folder)")
    if not args.data_root.is_dir():
        raise UserError(f"--data-root {args.data_root}: no such folder")
    return args.data_root


def year_folder(root: Path, year: str) -> Path:
    """root/VOC<year> for a VOCdevkit, or root itself when it already is a year folder."""
    nested = root / f"VOC{year}"
    return nested if nested.is_dir() or not (root / "ImageSets").is_dir() else root


def training_images(kind: str, root: Path) -> Path:
    """The folder of training images of a `--data` kind under its dataset root (synthetic, coco, voc: VOC2012's
    JPEGImages), for what needs the images alone, such as int8 calibration."""
    if kind == "synthetic":
        return SyntheticPaths(root).coco_images("train")
    if kind == "coco":
        return root / "train2017"
    if kind == "voc":
        return year_folder(root, "2012") / "JPEGImages"
    raise ValueError(f"no single training-image folder for --data {kind}")


def detection_data(
    args: argparse.Namespace, train_transform: Callable, val_transform: Callable, skip: SkipCounter | None = None
) -> DataSplits:
    """Datasets for `--data`; training sets drop images without objects, validation sets keep them."""
    kw: dict[str, Any] = {"skip": skip}
    if args.data == "custom":
        missing = [
            f"--{n.replace('_', '-')}"
            for n in ("train_ann", "train_images", "val_ann", "val_images")
            if getattr(args, n) is None
        ]
        if missing:
            raise UserError(f"--data custom needs {', '.join(missing)}")
        train = CocoDetection(args.train_images, args.train_ann, train_transform, drop_empty=True, **kw)
        val = CocoDetection(args.val_images, args.val_ann, val_transform, **kw)
        if val.class_names != train.class_names:
            raise DatasetError(
                args.val_ann, f"lists other categories than {args.train_ann}", "Give both splits the same categories"
            )
        return DataSplits(train, val, train.class_names)
    root = data_root(args)
    if args.data == "synthetic":
        train = synthetic_detection(root, "train", train_transform, drop_empty=True, **kw)
        return DataSplits(train, synthetic_detection(root, "val", val_transform, **kw), train.class_names)
    if args.data == "coco":

        def coco(split: str, transform: Callable, drop: bool) -> CocoDetection:
            ann = root / "annotations" / f"instances_{split}2017.json"
            return CocoDetection(root / f"{split}2017", ann, transform, drop_empty=drop, **kw)

        train = coco("train", train_transform, True)
        return DataSplits(train, coco("val", val_transform, False), train.class_names)
    train = voc_detection_union(root, VOC0712_TRAINVAL, train_transform, keep_difficult=False, **kw)
    val = VOCDetection(year_folder(root, "2007"), "test", val_transform, **kw)
    return DataSplits(train, val, ["background", *VOC_CLASSES])


def segmentation_split(
    args: argparse.Namespace,
    split: str,
    transform: Callable,
    skip: SkipCounter | None = None,
    class_names: Sequence[str] = (),
    progress: bool = True,
) -> tuple[SegmentationDataset, list[str], str]:
    """One split of `--data` for segmentation (class index masks, 0 = background, 255 = ignore), its class names
    and a description. --data custom counts --num-classes classes, else those of `class_names` (a checkpoint's),
    whose names it keeps when the counts agree."""
    root = data_root(args)
    if args.data == "synthetic":
        return (
            synthetic_segmentation(root, split, transform, skip=skip),
            ["background", *SYNTHETIC_CLASSES],
            f"{root / 'voc'} split {split}",
        )
    names = list(VOC_SEG_CLASSES)
    if args.data == "coco":
        if split not in ("train", "val"):
            raise UserError(f"--data coco has the splits train and val (COCO's train2017, val2017), not {split}")
        ann = root / "annotations" / f"instances_{split}2017.json"
        samples = coco_voc_segmentation_samples(
            root / f"{split}2017", ann, root / "voc_masks_cache", skip=skip, progress=progress
        )
        source, description = ann, f"{ann}: the 20 VOC classes"
    elif args.data == "voc":
        source = year_folder(root, "2012")
        sbd = getattr(args, "sbd_root", None)
        samples = trainaug_samples(source, sbd) if split == "train" and sbd else voc_segmentation_samples(source, split)
        description = f"{source} split {'trainaug' if split == 'train' and sbd else split}"
    else:
        count = args.num_classes or len(class_names)
        names = (
            list(class_names) if count == len(class_names) else ["background", *(f"class{i}" for i in range(1, count))]
        )
        samples, source, description = voc_segmentation_samples(root, split), root, f"{root} split {split}"
    return SegmentationDataset(samples, len(names), transform, skip=skip, source=source), names, description


def segmentation_data(
    args: argparse.Namespace, train_transform: Callable, val_transform: Callable, skip: SkipCounter | None = None
) -> DataSplits:
    """Training and validation splits of `--data` for segmentation (see `segmentation_split`)."""
    train, names, _ = segmentation_split(args, "train", train_transform, skip)
    val, _, _ = segmentation_split(args, "val", val_transform, skip)
    return DataSplits(train, val, names)
