"""COCO-format detection through pycocotools, for COCO itself and any custom dataset in the same format.

Labels are contiguous 1..K in the order of the sorted category ids (0 is the SSD background); `label_to_cat`
takes predictions back to the file's category ids. `label_space="category_id"` uses the category ids themselves
as labels instead (91 classes for COCO, with "N/A" for unused ids), the convention of the TF Object Detection API
and torchvision detection weights. Crowd (`iscrowd=1`) regions are not training targets: they
are left out of `boxes`, and COCOeval on `dataset.coco` ignores detections that fall on them, as the COCO
protocol says. Images without annotations stay (they count for evaluation) unless `drop_empty=True`.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
from os import PathLike
from pathlib import Path
from typing import Any, Literal, Sequence

import numpy as np
import torch
from pycocotools.coco import COCO

from common.errors import DatasetError
from datasets.detection import DetectionDataset, DetectionRecord, DetectionTransformFn, clip_box
from datasets.errors import SkipCounter, handle


def load_coco(ann_file: str | PathLike[str]) -> COCO:
    """Load an instances JSON with pycocotools (quietly), or raise naming the file and the problem."""
    ann_file = Path(ann_file)
    if not ann_file.is_file():
        raise DatasetError(
            ann_file,
            "annotation file not found",
            "Pass the instances_*.json of the split (e.g. annotations/instances_val2017.json)",
        )
    try:
        with contextlib.redirect_stdout(io.StringIO()):
            coco = COCO(str(ann_file))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise DatasetError(ann_file, f"is not valid JSON ({exc})") from None
    except (KeyError, TypeError, AssertionError) as exc:
        raise DatasetError(
            ann_file,
            f"is not a COCO instances file (missing or malformed {exc})",
            "It needs 'images', 'annotations' and 'categories' lists",
        ) from None
    if "categories" not in coco.dataset or not coco.dataset["categories"]:
        raise DatasetError(ann_file, "has no 'categories'", "List the classes as {'id': ..., 'name': ...}")
    if len(coco.imgs) < len(coco.dataset.get("images", [])):  # pycocotools keeps the last image of an id
        seen: dict[Any, list[str]] = {}
        for image in coco.dataset["images"]:
            seen.setdefault(image.get("id"), []).append(str(image.get("file_name")))
        image_id, names = next((i, n) for i, n in seen.items() if len(n) > 1)
        raise DatasetError(
            ann_file,
            f"image id {image_id} is given to {len(names)} images ({', '.join(names[:3])})",
            "Give every image its own id",
        )
    return coco


def image_files(image_dir: Path) -> set[str]:
    """Names in `image_dir`: one listing instead of a stat per image (COCO train has 118k)."""
    if not image_dir.is_dir():
        raise DatasetError(
            image_dir,
            "image folder does not exist",
            "Pass the folder holding the images the annotation file lists (e.g. coco/val2017)",
        )
    return set(os.listdir(image_dir))


def image_path(image_dir: Path, file_name: str, listing: set[str], ann_file: Path, image_id: int | str) -> Path:
    """The image's path, or a "missing image" DatasetError naming it and the annotation file that lists it."""
    path = image_dir / file_name
    if (file_name in listing) if "/" not in file_name else path.is_file():
        return path
    raise DatasetError(
        path,
        f"image file not found (listed as image id {image_id} in {ann_file})",
        "Check the image folder or remove the image from the annotations",
        kind="missing image",
    )


class CocoDetection(DetectionDataset):
    """Detection samples from a COCO instances JSON and its image folder (see `DetectionDataset` for the sample).

    Bad annotations (unknown category id, zero/negative or out-of-bounds box) raise a DatasetError naming the JSON
    and the annotation id; with `skip` the image is dropped and counted instead.
    """

    def __init__(
        self,
        image_dir: str | PathLike[str],
        ann_file: str | PathLike[str],
        transform: DetectionTransformFn | None = None,
        *,
        drop_empty: bool = False,
        label_space: Literal["contiguous", "category_id"] = "contiguous",
        skip: SkipCounter | None = None,
    ):
        self.image_dir, self.ann_file = Path(image_dir), Path(ann_file)
        self.coco = load_coco(self.ann_file)
        cats = sorted(self.coco.dataset["categories"], key=lambda c: c["id"])
        if label_space == "contiguous":
            self.label_to_cat = {label: c["id"] for label, c in enumerate(cats, start=1)}
            class_names = ["background", *(c["name"] for c in cats)]
        elif label_space == "category_id":
            if cats[0]["id"] < 1:
                raise DatasetError(
                    self.ann_file,
                    f"category id {cats[0]['id']} cannot be a label: 0 is background",
                    'Use label_space="contiguous"',
                )
            self.label_to_cat = {c["id"]: c["id"] for c in cats}
            names = {c["id"]: c["name"] for c in cats}
            class_names = ["background", *(names.get(i, "N/A") for i in range(1, cats[-1]["id"] + 1))]
        else:
            raise ValueError(f'label_space must be "contiguous" or "category_id", got {label_space!r}')
        self.cat_to_label = {cat: label for label, cat in self.label_to_cat.items()}
        listing = image_files(self.image_dir)
        records = []
        for image_id in sorted(self.coco.imgs):
            try:
                record = self._record(image_id, listing)
            except DatasetError as error:
                handle(error, skip)
                continue
            if len(record.boxes) or not drop_empty:
                records.append(record)
        if not records and self.coco.imgs and not self.coco.dataset.get("annotations"):
            raise DatasetError(
                self.ann_file,
                f"contains no usable images: its {len(self.coco.imgs)} images have no "
                "annotations, and training uses only images with objects",
                "Add the boxes to 'annotations', or check that this is the right file",
            )
        super().__init__(records, class_names, transform, skip, self.ann_file)

    @property
    def ids(self) -> list[int]:
        """COCO image ids in sample order (the `imgIds` for COCOeval)."""
        return [int(r.image_id) for r in self.records]

    def _record(self, image_id: int, listing: set[str]) -> DetectionRecord:
        info = self.coco.imgs[image_id]
        if "width" not in info or "height" not in info:
            raise DatasetError(
                self.ann_file,
                f"image id {image_id} has no width/height",
                "Add the image size to its 'images' entry",
                kind="bad annotation",
            )
        width, height = int(info["width"]), int(info["height"])
        path = image_path(self.image_dir, info["file_name"], listing, self.ann_file, image_id)
        boxes, labels = [], []
        for ann in self.coco.imgToAnns.get(image_id, []):
            where = f"annotation id {ann.get('id')} (image id {image_id}, {info['file_name']})"
            if ann.get("category_id") not in self.cat_to_label:
                raise DatasetError(
                    self.ann_file,
                    f"{where} has unknown category id {ann.get('category_id')}",
                    f"Known ids: {sorted(self.cat_to_label)}; fix the annotation or add the category",
                    kind="unknown category",
                )
            if ann.get("iscrowd", 0):
                continue
            try:
                x, y, w, h = (float(v) for v in ann["bbox"])
                boxes.append(clip_box(x, y, x + w, y + h, width, height))
            except (KeyError, TypeError, ValueError) as exc:
                problem = str(exc) if isinstance(exc, ValueError) else "has no valid 'bbox' [x, y, w, h]"
                raise DatasetError(
                    self.ann_file,
                    f"{where}: {problem}",
                    "Fix or remove the annotation, or train with --skip-bad-samples to drop the image",
                    kind="bad box",
                ) from None
            labels.append(self.cat_to_label[ann["category_id"]])
        return DetectionRecord(
            image_id, path, width, height, np.asarray(boxes, np.float32).reshape(-1, 4), np.asarray(labels, np.int64)
        )

    def to_coco_results(
        self, image_id: int, boxes: torch.Tensor | np.ndarray, scores: Sequence[float], labels: Sequence[int]
    ) -> list[dict]:
        """Detections (xyxy in original-image pixels, contiguous labels) as COCO result dicts with COCO ids."""
        out = []
        for (x0, y0, x1, y1), score, label in zip(np.asarray(boxes, np.float64).tolist(), scores, labels, strict=True):
            if int(label) not in self.label_to_cat:  # e.g. an unused "N/A" id of a 91-class COCO model
                continue
            out.append(
                {
                    "image_id": int(image_id),
                    "category_id": self.label_to_cat[int(label)],
                    "bbox": [x0, y0, x1 - x0, y1 - y0],
                    "score": float(score),
                }
            )
        return out
