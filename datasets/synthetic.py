"""Embedded synthetic dataset: scenes of coloured shapes written as real COCO and VOC files.

    python -m datasets.synthetic --out data/synthetic [--num-train 800 --num-val 200 --seed 0 --size 320]

Each image shows 1-6 objects of five classes (circle, square, triangle, star, ring) with texture, size, rotation
and mild stretch, overlapping (every object keeps at least half of itself visible), on a low-contrast textured
background with clutter: lines, arcs, dots and irregular blobs that belong to no class. Each class takes its colour
from its own hue band, while background and clutter take any colour: colour says which class an object would be,
only shape says whether a region is an object at all. (Format 1 gave objects any colour, so only shape told the
class; no head learnt that from scratch in CPU minutes, see docs/training.md.) The same objects go out twice:

    DIR/coco/{train,val}/*.jpg, DIR/coco/annotations/instances_{train,val}.json  (boxes + RLE masks)
    DIR/voc/JPEGImages/*.jpg, Annotations/*.xml, SegmentationClass/*.png (VOC palette, 255 on object borders),
    DIR/voc/ImageSets/{Main,Segmentation}/{train,val,trainval}.txt, DIR/synthetic.json (the parameters)

Image i of a given seed is always the same picture: each image draws from its own generator seeded by
(seed, image id). The tree is built in a temporary sibling folder and renamed into place, so it is never
half-written.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import multiprocessing
import os
import shutil
import sys
import time
from dataclasses import dataclass
from os import PathLike
from pathlib import Path
from xml.sax.saxutils import escape

import cv2
import numpy as np
from pycocotools import mask as mask_utils
from tqdm import tqdm

from common.labels import IGNORE_INDEX
from datasets.coco import CocoDetection
from datasets.detection import DetectionTransformFn
from datasets.segmentation import (
    SegmentationDataset,
    SegmentationTransformFn,
    voc_segmentation_samples,
    write_label_png,
)

SYNTHETIC_CLASSES: tuple[str, ...] = ("circle", "square", "triangle", "star", "ring")
SPLITS = ("train", "val")
FORMAT_VERSION = 2
OBJECT_RADIUS = (0.1, 0.3)  # of the image side, log-uniform: even the smallest spans a few stride-16 cells
HUE_JITTER = 6  # OpenCV hue units (0..180) either side of a class's band centre; bands lie 36 apart


@dataclass(frozen=True)
class SyntheticPaths:
    """Where `generate` put things."""

    root: Path

    def coco_images(self, split: str) -> Path:
        return self.root / "coco" / split

    def coco_annotations(self, split: str) -> Path:
        return self.root / "coco" / "annotations" / f"instances_{split}.json"

    @property
    def voc_root(self) -> Path:
        return self.root / "voc"


def synthetic_detection(
    root: str | PathLike[str], split: str = "train", transform: DetectionTransformFn | None = None, **kwargs
) -> CocoDetection:
    """The synthetic dataset's COCO side as a detection dataset (labels 1..5 in `SYNTHETIC_CLASSES` order)."""
    paths = SyntheticPaths(Path(root))
    return CocoDetection(paths.coco_images(split), paths.coco_annotations(split), transform, **kwargs)


def synthetic_segmentation(
    root: str | PathLike[str], split: str = "train", transform: SegmentationTransformFn | None = None, **kwargs
) -> SegmentationDataset:
    """The synthetic dataset's VOC side as a segmentation dataset (0 = background, 1..5 the shapes, 255 ignore)."""
    voc = SyntheticPaths(Path(root)).voc_root
    return SegmentationDataset(
        voc_segmentation_samples(voc, split), len(SYNTHETIC_CLASSES) + 1, transform, source=voc, **kwargs
    )


# ---------------------------------------------------------------------------------------------- drawing a scene


def _colour(rng: np.random.Generator) -> np.ndarray:
    hsv = np.uint8([[[rng.integers(0, 180), rng.integers(60, 256), rng.integers(60, 256)]]])
    return cv2.cvtColor(hsv, cv2.COLOR_HSV2RGB)[0, 0].astype(np.float32)


def _class_colour(rng: np.random.Generator, label: int) -> np.ndarray:
    """A colour from class `label`'s hue band, saturated and bright enough that its hue reads clearly."""
    hue = ((label - 1) * 180 // len(SYNTHETIC_CLASSES) + rng.integers(-HUE_JITTER, HUE_JITTER + 1)) % 180
    hsv = np.uint8([[[hue, rng.integers(120, 256), rng.integers(100, 256)]]])
    return cv2.cvtColor(hsv, cv2.COLOR_HSV2RGB)[0, 0].astype(np.float32)


def _texture(
    rng: np.random.Generator, shape: tuple[int, int], scale: int, first: np.ndarray, second: np.ndarray
) -> np.ndarray:
    """An HxWx3 float32 image mixing two colours: flat, gradient, stripes, checks or smooth noise.

    `scale` is the scene size, so patterns look alike whatever the region's shape."""
    height, width = shape
    kind = rng.integers(5)
    if kind == 0:
        return np.broadcast_to(first, (height, width, 3))
    if kind in (1, 2):
        angle = rng.uniform(0, math.pi)
        period = rng.uniform(0.6, 2.0) * scale if kind == 1 else rng.uniform(6, 24) * scale / 320
        phase = np.float32(2 * math.pi / period)
        ramp = (
            np.float32(np.cos(angle)) * phase * np.arange(width, dtype=np.float32)[None, :]
            + np.float32(np.sin(angle)) * phase * np.arange(height, dtype=np.float32)[:, None]
        )
        weight = 0.5 + 0.5 * np.sin(ramp + np.float32(rng.uniform(0, 6.3)))
    elif kind == 3:
        cell = max(2, int(rng.uniform(8, 40) * scale / 320))
        weight = ((np.arange(height)[:, None] // cell + np.arange(width)[None, :] // cell) % 2).astype(np.float32)
    else:
        grid = rng.random((int(rng.integers(3, 9)),) * 2, dtype=np.float32)
        weight = cv2.resize(grid, (width, height), interpolation=cv2.INTER_CUBIC).clip(0, 1)
    # first + weight * (second - first) per channel, as one OpenCV pass (5x faster than numpy broadcasting)
    return cv2.transform(np.ascontiguousarray(weight, np.float32)[:, :, None], np.stack([second - first, first], 1))


def _polygon(rng: np.random.Generator, kind: str, centre: np.ndarray, radius: float) -> np.ndarray:
    angle = rng.uniform(0, 2 * math.pi)
    if kind == "square":
        corners, radii = 4, [radius] * 4
    elif kind == "triangle":
        corners, radii = 3, [radius] * 3
    elif kind == "star":
        corners, radii = 10, [radius, radius * rng.uniform(0.38, 0.5)] * 5
    else:  # a clutter blob: many vertices, jittered radius, so it resembles no class
        corners = int(rng.integers(7, 13))
        radii = list(radius * rng.uniform(0.5, 1.0, corners))
    theta = angle + 2 * math.pi * np.arange(corners) / corners
    points = np.stack([np.cos(theta) * radii, np.sin(theta) * radii], axis=1)
    if kind != "blob":
        points = points * rng.uniform(0.8, 1.25, 2)  # mild stretch; circles and rings stay round
    return np.round(centre + points).astype(np.int32)


def _shape_mask(rng: np.random.Generator, kind: str, size: int, centre: np.ndarray, radius: float) -> np.ndarray:
    """A size x size uint8 mask, 1 inside the shape."""
    mask = np.zeros((size, size), np.uint8)
    c = tuple(int(v) for v in np.round(centre))
    if kind in ("circle", "ring"):
        cv2.circle(mask, c, int(round(radius)), 1, -1, cv2.LINE_8)
        if kind == "ring":
            cv2.circle(mask, c, int(round(radius * rng.uniform(0.45, 0.65))), 0, -1, cv2.LINE_8)
    else:
        cv2.fillPoly(mask, [_polygon(rng, kind, centre, radius)], 1)
    return mask


def _background(rng: np.random.Generator, size: int) -> np.ndarray:
    base = _colour(rng)  # with a second colour near the first: a busy but low-contrast ground objects stand out of
    second = np.clip(base + rng.uniform(-60, 60, 3), 0, 255)
    image = np.ascontiguousarray(_texture(rng, (size, size), size, base, second))
    for _ in range(rng.integers(3, 16)):  # lines
        p, q = rng.integers(0, size, 2), rng.integers(0, size, 2)
        cv2.line(image, tuple(map(int, p)), tuple(map(int, q)), _colour(rng).tolist(), int(rng.integers(1, 4)))
    for _ in range(rng.integers(0, 5)):  # arcs: open, thin, so never a ring
        axes = tuple(int(v) for v in rng.integers(size // 20, size // 5, 2))
        start = rng.uniform(0, 360)
        cv2.ellipse(
            image,
            tuple(map(int, rng.integers(0, size, 2))),
            axes,
            rng.uniform(0, 180),
            start,
            start + rng.uniform(40, 200),
            _colour(rng).tolist(),
            int(rng.integers(1, 3)),
        )
    for _ in range(rng.integers(0, 30)):  # dots, far smaller than the smallest object
        cv2.circle(
            image,
            tuple(map(int, rng.integers(0, size, 2))),
            int(rng.integers(1, max(2, size // 100))),
            _colour(rng).tolist(),
            -1,
        )
    for _ in range(rng.integers(0, 3)):  # irregular blobs
        blob = np.zeros((size, size), np.uint8)
        cv2.fillPoly(blob, [_polygon(rng, "blob", rng.uniform(0, size, 2), size * rng.uniform(0.04, 0.12))], 1)
        image[blob.astype(bool)] = _colour(rng)
    return image


def draw_scene(rng: np.random.Generator, size: int) -> tuple[np.ndarray, list[tuple[int, np.ndarray]]]:
    """One RGB uint8 image and its objects as (label 1..5, visible-pixel mask), in drawing order."""
    image = _background(rng, size)
    owner = np.full((size, size), -1, np.int32)  # index of the object each pixel shows, -1 = background
    labels: list[int] = []
    full_area: list[int] = []
    visible: list[int] = []
    for _ in range(rng.integers(1, 7)):
        label = int(rng.integers(1, len(SYNTHETIC_CLASSES) + 1))
        for _ in range(10):  # placements that hide more than half of an earlier object are rejected
            radius = size * math.exp(rng.uniform(*np.log(OBJECT_RADIUS)))
            centre = rng.uniform(radius * 0.5, size - radius * 0.5, 2)
            drawn = _shape_mask(rng, SYNTHETIC_CLASSES[label - 1], size, centre, radius)
            x, y, w, h = cv2.boundingRect(drawn)
            box = (slice(y, y + h), slice(x, x + w))
            mask = drawn[box].astype(bool)
            under = owner[box][mask]
            hidden = np.bincount(under[under >= 0], minlength=len(labels))
            left = np.asarray(visible) - hidden
            if mask.sum() >= 0.2 * math.pi * radius**2 and np.all(left >= 0.5 * np.asarray(full_area)):
                break
        else:
            continue
        region = image[box]
        beneath = region[mask].mean(axis=0)
        for _ in range(20):  # a colour of its class that stands out from what lies beneath
            colour = _class_colour(rng, label)
            if np.linalg.norm(colour - beneath) >= 80:
                break
        shade = np.clip(colour + rng.uniform(-50, 50, 3), 0, 255) if rng.random() < 0.5 else colour  # half are flat
        fill = _texture(rng, (h, w), size, colour, shade)
        region[mask] = fill[mask]
        owner[box][mask] = len(labels)
        visible = [*left.tolist(), int(mask.sum())]
        full_area.append(int(mask.sum()))
        labels.append(label)
    if rng.random() < 0.5:
        image = cv2.GaussianBlur(image, (0, 0), rng.uniform(0.3, 1.0))
    if rng.random() < 0.5:
        image += (rng.random(image.shape, dtype=np.float32) - np.float32(0.5)) * np.float32(rng.uniform(2, 16))
    objects = [(label, owner == index) for index, label in enumerate(labels)]
    return np.clip(image, 0, 255).astype(np.uint8), objects


def semantic_mask(objects: list[tuple[int, np.ndarray]], size: int) -> np.ndarray:
    """Class-index mask with a 255 band on object outlines, as VOC marks its borders."""
    mask = np.zeros((size, size), np.uint8)
    for label, visible in objects:
        mask[visible] = label
    kernel = np.ones((3, 3), np.uint8)
    mask[cv2.dilate(mask, kernel) != cv2.erode(mask, kernel)] = IGNORE_INDEX
    return mask


# ----------------------------------------------------------------------------------------------- writing files


def _voc_xml(stem: str, size: int, boxes: list[tuple[str, list[int], bool]]) -> str:
    objects = "".join(
        f"<object><name>{escape(name)}</name><pose>Unspecified</pose><truncated>{int(truncated)}</truncated>"
        f"<difficult>0</difficult><bndbox><xmin>{x + 1}</xmin><ymin>{y + 1}</ymin><xmax>{x + w}</xmax>"
        f"<ymax>{y + h}</ymax></bndbox></object>\n"
        for name, (x, y, w, h), truncated in boxes
    )
    return (
        f"<annotation><folder>synthetic</folder><filename>{stem}.jpg</filename>\n"
        f"<size><width>{size}</width><height>{size}</height><depth>3</depth></size><segmented>1</segmented>\n"
        f"{objects}</annotation>\n"
    )


def _write_image(job: tuple[Path, str, int, int, int]) -> tuple[dict, list[dict]]:
    """Draw image `image_id` and write its files; return its COCO image entry and annotations (ids unset)."""
    tmp, split, image_id, seed, size = job
    rng = np.random.default_rng([seed, image_id])
    image, objects = draw_scene(rng, size)
    stem = f"{image_id:06d}"
    ok, jpeg = cv2.imencode(
        ".jpg", cv2.cvtColor(image, cv2.COLOR_RGB2BGR), [cv2.IMWRITE_JPEG_QUALITY, int(rng.integers(75, 96))]
    )
    assert ok, "OpenCV could not encode a JPEG"
    for folder in (tmp / "coco" / split, tmp / "voc" / "JPEGImages"):
        (folder / f"{stem}.jpg").write_bytes(jpeg.tobytes())
    write_label_png(tmp / "voc" / "SegmentationClass" / f"{stem}.png", semantic_mask(objects, size))
    anns, boxes = [], []
    for label, visible in objects:
        x, y, w, h = cv2.boundingRect(visible.astype(np.uint8))
        rle = mask_utils.encode(np.asfortranarray(visible.astype(np.uint8)))
        anns.append(
            {
                "image_id": image_id,
                "category_id": label,
                "bbox": [float(x), float(y), float(w), float(h)],
                "area": float(visible.sum()),
                "iscrowd": 0,
                "segmentation": {"size": [size, size], "counts": rle["counts"].decode()},
            }
        )
        boxes.append((SYNTHETIC_CLASSES[label - 1], [x, y, w, h], x == 0 or y == 0 or x + w == size or y + h == size))
    (tmp / "voc" / "Annotations" / f"{stem}.xml").write_text(_voc_xml(stem, size, boxes))
    return {"id": image_id, "file_name": f"{stem}.jpg", "width": size, "height": size}, anns


def generate(
    out: str | PathLike[str],
    num_train: int = 800,
    num_val: int = 200,
    seed: int = 0,
    size: int = 320,
    *,
    overwrite: bool = False,
    workers: int | None = None,
    progress: bool = True,
) -> SyntheticPaths:
    """Write the synthetic dataset to `out` (see the module docstring) and return its paths.

    `workers` processes draw in parallel (default: all CPUs); the files do not depend on it.
    """
    out = Path(out)
    if num_train < 1 or num_val < 1 or size < 64:
        raise ValueError("need num_train >= 1, num_val >= 1 and size >= 64")
    if out.exists() and any(out.iterdir()) and not overwrite:
        raise FileExistsError(f"{out} exists and is not empty: pass overwrite=True (--overwrite) to replace it")
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.parent / f".{out.name}.partial-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    workers = workers or os.cpu_count() or 1
    try:
        for folder in (
            "coco/train",
            "coco/val",
            "coco/annotations",
            "voc/JPEGImages",
            "voc/Annotations",
            "voc/SegmentationClass",
            "voc/ImageSets/Main",
            "voc/ImageSets/Segmentation",
        ):
            (tmp / folder).mkdir(parents=True)
        first_id = {"train": 1, "val": num_train + 1}
        counts = {"train": num_train, "val": num_val}
        categories = [{"id": i, "name": n, "supercategory": "shape"} for i, n in enumerate(SYNTHETIC_CLASSES, 1)]
        stems: dict[str, list[str]] = {}
        with (
            tqdm(total=num_train + num_val, desc="synthetic images", disable=not progress) as bar,
            multiprocessing.Pool(workers) if workers > 1 else contextlib.nullcontext() as pool,
        ):
            for split in SPLITS:
                jobs = [(tmp, split, first_id[split] + i, seed, size) for i in range(counts[split])]
                images, annotations = [], []
                for info, anns in pool.imap(_write_image, jobs, chunksize=8) if pool else map(_write_image, jobs):
                    images.append(info)
                    annotations += anns
                    bar.update()
                for ann_id, ann in enumerate(annotations, start=1):
                    ann["id"] = ann_id
                dataset = {
                    "info": {"description": f"synthetic shapes, seed {seed}", "version": str(FORMAT_VERSION)},
                    "licenses": [],
                    "images": images,
                    "annotations": annotations,
                    "categories": categories,
                }
                (tmp / "coco" / "annotations" / f"instances_{split}.json").write_text(json.dumps(dataset))
                stems[split] = [Path(i["file_name"]).stem for i in images]
        stems["trainval"] = stems["train"] + stems["val"]
        for split, names in stems.items():
            for kind in ("Main", "Segmentation"):
                (tmp / "voc" / "ImageSets" / kind / f"{split}.txt").write_text("\n".join(names) + "\n")
        params = {
            "version": FORMAT_VERSION,
            "classes": list(SYNTHETIC_CLASSES),
            "num_train": num_train,
            "num_val": num_val,
            "seed": seed,
            "size": size,
        }
        (tmp / "synthetic.json").write_text(json.dumps(params, indent=2) + "\n")
        if out.exists():
            shutil.rmtree(out)
        os.replace(tmp, out)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return SyntheticPaths(out)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m datasets.synthetic", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--out", type=Path, required=True, help="output folder (created; must be empty or absent)")
    parser.add_argument("--num-train", type=int, default=800, help="training images (default: 800)")
    parser.add_argument("--num-val", type=int, default=200, help="validation images (default: 200)")
    parser.add_argument("--seed", type=int, default=0, help="random seed: same seed, same files (default: 0)")
    parser.add_argument("--size", type=int, default=320, help="image height = width in pixels (default: 320)")
    parser.add_argument("--overwrite", action="store_true", help="replace --out if it already holds files")
    parser.add_argument("--workers", type=int, default=None, help="drawing processes (default: all CPUs)")
    parser.add_argument("--quiet", action="store_true", help="no progress bar")
    args = parser.parse_args(argv)
    start = time.perf_counter()
    try:
        paths = generate(
            args.out,
            args.num_train,
            args.num_val,
            args.seed,
            args.size,
            overwrite=args.overwrite,
            workers=args.workers,
            progress=not args.quiet,
        )
    except (FileExistsError, ValueError) as exc:
        parser.error(str(exc))
    print(
        f"wrote {args.num_train} train + {args.num_val} val images to {paths.root} "
        f"in {time.perf_counter() - start:.1f} s"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
