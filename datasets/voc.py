"""PASCAL VOC detection from a VOCdevkit year folder (Annotations/*.xml, JPEGImages/, ImageSets/Main/).

VOC pixel coordinates are 1-based and inclusive; boxes here are 0-based continuous xyxy ([xmin-1, xmax)), like
COCO's. `difficult` objects are kept with a `difficult` flag for VOC evaluation (which ignores them) unless
`keep_difficult=False`, the usual choice for training.
"""

from __future__ import annotations

import xml.etree.ElementTree as ET
from os import PathLike
from pathlib import Path
from typing import Sequence

import numpy as np
from torch.utils.data import ConcatDataset

from common.errors import DatasetError
from common.labels import VOC_CLASSES
from datasets.coco import image_files, image_path
from datasets.detection import DetectionDataset, DetectionRecord, DetectionTransformFn, clip_box
from datasets.errors import SkipCounter, handle

VOC0712_TRAINVAL: tuple[tuple[str, str], ...] = (("2007", "trainval"), ("2012", "trainval"))


def read_split(root: Path, subdir: str, split: str) -> list[str]:
    """Image ids listed in `root/ImageSets/<subdir>/<split>.txt`, or an error naming what was expected."""
    if not root.is_dir():
        raise DatasetError(
            root,
            "VOC folder does not exist",
            "Pass a VOCdevkit year folder such as VOCdevkit/VOC2007 (it holds Annotations/, "
            "JPEGImages/ and ImageSets/)",
        )
    list_file = root / "ImageSets" / subdir / f"{split}.txt"
    if not list_file.is_file():
        raise DatasetError(
            list_file,
            "split list not found",
            f"Pass a VOCdevkit year folder (such as VOCdevkit/VOC2012) and a split that has a list "
            f"in ImageSets/{subdir}/",
        )
    ids = [line.split()[0] for line in list_file.read_text().splitlines() if line.strip()]
    if not ids:
        raise DatasetError(list_file, "lists no images", "Fill the split list or pick another split")
    return ids


class VOCDetection(DetectionDataset):
    """Detection samples of one VOC year and split (see `DetectionDataset` for the sample), `image_id` = VOC id.

    `classes` defaults to the 20 VOC classes; pass your own names for a custom VOC-format dataset (such as the
    synthetic one). An unknown class name or a bad box raises naming the XML file; with `skip` the image is
    dropped and counted instead.
    """

    def __init__(
        self,
        root: str | PathLike[str],
        split: str = "trainval",
        transform: DetectionTransformFn | None = None,
        *,
        classes: Sequence[str] = VOC_CLASSES,
        keep_difficult: bool = True,
        skip: SkipCounter | None = None,
    ):
        self.root = Path(root)
        self.class_to_label = {name: label for label, name in enumerate(classes, start=1)}
        self.keep_difficult = keep_difficult
        ids = read_split(self.root, "Main", split)
        listing = image_files(self.root / "JPEGImages")
        records = []
        for image_id in ids:
            try:
                records.append(self._record(image_id, listing))
            except DatasetError as error:
                handle(error, skip)
        super().__init__(
            records, ["background", *classes], transform, skip, self.root / "ImageSets" / "Main" / f"{split}.txt"
        )

    def _record(self, image_id: str, listing: set[str]) -> DetectionRecord:
        xml_path = self.root / "Annotations" / f"{image_id}.xml"
        try:
            tree = ET.parse(xml_path).getroot()
            width = int(tree.findtext("size/width"))  # type: ignore[arg-type]
            height = int(tree.findtext("size/height"))  # type: ignore[arg-type]
        except FileNotFoundError:
            raise DatasetError(xml_path, "annotation file not found", kind="bad annotation") from None
        except (ET.ParseError, TypeError, ValueError) as exc:
            raise DatasetError(
                xml_path, f"is not a VOC annotation with <size><width>/<height> ({exc})", kind="bad annotation"
            ) from None
        file_name = tree.findtext("filename") or f"{image_id}.jpg"
        path = image_path(self.root / "JPEGImages", file_name, listing, xml_path, image_id)
        boxes, labels, difficult = [], [], []
        for index, obj in enumerate(tree.iter("object")):
            name = (obj.findtext("name") or "").strip()
            if name not in self.class_to_label:
                raise DatasetError(
                    xml_path,
                    f"object {index} has unknown class {name!r}",
                    f"Known classes: {', '.join(self.class_to_label)}; pass classes=... for a "
                    "custom VOC-format dataset",
                    kind="unknown category",
                )
            is_difficult = (obj.findtext("difficult") or "0").strip() == "1"
            if is_difficult and not self.keep_difficult:
                continue
            try:
                x0, y0, x1, y1 = (float(obj.findtext(f"bndbox/{k}")) for k in ("xmin", "ymin", "xmax", "ymax"))
                boxes.append(clip_box(x0 - 1, y0 - 1, x1, y1, width, height))
            except (TypeError, ValueError) as exc:
                problem = str(exc) if isinstance(exc, ValueError) else "has no complete <bndbox>"
                raise DatasetError(
                    xml_path,
                    f"object {index} ({name}): {problem}",
                    "Fix or remove the object, or train with --skip-bad-samples to drop the image",
                    kind="bad box",
                ) from None
            labels.append(self.class_to_label[name])
            difficult.append(is_difficult)
        return DetectionRecord(
            image_id,
            path,
            width,
            height,
            np.asarray(boxes, np.float32).reshape(-1, 4),
            np.asarray(labels, np.int64),
            {"difficult": np.asarray(difficult, bool)},
        )


def voc_detection_union(
    devkit: str | PathLike[str],
    parts: Sequence[tuple[str, str]] = VOC0712_TRAINVAL,
    transform: DetectionTransformFn | None = None,
    **kwargs,
) -> ConcatDataset:
    """Several VOC years/splits as one dataset; the default is the usual "07+12" trainval (16,551 images).

    `devkit` is the VOCdevkit folder holding VOC2007/ and VOC2012/; `kwargs` go to every `VOCDetection`.
    """
    return ConcatDataset(
        [VOCDetection(Path(devkit) / f"VOC{year}", split, transform, **kwargs) for year, split in parts]
    )
