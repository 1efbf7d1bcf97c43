"""Calibration images for int8 post-training quantisation: which photos the quantiser sees to pick its ranges.

`--calib-data` names a folder of images or a dataset kind of train/ (synthetic, coco, voc, with `--calib-root` as
its --data-root). Without it, the checkpoint's own training data (its stored --data and --data-root) when that
folder is here, else the embedded synthetic set, so an export never needs a download. The images are spread
evenly over the sorted file list, so the same command picks the same photos.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from common.errors import UserError
from common.images import IMAGE_SUFFIXES, read_image
from datasets.sources import DEFAULT_SYNTHETIC_ROOT, ensure_synthetic, year_folder

DATA_KINDS = ("synthetic", "coco", "voc")
DEFAULT_COUNT = 200  # "a few hundred": ranges settle by then on the suite's models, and it stays a minute or two


def image_folder(kind: str, root: Path | None) -> Path:
    """The training-image folder of a train/ dataset kind at `root` (the synthetic set is drawn if absent)."""
    if kind == "synthetic":
        return ensure_synthetic(root or DEFAULT_SYNTHETIC_ROOT) / "coco" / "train"
    if root is None:
        raise UserError(f"--calib-data {kind} needs --calib-root (the dataset folder, as --data-root in training)")
    if kind == "coco":
        return root / "train2017"
    return year_folder(root, "2012") / "JPEGImages"


def training_folder(training_args: Mapping[str, Any] | None) -> Path | None:
    """The image folder a checkpoint was trained on, from its stored arguments, when that folder is here (looked
    up only: nothing is drawn or redrawn)."""
    if not training_args:
        return None
    kind, root = training_args.get("data"), training_args.get("data_root")
    if kind == "custom":
        folder = Path(training_args["train_images"]) if training_args.get("train_images") else (
            Path(root) / "JPEGImages" if root else None)  # fmt: skip
    elif kind == "synthetic":
        folder = Path(root or DEFAULT_SYNTHETIC_ROOT) / "coco" / "train"
    elif kind in DATA_KINDS and root:
        folder = image_folder(kind, Path(root))
    else:
        folder = None
    return folder if folder is not None and folder.is_dir() else None


def resolve_source(spec: str | None, root: Path | None, training_args: Mapping[str, Any] | None) -> tuple[Path, str]:
    """(image folder, where it came from) for --calib-data `spec` (a kind or a folder), else the default."""
    if spec in DATA_KINDS:
        return image_folder(spec, root), f"--calib-data {spec}"
    if spec is not None:
        folder = Path(spec)
        if not folder.is_dir():
            raise UserError(f"--calib-data {spec}: not a folder of images nor one of {', '.join(DATA_KINDS)}")
        return folder, f"--calib-data {spec}"
    trained_on = training_folder(training_args)
    if trained_on is not None:
        return trained_on, "the checkpoint's training data"
    return image_folder("synthetic", None), ("the embedded synthetic set, as the checkpoint's training data is not here: "
                                             "it suits only models trained on it; pass --calib-data with photos "
                                             "like the ones the model will see")  # fmt: skip


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
