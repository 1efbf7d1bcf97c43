"""Data pipeline throughput per worker: our SSD and DeepLab training pipelines beside torchvision's reference
detection transforms (transforms.v2 RandomIoUCrop + flip), on the real coco8 JPEGs.

Single process with one torch and one OpenCV thread, as in a DataLoader worker (which sets torch to one thread).
"""

from __future__ import annotations

import os
import statistics
from pathlib import Path
from typing import Callable

import cv2
import numpy as np
import torch

from bench.common import Section, median_seconds

TITLE = "Data pipeline: images per second per worker"
COMMAND = "python -m bench.run --only data"
ASSETS = Path(os.environ.get("MNV2_ASSETS", Path(__file__).resolve().parent.parent.parent / "shared" / "assets"))
CPU_STEP_IMAGES_PER_S = 17.0  # torchvision ssdlite320 training step at batch 8 on this machine (DESIGN.md)


def _pipelines(coco8: Path) -> tuple[dict[str, tuple[str, Callable[[], None]]], int]:
    from torchvision import tv_tensors
    from torchvision.io import decode_jpeg, read_file
    from torchvision.transforms import v2

    from datasets.coco import CocoDetection
    from datasets.images import read_image
    from datasets.transforms import detection_train_transform, segmentation_train_transform

    records = [r for split in ("train", "val")
               for r in CocoDetection(coco8 / "images" / split, coco8 / f"instances_{split}.json").records]
    masks = {}
    for r in records:  # coco8 has no masks: label each box's area, so the mask path is exercised at full size
        mask = np.zeros((r.height, r.width), np.uint8)
        for (x0, y0, x1, y1), label in zip(r.boxes.astype(int), r.labels):
            mask[y0:y1, x0:x1] = label % 21
        masks[r.path] = mask
    ssd = detection_train_transform(320, "tf")
    deeplab = segmentation_train_transform(513, (0.5, 2.0), "tf")
    def reference_transform(antialias: bool) -> v2.Compose:
        return v2.Compose([v2.RandomIoUCrop(), v2.RandomHorizontalFlip(), v2.Resize((320, 320), antialias=antialias),
                           v2.SanitizeBoundingBoxes(), v2.ToDtype(torch.float32, scale=True)])

    reference, reference_aliased = reference_transform(True), reference_transform(False)

    def ours_decode():
        for r in records:
            read_image(r.path)

    def ours_ssd():
        for r in records:
            ssd(read_image(r.path), {"boxes": r.boxes, "labels": r.labels})

    def ours_deeplab():
        for r in records:
            deeplab(read_image(r.path), masks[r.path])

    def tv_decode():
        for r in records:
            decode_jpeg(read_file(str(r.path)))

    def tv_reference(transform: v2.Compose) -> Callable[[], None]:
        def run_once() -> None:
            for r in records:
                image = tv_tensors.Image(decode_jpeg(read_file(str(r.path))))
                boxes = tv_tensors.BoundingBoxes(torch.from_numpy(r.boxes), format="XYXY",
                                                 canvas_size=(r.height, r.width))
                transform(image, {"boxes": boxes, "labels": torch.from_numpy(r.labels)})
        return run_once

    return {
        "decode": ("decode only (Pillow + EXIF check → RGB array)", ours_decode),
        "tv_decode": ("decode only (torchvision.io.decode_jpeg)", tv_decode),
        "ssd": ("ours, SSD train: decode + zoom-out + min-IoU crop + resize 320 + flip + colour jitter + "
                "normalise + to tensor", ours_ssd),
        "reference": ("torchvision v2 reference: decode_jpeg + RandomIoUCrop + flip + Resize 320 (antialiased, "
                      "the v2 default) + SanitizeBoundingBoxes + ToDtype", tv_reference(reference)),
        "reference_aliased": ("the same with Resize(antialias=False), plain bilinear like OpenCV's and like "
                              "torchvision's SSD model transform", tv_reference(reference_aliased)),
        "deeplab": ("ours, DeepLab train: decode + random scale 0.5–2 + pad/crop 513 + flip + normalise + "
                    "to tensor", ours_deeplab),
    }, len(records)


def run(quick: bool) -> Section:
    coco8 = ASSETS / "coco8"
    if not (coco8 / "instances_train.json").is_file():
        return Section(TITLE, f"Skipped: the real coco8 images are not at {coco8} (put shared/assets beside the "
                              "repo or set MNV2_ASSETS).", COMMAND)
    threads, cv_threads = torch.get_num_threads(), cv2.getNumThreads()
    torch.set_num_threads(1)
    cv2.setNumThreads(1)
    torch.manual_seed(0)
    try:
        pipelines, count = _pipelines(coco8)
        repeats = 3 if quick else 21
        for _, fn in pipelines.values():
            fn()  # warm-up
        # Interleaved rounds, so a change in machine load hits every pipeline alike rather than one of them.
        seconds: dict[str, list[float]] = {key: [] for key in pipelines}
        for _ in range(repeats):
            for key, (_, fn) in pipelines.items():
                seconds[key].append(median_seconds(fn, repeats=1, warmup=0))
        rate = {key: count / statistics.median(times) for key, times in seconds.items()}
    finally:
        torch.set_num_threads(threads)
        cv2.setNumThreads(cv_threads)
    lines = [
        f"{count} real COCO JPEGs (coco8: 381–640 px wide, 425–640 px high); median over {repeats} interleaved "
        "rounds of one pass over all of them per pipeline; one process, 1 torch thread, 1 OpenCV thread "
        "(= one DataLoader worker).",
        "",
        "| pipeline | images/s per worker | ms/image |",
        "|---|---:|---:|",
    ]
    for key, (label, _) in pipelines.items():
        lines.append(f"| {label} | {rate[key]:.0f} | {1000 / rate[key]:.1f} |")
    lines += [
        "",
        f"Our SSD pipeline against torchvision's reference on the same images: "
        f"{rate['ssd'] / rate['reference']:.2f}× the rate of the antialiased default, "
        f"{rate['ssd'] / rate['reference_aliased']:.2f}× the rate without antialiasing, while also doing zoom-out, "
        "colour jitter and normalisation. Our decoder (Pillow, which refuses truncated files) runs at "
        f"{rate['decode'] / rate['tv_decode']:.2f}× torchvision's decode_jpeg.",
        "",
        f"A CPU SSDLite training step at batch 8 consumes about {CPU_STEP_IMAGES_PER_S:.0f} images/s (DESIGN.md), so "
        f"one worker of our SSD pipeline supplies {rate['ssd'] / CPU_STEP_IMAGES_PER_S:.1f}× that and one DeepLab "
        f"worker {rate['deeplab'] / CPU_STEP_IMAGES_PER_S:.1f}× (before the model itself needs those CPU cores).",
    ]
    return Section(TITLE, "\n".join(lines), COMMAND)
