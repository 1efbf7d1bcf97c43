"""What the COCO and VOC detection readers share: box validation, the per-image record and sample assembly."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from os import PathLike
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
import torch
from torch.utils.data import Dataset

from common.errors import DatasetError
from common.images import read_image
from datasets.errors import SkipCounter, handle
from datasets.transforms import to_tensors

# Annotation tools round to whole pixels (coco8's boxes come from normalised YOLO labels: about ±1 px); a box that
# pokes out by up to this much is clipped, one that pokes out further is an error: its coordinates are wrong.
BOX_TOLERANCE_PX = 2.0

DetectionSample = tuple[torch.Tensor, dict]
DetectionTransformFn = Callable[[np.ndarray, dict], DetectionSample]


def clip_box(
    x0: float, y0: float, x1: float, y1: float, width: int, height: int, tolerance: float = BOX_TOLERANCE_PX
) -> tuple[float, float, float, float]:
    """Return the box clipped to the image, or raise ValueError saying what is wrong with it."""
    text = f"box (x0, y0, x1, y1) = ({x0:g}, {y0:g}, {x1:g}, {y1:g})"
    if not all(math.isfinite(v) for v in (x0, y0, x1, y1)):
        raise ValueError(f"{text} has a non-finite coordinate")
    if x1 <= x0 or y1 <= y0:
        raise ValueError(f"{text} has zero or negative width or height")
    if x0 < -tolerance or y0 < -tolerance or x1 > width + tolerance or y1 > height + tolerance:
        raise ValueError(f"{text} lies outside the {width}x{height} image by more than {tolerance:g} px")
    x0, x1 = min(max(x0, 0.0), width), min(max(x1, 0.0), width)
    y0, y1 = min(max(y0, 0.0), height), min(max(y1, 0.0), height)
    if x1 <= x0 or y1 <= y0:
        raise ValueError(f"{text} has no area inside the {width}x{height} image")
    return x0, y0, x1, y1


@dataclass(frozen=True)
class DetectionRecord:
    """One image's validated training targets: boxes xyxy in pixels of the file as decoded, labels 1..K."""

    image_id: int | str
    path: Path
    width: int
    height: int
    boxes: np.ndarray
    labels: np.ndarray
    extra: dict[str, np.ndarray] = field(default_factory=dict)  # more per-box fields, e.g. VOC "difficult"


class DetectionDataset(Dataset):
    """Validated records → `(image CHW float tensor, target)`; `None` for a sample skipped while loading.

    The target holds `boxes` (float [N, 4], xyxy pixels of the transformed image), `labels` (int64 [N], 1..K,
    0 is the SSD background), the per-box extras, `image_id` and `orig_size` ((height, width) of the file).
    """

    def __init__(
        self,
        records: list[DetectionRecord],
        class_names: Sequence[str],
        transform: DetectionTransformFn | None,
        skip: SkipCounter | None,
        source: str | PathLike[str],
    ):
        if not records:
            raise DatasetError(
                source,
                "contains no usable images",
                "Check that the annotations list images and that the image folder holds them",
            )
        self.records = records
        self.class_names = list(class_names)
        self.transform = transform
        self.skip = skip

    def __len__(self) -> int:
        return len(self.records)

    def files(self) -> tuple[list[Path], list[Path]]:
        """(image files, mask files) the samples read, for `datasets.errors.check_files`."""
        return [record.path for record in self.records], []

    def __getitem__(self, index: int) -> DetectionSample | None:
        record = self.records[index]
        try:
            image = read_image(record.path)
            if image.shape[:2] != (record.height, record.width):
                raise DatasetError(
                    record.path,
                    f"decoded image is {image.shape[1]}x{image.shape[0]} but the annotations say "
                    f"{record.width}x{record.height}",
                    "Fix the size in the annotations or the image file (an EXIF rotation the annotations do not "
                    "follow also does this)",
                    kind="size mismatch",
                )
        except DatasetError as error:
            handle(error, self.skip)
            return None
        target = {"boxes": record.boxes, "labels": record.labels, **record.extra}
        tensor, target = (self.transform or to_tensors)(image, target)
        target["image_id"] = record.image_id
        target["orig_size"] = torch.tensor([record.height, record.width])
        return tensor, target
