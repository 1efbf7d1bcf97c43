"""Data pipeline: whether the training loader keeps a CPU step fed, and throughput per worker.

1. Our SSDLite training step at batch 32 fed by the training engine's loader (train.data.TrainingData, the default
   worker count) from JPEGs of the synthetic dataset, beside the same step on one ready batch: in a fresh process
   that tuned its allocator as a training run does, with bench.run's torch threads.
2. Our SSD and DeepLab training pipelines beside torchvision's reference detection transforms (transforms.v2
   RandomIoUCrop + flip), on the real coco8 JPEGs: single process with one torch and one OpenCV thread, as in a
   DataLoader worker (which sets torch to one thread).
"""

from __future__ import annotations

import os
import statistics
from pathlib import Path
from typing import Callable

import cv2
import numpy as np
import torch

from bench.common import ASSETS, Section, call_in_subprocess, markdown_table, median_seconds
from bench.models import engine_sgd

TITLE = "Data pipeline: does the loader keep a step fed, and images per second per worker"
COMMAND = "python -m bench.run --only data"
KEEP_UP_BATCH = 32
KEEP_UP_TARGET = 1.05  # target: a step fed by the loader costs at most 5% more than one on ready tensors


def _keep_up_schedule(quick: bool) -> tuple[int, int, int]:
    """Warm-up steps, rounds, steps per block."""
    return (1, 2, 2) if quick else (2, 3, 3)


def keep_up_results(quick: bool, root: str) -> dict:
    """Seconds of our SSDLite training steps (train/ssdlite.py's task: model, loss, the engine's SGD) at batch 32,
    fed by the engine's training loader from the synthetic dataset at `root` ("loader") and on its first batch
    again ("ready"), in blocks (loader steps, then ready steps, repeated) so the workers' refills land in the steps
    that need them. JSON-able: called in a fresh process by call_in_subprocess."""
    import time

    from common.distributed import DistInfo
    from train.data import TrainingData
    from train.ssdlite import SSDLiteTask, build_parser

    warmup, rounds, block = _keep_up_schedule(quick)
    args = build_parser().parse_args(["--data-root", root, "--weights", "none"])
    task = SSDLiteTask(args)
    model = task.build_model().to(memory_format=torch.channels_last)
    optimizer = engine_sgd(model)
    train_set, _ = task.build_datasets()
    data = TrainingData(train_set, None, task.collate, args, DistInfo(0, 1, 0, torch.device("cpu")), KEEP_UP_BATCH)
    data.start_epoch(0, 0)
    batches = iter(data.train)
    ready = next(batches)

    def step(batch: object) -> None:
        images, targets = batch
        loss, _ = task.compute_loss(
            model, (images.contiguous(memory_format=torch.channels_last), targets), torch.device("cpu")
        )
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()

    def timed(fn: Callable[[], None]) -> float:
        start = time.perf_counter()
        fn()
        return time.perf_counter() - start

    for _ in range(warmup):
        step(next(batches))
    seconds: dict[str, list[float]] = {"loader": [], "ready": []}
    for _ in range(rounds):
        seconds["loader"] += [timed(lambda: step(next(batches))) for _ in range(block)]
        seconds["ready"] += [timed(lambda: step(ready)) for _ in range(block)]
    schedule = f"{rounds} rounds of {block} loader-fed then {block} ready steps after {warmup} warm-up"
    return {"seconds": seconds, "workers": args.workers, "images": len(train_set), "schedule": schedule}


def _keep_up_section(quick: bool) -> tuple[list[str], dict[str, float] | None]:
    """Section 1's Markdown and the median ms of the ready and the loader-fed step (None if it could not run)."""
    import tempfile

    from datasets.synthetic import generate

    warmup, rounds, block = _keep_up_schedule(quick)
    with tempfile.TemporaryDirectory() as tmp:  # removed once the measuring process and its workers have exited
        root = Path(tmp) / "synthetic"
        generate(root, num_train=KEEP_UP_BATCH * (warmup + 1 + rounds * block), num_val=1, progress=False)
        try:
            result = call_in_subprocess("bench_data", "keep_up_results", True, quick=quick, root=str(root))
        except RuntimeError as error:
            return [f"Not measured: {error}"], None
    ms = {key: 1000.0 * statistics.median(t) for key, t in result["seconds"].items()}
    ratio = ms["loader"] / ms["ready"]
    rows = [
        [
            f"training step on one ready batch of {KEEP_UP_BATCH} tensors",
            f"{ms['ready']:.0f}",
            f"{KEEP_UP_BATCH * 1000 / ms['ready']:.1f}",
            "1.00×",
            "—",
            "—",
        ],
        [
            f"training step fed by the training loader ({result['workers']} workers, the default here)",
            f"{ms['loader']:.0f}",
            f"{KEEP_UP_BATCH * 1000 / ms['loader']:.1f}",
            f"{ratio:.3f}×",
            f"≤ {KEEP_UP_TARGET:.2f}×",
            "yes" if ratio <= KEEP_UP_TARGET else "no",
        ],
    ]
    return [
        f"### 1. Does the loader keep up? SSDLite 320 training step, batch {KEEP_UP_BATCH}, CPU",
        "",
        markdown_table(["what", "median ms", "images/s", "time ratio", "target", "met"], rows, "lrrrll"),
        "",
        f"train/ssdlite.py's task on the synthetic dataset ({result['images']} JPEGs drawn for the run, 320×320, "
        "its training augmentation), the engine's loader (train.data.TrainingData: keyed sampler, prefetch 4, "
        f"persistent workers) and SGD; torch threads {torch.get_num_threads()} in the step while the workers "
        "decode and augment on the same CPUs. Fresh process, allocator tuned as in a training run. "
        f"{result['schedule']}.",
    ], ms


def _pipelines(coco8: Path) -> tuple[dict[str, tuple[str, Callable[[], None]]], int]:
    from torchvision import tv_tensors
    from torchvision.io import decode_jpeg, read_file
    from torchvision.transforms import v2

    from common.images import read_image
    from datasets.coco import CocoDetection
    from datasets.transforms import detection_train_transform, segmentation_train_transform

    records = [
        r
        for split in ("train", "val")
        for r in CocoDetection(coco8 / "images" / split, coco8 / f"instances_{split}.json").records
    ]
    masks = {}
    for r in records:  # coco8 has no masks: label each box's area, so the mask path is exercised at full size
        mask = np.zeros((r.height, r.width), np.uint8)
        for (x0, y0, x1, y1), label in zip(r.boxes.astype(int), r.labels, strict=True):
            mask[y0:y1, x0:x1] = label % 21
        masks[r.path] = mask
    ssd = detection_train_transform(320, "tf")
    deeplab = segmentation_train_transform(513, (0.5, 2.0), "tf")

    def reference_transform(antialias: bool) -> v2.Compose:
        return v2.Compose(
            [
                v2.RandomIoUCrop(),
                v2.RandomHorizontalFlip(),
                v2.Resize((320, 320), antialias=antialias),
                v2.SanitizeBoundingBoxes(),
                v2.ToDtype(torch.float32, scale=True),
            ]
        )

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
                boxes = tv_tensors.BoundingBoxes(
                    torch.from_numpy(r.boxes), format="XYXY", canvas_size=(r.height, r.width)
                )
                transform(image, {"boxes": boxes, "labels": torch.from_numpy(r.labels)})

        return run_once

    return {
        "decode": ("decode only (Pillow + EXIF check → RGB array)", ours_decode),
        "tv_decode": ("decode only (torchvision.io.decode_jpeg)", tv_decode),
        "ssd": (
            "ours, SSD train: decode + zoom-out + min-IoU crop + resize 320 + flip + colour jitter + "
            "normalise + to tensor",
            ours_ssd,
        ),
        "reference": (
            "torchvision v2 reference: decode_jpeg + RandomIoUCrop + flip + Resize 320 (antialiased, "
            "the v2 default) + SanitizeBoundingBoxes + ToDtype",
            tv_reference(reference),
        ),
        "reference_aliased": (
            "the same with Resize(antialias=False), plain bilinear like OpenCV's and like "
            "torchvision's SSD model transform",
            tv_reference(reference_aliased),
        ),
        "deeplab": (
            "ours, DeepLab train: decode + random scale 0.5–2 + pad/crop 513 + flip + normalise + to tensor",
            ours_deeplab,
        ),
    }, len(records)


def run(quick: bool) -> Section:
    keep_up, step_ms = _keep_up_section(quick)
    coco8 = ASSETS / "coco8"
    if not (coco8 / "instances_train.json").is_file():
        return Section(
            TITLE,
            "\n".join(
                [
                    *keep_up,
                    "",
                    "### 2. Images per second per worker",
                    "",
                    f"Skipped: the real coco8 images are not at {coco8} (put shared/assets "
                    "beside the repo or set MNV2_ASSETS).",
                ]
            ),
            COMMAND,
        )
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
        *keep_up,
        "",
        "### 2. Images per second per worker",
        "",
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
    ]
    if step_ms is not None:
        step_rate = KEEP_UP_BATCH * 1000 / step_ms["ready"]
        worker_ms = KEEP_UP_BATCH * 1000 / rate["ssd"]  # CPU time the workers spend on one batch
        lines += [
            "",
            f"The training step of (1) consumes {step_rate:.1f} images/s, so one worker of our SSD pipeline "
            f"supplies {rate['ssd'] / step_rate:.1f}× that and one DeepLab worker "
            f"{rate['deeplab'] / step_rate:.1f}× (on coco8's larger photos). The workers spend about "
            f"{worker_ms:.0f} ms of CPU on a batch of {KEEP_UP_BATCH} ({KEEP_UP_BATCH} × "
            f"{1000 / rate['ssd']:.1f} ms); with {os.cpu_count()} CPUs and {torch.get_num_threads()} busy "
            "step threads there is no spare core, so a loader-fed step may cost up to that much more than "
            "a ready one (here: "
            f"{step_ms['loader'] - step_ms['ready']:+.0f} ms).",
        ]
    return Section(TITLE, "\n".join(lines), COMMAND)
