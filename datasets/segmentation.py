"""Semantic segmentation data: VOC palette PNGs, SBD .mat files, the "trainaug" union, and COCO converted to VOC.

Masks hold class indices 0..K-1 (0 = background, as in VOC) and 255 = ignore (VOC's object borders, padding).
A mask whose size differs from its image, or that holds any other value, raises a DatasetError naming the file
(with a `SkipCounter`: the sample is skipped and counted) rather than training on a wrong label.
"""

from __future__ import annotations

import hashlib
import os
import warnings
from dataclasses import dataclass
from os import PathLike
from pathlib import Path
from typing import Callable, Mapping, Sequence

import numpy as np
import scipy.io
import torch
from PIL import Image, UnidentifiedImageError
from torch.utils.data import Dataset
from tqdm import tqdm

from common.errors import DatasetError
from common.files import atomic_path
from common.images import read_image
from common.labels import IGNORE_INDEX, canonical_class_name
from datasets.coco import image_files, image_path, load_coco
from datasets.errors import SkipCounter, handle
from datasets.transforms import image_to_tensor
from datasets.voc import VOC_CLASSES, read_split

VOC_SEG_CLASSES: tuple[str, ...] = ("background", *VOC_CLASSES)

# COCO 2017 category names → VOC label (1..20); every other COCO category is background, as in VOC itself.
COCO_TO_VOC: dict[str, int] = {canonical_class_name(voc): label for label, voc in enumerate(VOC_SEG_CLASSES) if label}

SegmentationTransformFn = Callable[[np.ndarray, np.ndarray], tuple[torch.Tensor, torch.Tensor]]


def voc_palette() -> list[int]:
    """The standard VOC colour map (bit-interleaved class index), 256 RGB triples flattened for `putpalette`."""
    palette = []
    for index in range(256):
        r = g = b = 0
        c = index
        for shift in range(7, -1, -1):
            r |= (c & 1) << shift
            g |= ((c >> 1) & 1) << shift
            b |= ((c >> 2) & 1) << shift
            c >>= 3
        palette += [r, g, b]
    return palette


_PALETTE = voc_palette()


def write_label_png(path: str | PathLike[str], mask: np.ndarray) -> None:
    """Write a class-index mask as a PNG with the VOC palette (viewers show VOC colours, readers get indices)."""
    image = Image.fromarray(np.ascontiguousarray(mask, dtype=np.uint8), mode="P")
    image.putpalette(_PALETTE)
    image.save(path, format="PNG")


def read_label_mask(path: str | PathLike[str]) -> np.ndarray:
    """Class-index mask (HxW uint8) from a palette/grayscale PNG or an SBD `.mat` (`GTcls.Segmentation`)."""
    path = Path(path)
    if path.suffix == ".mat":
        try:
            mask = scipy.io.loadmat(path, squeeze_me=True, struct_as_record=False)["GTcls"].Segmentation
        except FileNotFoundError:
            raise DatasetError(path, "mask file not found", kind="bad mask") from None
        except (ValueError, OSError, KeyError, AttributeError, TypeError) as exc:
            raise DatasetError(
                path, f"is not an SBD cls .mat with GTcls.Segmentation ({exc!r})", kind="bad mask"
            ) from None
        return np.asarray(mask, dtype=np.uint8)
    try:
        with Image.open(path) as image:
            if image.mode not in ("P", "L"):
                raise DatasetError(
                    path,
                    f"mask has mode {image.mode}; expected a palette (P) or grayscale (L) PNG of class indices",
                    "Convert coloured masks to indices through the palette",
                    kind="bad mask",
                )
            return np.array(image)
    except FileNotFoundError:
        raise DatasetError(path, "mask file not found", kind="bad mask") from None
    except (UnidentifiedImageError, OSError, SyntaxError) as exc:
        raise DatasetError(path, f"cannot decode mask ({exc})", kind="bad mask") from None


def check_label_mask(mask: np.ndarray, num_classes: int, path: str | PathLike[str]) -> None:
    """Raise if `mask` holds a value that is neither a class index 0..num_classes-1 nor 255 (ignore)."""
    present = np.flatnonzero(np.bincount(mask.ravel(), minlength=256))
    bad = [int(v) for v in present if num_classes <= v != IGNORE_INDEX]
    if bad:
        raise DatasetError(
            path,
            f"mask holds values {bad[:10]} that are neither a class index "
            f"0..{num_classes - 1} nor {IGNORE_INDEX} (ignore)",
            "Check num_classes, or map the mask's values to class indices",
            kind="bad mask",
        )


@dataclass(frozen=True)
class SegSample:
    """One image and its class-index mask (.png or SBD .mat)."""

    id: str
    image: Path
    mask: Path


class SegmentationDataset(Dataset):
    """`(image CHW float tensor, mask int64 HxW)` samples, validated on load; `None` for a skipped sample."""

    def __init__(
        self,
        samples: Sequence[SegSample],
        num_classes: int = len(VOC_SEG_CLASSES),
        transform: SegmentationTransformFn | None = None,
        *,
        skip: SkipCounter | None = None,
        source: str | PathLike[str] = "segmentation dataset",
    ):
        kept = []
        for sample in samples:
            try:
                if not sample.image.is_file():
                    raise DatasetError(
                        sample.image, f"image file not found (paired with {sample.mask})", kind="missing image"
                    )
                if not sample.mask.is_file():
                    raise DatasetError(
                        sample.mask, f"mask file not found (paired with {sample.image})", kind="bad mask"
                    )
            except DatasetError as error:
                handle(error, skip)
                continue
            kept.append(sample)
        if not kept:
            raise DatasetError(source, "contains no usable image/mask pairs", "Check the root folder and the split")
        self.samples = kept
        self.num_classes = num_classes
        self.transform = transform
        self.skip = skip

    def __len__(self) -> int:
        return len(self.samples)

    def files(self) -> tuple[list[Path], list[Path]]:
        """(image files, mask files) the samples read, for `datasets.errors.check_files`."""
        return [sample.image for sample in self.samples], [sample.mask for sample in self.samples]

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor] | None:
        sample = self.samples[index]
        try:
            image, mask = read_image(sample.image), read_label_mask(sample.mask)
            if mask.shape != image.shape[:2]:
                raise DatasetError(
                    sample.mask,
                    f"mask is {mask.shape[1]}x{mask.shape[0]} but its image "
                    f"{sample.image.name} is {image.shape[1]}x{image.shape[0]}",
                    "Masks must have their image's size",
                    kind="size mismatch",
                )
            check_label_mask(mask, self.num_classes, sample.mask)
        except DatasetError as error:
            handle(error, self.skip)
            return None
        if self.transform is None:
            return image_to_tensor(image), torch.from_numpy(mask.astype(np.int64))
        return self.transform(image, mask)


def _stems(folder: Path) -> dict[str, Path]:
    """Image files in `folder` by stem, preferring .jpg (VOC) when several extensions share a stem."""
    found: dict[str, Path] = {}
    for name in sorted(os.listdir(folder), key=lambda n: not n.lower().endswith(".jpg")):
        found.setdefault(Path(name).stem, folder / name)
    return found


def voc_segmentation_samples(root: str | PathLike[str], split: str | None = "train") -> list[SegSample]:
    """Pairs from a VOC year folder: ImageSets/Segmentation/<split>.txt, or every SegmentationClass PNG if
    `split` is None (for trees without split lists)."""
    root = Path(root)
    masks = root / "SegmentationClass"
    if not masks.is_dir() or not (root / "JPEGImages").is_dir():
        raise DatasetError(
            root,
            "is not a VOC folder with JPEGImages/ and SegmentationClass/",
            "Pass a VOCdevkit year folder such as VOCdevkit/VOC2012",
        )
    ids = sorted(p.stem for p in masks.glob("*.png")) if split is None else read_split(root, "Segmentation", split)
    images = _stems(root / "JPEGImages")
    return [SegSample(i, images.get(i, root / "JPEGImages" / f"{i}.jpg"), masks / f"{i}.png") for i in ids]


def sbd_samples(sbd_root: str | PathLike[str], split: str = "train") -> list[SegSample]:
    """Pairs from SBD (`benchmark_RELEASE/dataset`: img/*.jpg, cls/*.mat, train.txt, val.txt)."""
    sbd_root = Path(sbd_root)
    list_file = sbd_root / f"{split}.txt"
    if not list_file.is_file():
        raise DatasetError(
            list_file,
            "SBD split list not found",
            "Pass the SBD folder benchmark_RELEASE/dataset (it holds img/, cls/, train.txt, val.txt)",
        )
    ids = list_file.read_text().split()
    return [SegSample(i, sbd_root / "img" / f"{i}.jpg", sbd_root / "cls" / f"{i}.mat") for i in ids]


def trainaug_samples(voc2012_root: str | PathLike[str], sbd_root: str | PathLike[str]) -> list[SegSample]:
    """The "trainaug" set: (SBD train ∪ SBD val ∪ VOC12 seg train) − VOC12 seg val (10,582 images on real data).

    Images come from VOC2012/JPEGImages; the mask is VOC's own PNG where one exists (it has the 255 borders),
    else SBD's .mat.
    """
    voc = Path(voc2012_root)
    voc_train = {s.id: s for s in voc_segmentation_samples(voc, "train")}
    voc_val = set(read_split(voc, "Segmentation", "val"))
    sbd = {s.id: s for split in ("train", "val") for s in sbd_samples(sbd_root, split)}
    images = _stems(voc / "JPEGImages")
    samples = []
    for image_id in sorted((set(sbd) | set(voc_train)) - voc_val):
        if image_id in voc_train:
            samples.append(voc_train[image_id])
        else:
            samples.append(SegSample(image_id, images.get(image_id, sbd[image_id].image), sbd[image_id].mask))
    return samples


def coco_voc_segmentation_samples(
    image_dir: str | PathLike[str],
    ann_file: str | PathLike[str],
    cache_dir: str | PathLike[str],
    *,
    class_map: Mapping[str, int] = COCO_TO_VOC,
    min_area: float = 1000.0,
    skip: SkipCounter | None = None,
    progress: bool = True,
) -> list[SegSample]:
    """COCO instance masks rasterised (pycocotools) to VOC class-index PNGs, cached under `cache_dir`.

    Only images whose `class_map` objects cover at least `min_area` pixels are kept (the torchvision reference
    rule). Larger objects are painted first so small ones stay visible; crowd regions of mapped classes become 255.
    The first call writes the masks; later calls reuse them. The cache folder is keyed by the annotation file
    (path, size, mtime) and the class map, so changing either builds a fresh one.
    """
    image_dir, ann_file = Path(image_dir), Path(ann_file)
    coco = load_coco(ann_file)
    labels = {c["id"]: class_map.get(c["name"], 0) for c in coco.dataset["categories"]}
    stat = ann_file.stat()
    key = f"{ann_file.resolve()}|{stat.st_size}|{stat.st_mtime_ns}|{sorted(class_map.items())}"
    cache = Path(cache_dir) / f"coco_voc_{hashlib.sha1(key.encode()).hexdigest()[:16]}"
    cache.mkdir(parents=True, exist_ok=True)
    listing = image_files(image_dir)
    samples, to_build = [], []
    for image_id in sorted(coco.imgs):
        info = coco.imgs[image_id]
        try:
            path = image_path(image_dir, info["file_name"], listing, ann_file, image_id)
            anns = _mapped_annotations(coco, image_id, labels, ann_file)
        except DatasetError as error:
            handle(error, skip)
            continue
        if sum(a.get("area", 0) for a in anns if not a.get("iscrowd", 0)) < min_area:
            continue
        sample = SegSample(Path(info["file_name"]).stem, path, cache / f"{Path(info['file_name']).stem}.png")
        samples.append(sample)
        if not sample.mask.is_file():
            to_build.append((sample, info, anns))
    for sample, info, anns in tqdm(to_build, desc="COCO→VOC masks", disable=not progress or not to_build):
        with atomic_path(sample.mask) as tmp:  # a run stopped midway never leaves a half-written mask behind
            write_label_png(tmp, _rasterise(coco, info, anns, labels))
    return samples


def _mapped_annotations(coco, image_id: int, labels: dict[int, int], ann_file: Path) -> list[dict]:
    anns = []
    for ann in coco.imgToAnns.get(image_id, []):
        if ann.get("category_id") not in labels:
            raise DatasetError(
                ann_file,
                f"annotation id {ann.get('id')} (image id {image_id}) has unknown category id {ann.get('category_id')}",
                kind="unknown category",
            )
        if labels[ann["category_id"]] == 0:
            continue
        if not ann.get("segmentation"):
            raise DatasetError(
                ann_file,
                f"annotation id {ann.get('id')} (image id {image_id}) has no 'segmentation'",
                "Masks need instance polygons or RLE",
                kind="bad annotation",
            )
        anns.append(ann)
    return anns


def _rasterise(coco, info: dict, anns: list[dict], labels: dict[int, int]) -> np.ndarray:
    mask = np.zeros((info["height"], info["width"]), np.uint8)
    crowd = [a for a in anns if a.get("iscrowd", 0)]
    objects = sorted((a for a in anns if not a.get("iscrowd", 0)), key=lambda a: -a.get("area", 0))
    with warnings.catch_warnings():  # pycocotools 2.0.x trips NumPy 2's __array__(copy=...) deprecation
        warnings.simplefilter("ignore", DeprecationWarning)
        for ann in crowd + objects:
            mask[coco.annToMask(ann) > 0] = IGNORE_INDEX if ann.get("iscrowd", 0) else labels[ann["category_id"]]
    return mask
