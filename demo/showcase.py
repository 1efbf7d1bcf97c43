"""`make demo`: the whole suite end to end, offline, in a few minutes on a 2-core CPU.

1. the complexity table beside the paper's figures (tools/complexity.py);
2. the embedded synthetic dataset, drawn once at 128×128 into data/synthetic_demo;
3. SSDLite and Mobile DeepLabv3 fine-tuned briefly on it from Google's pedestrian SSDLite (train/ssdlite.py and
   train/deeplab.py with --weights ssdlite_pedestrian: class rows mapped by name, the rest transferred);
4. their COCO mAP and mIoU reports on its val split (eval/coco_map.py, eval/voc_miou.py);
5. both exported to the int8 phone file (tools/export_litert.py, calibrated on the training images) and scored
   through MediaPipe Tasks as an app runs them (ObjectDetector's AP50, ImageSegmenter's mIoU), beside fp32;
6. a short synthetic video annotated by both through demo/video.py, with a contact sheet of its frames;
7. with the real test assets (../shared/assets or $MNV2_ASSETS): Google's pedestrian SSDLite and Mobile
   DeepLabv3 imported and run through demo/video.py on real photos, the TFLite classifier on the same photos, and
   DeepLab on real VOC images (mIoU and overlays).

Everything lands in runs/demo/, with REPORT.md linking it all.
"""

from __future__ import annotations

import argparse
import json
import os
import time
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
import torch
from PIL import Image

from backbone import named_weights
from common.cli import check_flags, new_parser, run_cli
from common.files import write_atomic
from common.images import read_image
from datasets.segmentation import read_label_mask
from datasets.sources import ensure_synthetic
from datasets.synthetic import SYNTHETIC_CLASSES, synthetic_detection, synthetic_segmentation
from demo.overlay import blend, colour_mask, write_png
from eval.coco_report import evaluate_coco
from eval.segmentation import ConfusionMatrix, image_mean_iou

PHOTOS = ("cat.bmp", "parrot.jpg", "hot_dog.jpg", "bird.bmp", "grace_hopper.bmp")
VOC_SAMPLES = ("vainf_1", "vainf_23", "vainf_114")


def assets_dir() -> Path | None:
    """The real test assets ($MNV2_ASSETS, else ../shared/assets), when they are here."""
    path = named_weights.assets_dir()
    return path if path.is_dir() else None


def synthetic_sheet(root: Path, out: Path, count: int = 8) -> None:
    """Images of the synthetic val split with their COCO boxes (top row) and VOC palette masks (bottom row)."""
    boxes_ds, masks_ds = synthetic_detection(root, "val"), synthetic_segmentation(root, "val")
    top, bottom = [], []
    for i in range(min(count, len(boxes_ds))):
        image = read_image(boxes_ds.records[i].path)
        record = boxes_ds.records[i]
        drawn = image.copy()
        for (x0, y0, x1, y1), label in zip(record.boxes.astype(int), record.labels, strict=True):
            cv2.rectangle(drawn, (x0, y0), (x1, y1), (255, 255, 255), 2)
            cv2.putText(
                drawn,
                SYNTHETIC_CLASSES[label - 1],
                (x0 + 2, max(12, y0 + 12)),
                cv2.FONT_HERSHEY_SIMPLEX,
                0.4,
                (255, 255, 255),
                1,
                cv2.LINE_AA,
            )
        top.append(drawn)
        bottom.append(colour_mask(read_label_mask(masks_ds.samples[i].mask)))
    write_png(out, np.vstack([np.hstack(top), np.hstack(bottom)]))


def classify_photos(assets: Path) -> list[str]:
    from demo.classify import classify, load_classifier

    model, preprocess = load_classifier(str(assets / "coral" / "tf2_mobilenet_v2_1.0_224_ptq.tflite"))
    images = [Image.open(assets / "coral" / name).convert("RGB") for name in PHOTOS]
    with torch.no_grad():
        results = classify(model, images, preprocess, top_k=3)
    lines = ["| photo | top-1 | p | 2nd | 3rd |", "|---|---|---:|---|---|"]
    for name, preds in zip(PHOTOS, results, strict=True):
        lines.append(
            f"| {name} | {preds[0].index} {preds[0].name} | {preds[0].probability:.3f} | "
            f"{preds[1].name} | {preds[2].name} |"
        )
    return lines


def segment_voc_samples(assets: Path, out_dir: Path) -> list[str]:
    from deeplab_mobile.segmenter import predict
    from deeplab_mobile.tf_import import import_tf_deeplab

    model, _ = import_tf_deeplab(assets / "coral" / "deeplabv3_mnv2_pascal_quant.tflite")
    lines = ["| image | mean IoU (classes present) | overlay |", "|---|---:|---|"]
    for stem in VOC_SAMPLES:
        image = read_image(assets / "voc_samples" / "JPEGImages" / f"{stem}.png")
        truth = read_label_mask(assets / "voc_samples" / "SegmentationClass" / f"{stem}.png")
        with torch.no_grad():
            predicted = predict(model, [image])[0]
        iou = image_mean_iou(predicted, truth, model.num_classes)
        name = f"deeplab_{stem}.png"
        write_png(out_dir / name, np.hstack([image, blend(image, truth), blend(image, predicted.astype(np.uint8))]))
        lines.append(f"| {stem} | {iou:.3f} | [{name}]({name}) |")
    return lines


@dataclass(frozen=True)
class Recipe:
    """How briefly `make demo` fine-tunes each head from Google's pedestrian SSDLite (docs/custom_data.md has the
    runs behind these figures): SSDLite at 160 px (its anchors need more than 128), DeepLab from its backbone."""

    source: str = "ssdlite_pedestrian"
    image_size: int = 128
    ssdlite_size: int = 160
    ssdlite_epochs: int = 5
    deeplab_epochs: int = 5
    calibration_images: int = 64
    ssdlite_lr: float = 3e-3
    deeplab_lr: float = 5e-3
    num_train: int = 1000
    num_val: int = 100


def best_checkpoint(run_dir: Path) -> Path:
    return run_dir / "best.pt" if (run_dir / "best.pt").is_file() else run_dir / "last.pt"


def train_both(root: Path, out: Path, recipe: Recipe, workers: int, seed: int) -> tuple[Path, Path]:
    """Fine-tune SSDLite and Mobile DeepLabv3 from `recipe.source` on the synthetic set; their checkpoints."""
    from train.deeplab import main as train_deeplab
    from train.ssdlite import main as train_ssdlite

    num_train = json.loads((root / "synthetic.json").read_text())["num_train"]  # tiny test sets get smaller batches
    common = [
        "--data",
        "synthetic",
        "--data-root",
        str(root),
        "--weights",
        recipe.source,
        "--optimizer",
        "adamw",
        "--warmup-epochs",
        "0.2",
        "--weight-decay",
        "1e-4",
        "--workers",
        str(workers),
        "--seed",
        str(seed),
        "--project",
        str(out / "train"),
        "--exist-ok",
    ]
    ssdlite_run = train_ssdlite(
        [
            *common,
            "--name",
            "ssdlite",
            "--lr",
            str(recipe.ssdlite_lr),
            "--preset",
            "ssdlite320_coco",
            "--image-size",
            str(recipe.ssdlite_size),
            "--epochs",
            str(recipe.ssdlite_epochs),
            "--eval-interval",
            str(recipe.ssdlite_epochs),
            "--batch-size",
            str(min(32, num_train)),
        ]
    )
    deeplab_run = train_deeplab(
        [
            *common,
            "--name",
            "deeplab",
            "--lr",
            str(recipe.deeplab_lr),
            "--crop-size",
            str(recipe.image_size),
            "--epochs",
            str(recipe.deeplab_epochs),
            "--eval-interval",
            str(recipe.deeplab_epochs),
            "--batch-size",
            str(min(16, num_train)),
            "--min-scale",
            "0.75",
            "--max-scale",
            "1.5",
        ]
    )
    return best_checkpoint(ssdlite_run), best_checkpoint(deeplab_run)


def evaluate_both(
    root: Path, out: Path, detector: Path, segmenter: Path, workers: int
) -> tuple[dict, dict, Path, Path]:
    """COCO mAP and mIoU reports of the two checkpoints on the synthetic val split: (COCOeval stats, mIoU
    metrics, report folders)."""
    from eval.coco_map import main as coco_map
    from eval.voc_miou import main as voc_miou

    common = [
        "--data",
        "synthetic",
        "--data-root",
        str(root),
        "--project",
        str(out / "eval"),
        "--exist-ok",
        "--workers",
        str(workers),
        "--quiet",
    ]
    coco_dir = coco_map(["--weights", str(detector), "--name", "coco_map", *common])
    miou_dir = voc_miou(["--weights", str(segmenter), "--name", "voc_miou", "--overlays", "4", *common])
    return (
        json.loads((coco_dir / "metrics.json").read_text())["stats"],
        json.loads((miou_dir / "metrics.json").read_text()),
        coco_dir,
        miou_dir,
    )


@dataclass(frozen=True)
class Shipped:
    """The int8 phone files and their scores through MediaPipe Tasks on the val split, with the fp32 detector decoded
    as MediaPipe decodes (best class per box, class-agnostic NMS): the like-for-like fp32 figure."""

    detector: Path
    segmenter: Path
    ap50_int8: float
    ap50_fp32_as_mediapipe: float
    miou_int8: float


def ship_int8(root: Path, out: Path, detector: Path, segmenter: Path, calibration_images: int) -> Shipped | None:
    """Both checkpoints as int8 phone files (calibrated on `calibration_images` of their own training images,
    verified on four val images), scored through MediaPipe Tasks on the val split; None when the phone toolchain
    (the .[mobile] extra and mediapipe) is not installed."""
    from tools import mediapipe_tasks
    from tools.export_graphs import load_graph
    from tools.export_litert import (
        calibration_set,
        export_tflite,
        installed,
        mediapipe_reference,
        nothing_decided_note,
    )

    if not (installed() and mediapipe_tasks.available()):
        return None
    boxes_ds, masks_ds = synthetic_detection(root, "val"), synthetic_segmentation(root, "val")
    check_images = [read_image(boxes_ds.records[i].path) for i in range(min(4, len(boxes_ds)))]
    graphs, files = [], []
    for checkpoint in (detector, segmenter):
        graph = load_graph(checkpoint)
        calibration, source = calibration_set(None, None, {"args": graph.training_args}, calibration_images)
        path = out / "phone" / f"{checkpoint.parent.name}_int8.tflite"
        checks = export_tflite(graph, path, calibration, source, check_images)
        if note := nothing_decided_note(checks):
            print(f"{path.name}: {note}", flush=True)
        graphs.append(graph)
        files.append(path)
    records = boxes_ds.records
    images = [read_image(r.path) for r in records]
    labels = {name: label for label, name in enumerate(SYNTHETIC_CLASSES, start=1)}
    found = mediapipe_tasks.detect(files[0], images, score_threshold=0.01)
    int8 = [
        result
        for record, f in zip(records, found, strict=True)
        for result in boxes_ds.to_coco_results(
            record.image_id, f["boxes"], f["scores"].tolist(), [labels[name] for name in f["names"]]
        )
    ]
    with torch.no_grad():
        decoded = mediapipe_reference(graphs[0], images, 0.01)
    fp32 = [
        result
        for record, d in zip(records, decoded, strict=True)
        for result in boxes_ds.to_coco_results(
            record.image_id, d["boxes"].numpy(), d["scores"].tolist(), d["labels"].tolist()
        )
    ]
    matrix = ConfusionMatrix(len(SYNTHETIC_CLASSES) + 1)
    samples = masks_ds.samples
    for sample, mask in zip(
        samples, mediapipe_tasks.segment(files[1], [read_image(s.image) for s in samples]), strict=True
    ):
        matrix.update(torch.from_numpy(mask.astype(np.int64)), torch.from_numpy(read_label_mask(sample.mask)))
    return Shipped(
        files[0],
        files[1],
        evaluate_coco(boxes_ds.coco, int8, boxes_ds.ids).stats["AP50"],
        evaluate_coco(boxes_ds.coco, fp32, boxes_ds.ids).stats["AP50"],
        float(matrix.compute()["mIoU"]),
    )


def shipped_section(shipped: Shipped | None, coco: dict, miou: dict, out: Path) -> list[str]:
    """REPORT.md's lines on the int8 phone files beside the fp32 figures."""
    if shipped is None:
        return [
            "The int8 phone files were skipped: the .[mobile] extra and mediapipe are not installed "
            "(`make install` installs both).",
            "",
        ]
    links = " and ".join(
        f"[{p.name}]({os.path.relpath(p, out)}) ({p.stat().st_size / 1e6:.1f} MB)"
        for p in (shipped.detector, shipped.segmenter)
    )
    return [
        f"Shipped as int8 phone files ({links}): uint8 image in, labels, anchors and box decoding in the file; "
        "scored as an app runs them, through MediaPipe Tasks (ObjectDetector: its own resize and class-agnostic "
        "NMS; ImageSegmenter's category mask), on the same val split:",
        "",
        "| model | fp32 PyTorch | fp32 decoded as MediaPipe decodes | int8 .tflite in MediaPipe Tasks |",
        "|---|---|---|---|",
        f"| SSDLite | AP50 {coco['AP50']:.3f} | AP50 {shipped.ap50_fp32_as_mediapipe:.3f} | "
        f"AP50 {shipped.ap50_int8:.3f} |",
        f"| Mobile DeepLabv3 | mIoU {miou['mIoU']:.3f} | (the same: square images) | mIoU {shipped.miou_int8:.3f} |",
        "",
        "MediaPipe keeps each box's best class and suppresses boxes overlapping by IoU > 0.3 whatever their class; "
        "the suite's evaluation keeps every class above 0.01 per box (per-class NMS), which COCO AP rewards. The "
        "middle column is the fp32 model decoded MediaPipe's way: int8's own cost is the step from it to the last.",
        "",
    ]


def render_video(root: Path, out: Path, detector: Path, segmenter: Path) -> tuple[Path, Path, float]:
    """A short synthetic clip annotated by both models: (video, contact sheet of frames, frames/s)."""
    from demo.synthetic_video import write_synthetic_video
    from demo.video import run as video_demo

    clip = write_synthetic_video(root, out / "synthetic_clip.mp4", seconds=6, fps=10, hold=1)
    result = video_demo(
        [
            "--source",
            str(clip),
            "--det",
            str(detector),
            "--seg",
            str(segmenter),
            "--resize",
            "256",
            "--out",
            str(out / "annotated_clip.mp4"),
            "--contact-sheet",
            str(out / "annotated_frames.png"),
            "--quiet",
        ]
    )
    return result.out, result.contact_sheet, result.fps


def official_models_on_photos(assets: Path, out: Path) -> tuple[Path, float] | None:
    """Google's pedestrian SSDLite and Mobile DeepLabv3, by weights name (imported into $MNV2_CACHE on first use),
    through demo/video.py on the real photos."""
    from demo.video import run as video_demo
    from ssdlite.named_weights import pedestrian_graph

    if pedestrian_graph() is None:
        return None
    result = video_demo(
        [
            "--source",
            str(assets / "coral"),
            "--det",
            "ssdlite_pedestrian",
            "--seg",
            "deeplab_picamera2_257",
            "--resize",
            "320",
            "--save-images",
            str(out / "photos"),
            "--contact-sheet",
            str(out / "photos_sheet.png"),
            "--quiet",
        ]
    )
    return result.contact_sheet, result.fps


def write_report(out: Path, lines: list[str]) -> Path:
    write_atomic(out / "REPORT.md", "\n".join(lines) + "\n")
    return out / "REPORT.md"


def build_parser() -> argparse.ArgumentParser:
    parser = new_parser("python -m demo.showcase", __doc__)
    parser.add_argument("--out", type=Path, default=Path("runs/demo"), help="output folder (default: runs/demo)")
    parser.add_argument(
        "--data-root",
        type=Path,
        default=Path("data/synthetic_demo"),
        help="where the demo's synthetic dataset is drawn (default: data/synthetic_demo)",
    )
    parser.add_argument(
        "--epochs",
        type=int,
        default=None,
        help="training epochs for each head (default: 5 for each head; 1 for a smoke run)",
    )
    parser.add_argument("--workers", type=int, default=1, help="data loading processes (default: 1)")
    parser.add_argument(
        "--seed", type=int, default=0, help="seed of both training runs (default: 0; docs/training.md: the spread)"
    )
    return parser


def main(argv: list[str] | None = None) -> int:
    """`make demo`; errors are one `error:` line and exit 2, Ctrl-C one line and exit 130 (common.cli.run_cli)."""
    return run_cli(build_parser(), argv, check_flags, showcase)


def showcase(args: argparse.Namespace) -> int:
    """The seven steps of the module docstring; REPORT.md links what they made."""
    recipe = Recipe() if args.epochs is None else Recipe(ssdlite_epochs=args.epochs, deeplab_epochs=args.epochs)
    start = time.perf_counter()
    out = args.out.resolve()
    out.mkdir(parents=True, exist_ok=True)
    report = ["# MobileNetV2 suite: demo report", ""]

    def announce(step: str) -> None:
        print(f"{step} ({time.perf_counter() - start:.0f} s in)", flush=True)

    from tools.complexity import main as complexity

    announce("1/7 complexity table")
    complexity(["--markdown", str(out / "complexity.md")])

    announce("2/7 synthetic dataset")
    # at the demo's small image size, drawn once (deterministic, a few seconds)
    root = ensure_synthetic(args.data_root, num_train=recipe.num_train, num_val=recipe.num_val, size=recipe.image_size)
    synthetic_sheet(root, out / "synthetic_sheet.png")

    announce(f"3/7 fine-tuning SSDLite and Mobile DeepLabv3 from {recipe.source} on the CPU")
    t0 = time.perf_counter()
    detector, segmenter = train_both(root, out, recipe, args.workers, args.seed)
    train_seconds = time.perf_counter() - t0

    announce("4/7 evaluating: COCO mAP and mIoU reports")
    coco, miou, coco_dir, miou_dir = evaluate_both(root, out, detector, segmenter, args.workers)

    announce("5/7 shipping both as int8 phone files, scored through MediaPipe Tasks")
    shipped = ship_int8(root, out, detector, segmenter, recipe.calibration_images)

    announce("6/7 annotating a synthetic video with both models")
    video, frames, fps = render_video(root, out, detector, segmenter)

    report += [
        "## Fine-tuned here on the embedded synthetic dataset",
        "",
        f"Both heads start from `{recipe.source}` (Google's pedestrian SSDLite, width 1.0: every tensor that fits is "
        "transferred, the DeepLab takes its backbone) and train with AdamW: SSDLite at "
        f"{recipe.ssdlite_size}×{recipe.ssdlite_size} for {recipe.ssdlite_epochs} epochs (lr {recipe.ssdlite_lr:g}), "
        f"DeepLab at {recipe.image_size}×{recipe.image_size} for {recipe.deeplab_epochs} epochs "
        f"(lr {recipe.deeplab_lr:g}), over {recipe.num_train} images: "
        f"{train_seconds:.0f} s of CPU training. The transfer reports are in each run's args.json "
        "(docs/custom_data.md explains them).",
        "",
        "| model | metric on the synthetic val split | report |",
        "|---|---|---|",
        f"| SSDLite | COCO mAP@0.5 {coco['AP50']:.3f}, mAP@[.5:.95] {coco['AP']:.3f} | "
        f"[report]({os.path.relpath(coco_dir / 'report.md', out)}), "
        f"[PR curve]({os.path.relpath(coco_dir / 'pr_curve.png', out)}) |",
        f"| Mobile DeepLabv3 | mIoU {miou['mIoU']:.3f}, pixel accuracy {miou['pixel_accuracy']:.3f} | "
        f"[report]({os.path.relpath(miou_dir / 'report.md', out)}), "
        f"[confusion matrix]({os.path.relpath(miou_dir / 'confusion_matrix.png', out)}) |",
        "",
        *shipped_section(shipped, coco, miou, out),
        f"Annotated video: [{video.name}]({video.name}) ({fps:.1f} frames/s with both models). Frames of it:",
        "",
        f"![annotated frames]({frames.name})",
        "",
        "The dataset: validation images with their boxes (top) and masks (bottom):",
        "",
        "![synthetic](synthetic_sheet.png)",
        "",
    ]

    announce("7/7 official models on real images")
    assets = assets_dir()
    if assets is None:
        report += [
            "## Official models on real images",
            "",
            "Skipped: ../shared/assets (or $MNV2_ASSETS) is absent.",
            "",
        ]
    else:
        photos = official_models_on_photos(assets, out)
        if photos is not None:
            report += [
                "## Google's pedestrian SSDLite and Mobile DeepLabv3 (imported) through demo/video.py",
                "",
                f"{photos[1]:.1f} frames/s on the CPU; annotated images in [photos/](photos/).",
                "",
                f"![photos]({photos[0].name})",
                "",
            ]
        report += [
            "## Google's MobileNetV2 classifier (TFLite, imported) on real photos",
            "",
            *classify_photos(assets),
            "",
            "## Google's Mobile DeepLabv3 (TFLite, imported) on real VOC val images",
            "",
            "Each overlay: image | ground truth | our prediction.",
            "",
            *segment_voc_samples(assets, out),
            "",
        ]
    report += ["## Model sizes beside the paper", "", (out / "complexity.md").read_text(), ""]
    report.append(f"Made by `make demo` in {time.perf_counter() - start:.0f} s.")
    path = write_report(out, report)
    print(
        f"\ndone in {time.perf_counter() - start:.0f} s. Look at:\n  {path}\n  {video}\n  {frames}\n"
        f"  {coco_dir / 'report.md'}\n  {miou_dir / 'report.md'}"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
