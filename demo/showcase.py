"""`make demo`: what the suite does today, end to end, offline, in about a minute on a 2-core CPU.

1. the complexity table beside the paper's figures (tools/complexity.py);
2. the embedded synthetic dataset, drawn once into data/synthetic, shown as a contact sheet of boxes and masks;
3. with the real test assets (../shared/assets or $MNV2_ASSETS): Google's TFLite MobileNetV2 classifier imported
   and run on real photos, and Google's TFLite Mobile DeepLabv3 imported and run on real VOC images (mIoU and
   overlays).

Everything lands in runs/demo/, with REPORT.md linking it all.
"""

from __future__ import annotations

import argparse
import os
import time
from pathlib import Path

import cv2
import numpy as np
import torch
from PIL import Image

from datasets.images import read_image
from datasets.segmentation import read_label_mask, voc_palette
from datasets.sources import DEFAULT_SYNTHETIC_ROOT, ensure_synthetic
from datasets.synthetic import SYNTHETIC_CLASSES, synthetic_detection, synthetic_segmentation
from eval.segmentation_metrics import ConfusionMatrix

PHOTOS = ("cat.bmp", "parrot.jpg", "hot_dog.jpg", "bird.bmp", "grace_hopper.bmp")
VOC_SAMPLES = ("vainf_1", "vainf_23", "vainf_114")


def assets_dir() -> Path | None:
    path = Path(os.environ.get("MNV2_ASSETS", Path(__file__).resolve().parent.parent.parent / "shared" / "assets"))
    return path if path.is_dir() else None


def write_png(path: Path, rgb: np.ndarray) -> None:
    """Atomic PNG write (temp file + rename)."""
    tmp = path.with_name(f".{path.name}.tmp.png")
    cv2.imwrite(str(tmp), cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR))
    os.replace(tmp, path)


def colour_mask(mask: np.ndarray) -> np.ndarray:
    palette = np.array(voc_palette(), np.uint8).reshape(-1, 3)
    return palette[mask]


def blend(image: np.ndarray, mask: np.ndarray, alpha: float = 0.5) -> np.ndarray:
    coloured = colour_mask(mask)
    labelled = ((mask > 0) & (mask < 255))[..., None]
    return np.where(labelled, (image * (1 - alpha) + coloured * alpha).astype(np.uint8), image)


def synthetic_sheet(root: Path, out: Path, count: int = 8) -> None:
    """Images of the synthetic val split with their COCO boxes (top row) and VOC palette masks (bottom row)."""
    boxes_ds, masks_ds = synthetic_detection(root, "val"), synthetic_segmentation(root, "val")
    top, bottom = [], []
    for i in range(min(count, len(boxes_ds))):
        image = read_image(boxes_ds.records[i].path)
        record = boxes_ds.records[i]
        drawn = image.copy()
        for (x0, y0, x1, y1), label in zip(record.boxes.astype(int), record.labels):
            cv2.rectangle(drawn, (x0, y0), (x1, y1), (255, 255, 255), 2)
            cv2.putText(drawn, SYNTHETIC_CLASSES[label - 1], (x0 + 2, max(12, y0 + 12)), cv2.FONT_HERSHEY_SIMPLEX,
                        0.4, (255, 255, 255), 1, cv2.LINE_AA)  # fmt: skip
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
    for name, preds in zip(PHOTOS, results):
        lines.append(f"| {name} | {preds[0].index} {preds[0].name} | {preds[0].probability:.3f} | "
                     f"{preds[1].name} | {preds[2].name} |")  # fmt: skip
    return lines


def segment_voc_samples(assets: Path, out_dir: Path) -> list[str]:
    from deeplab_mobile.inference import predict
    from tools.import_tf_segmentation import import_tf_deeplab

    model, settings = import_tf_deeplab(assets / "coral" / "deeplabv3_mnv2_pascal_quant.tflite")
    lines = ["| image | mean IoU (classes present) | overlay |", "|---|---:|---|"]
    for stem in VOC_SAMPLES:
        image = read_image(assets / "voc_samples" / "JPEGImages" / f"{stem}.png")
        truth = read_label_mask(assets / "voc_samples" / "SegmentationClass" / f"{stem}.png")
        with torch.no_grad():
            predicted = predict(model, image, settings.preset)
        matrix = ConfusionMatrix(model.num_classes)
        matrix.update(torch.from_numpy(predicted.astype(np.int64)), torch.from_numpy(truth.astype(np.int64)))
        present = sorted(set(np.unique(truth).tolist()) - {255})
        iou = np.array(matrix.compute()["per_class_iou"])[present].mean()
        name = f"deeplab_{stem}.png"
        write_png(out_dir / name, np.hstack([image, blend(image, truth), blend(image, predicted.astype(np.uint8))]))
        lines.append(f"| {stem} | {iou:.3f} | [{name}]({name}) |")
    return lines


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m demo.showcase", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)  # fmt: skip
    parser.add_argument("--out", type=Path, default=Path("runs/demo"), help="output folder (default: runs/demo)")
    parser.add_argument("--data-root", type=Path, default=DEFAULT_SYNTHETIC_ROOT, help="synthetic dataset folder")
    args = parser.parse_args(argv)
    start = time.perf_counter()
    args.out.mkdir(parents=True, exist_ok=True)
    report = ["# MobileNetV2 suite: demo report", ""]

    from tools.complexity import main as complexity

    print("1/3 complexity table", flush=True)
    complexity(["--markdown", str(args.out / "complexity.md")])
    report += ["## Model sizes beside the paper", "", (args.out / "complexity.md").read_text(), ""]

    print("2/3 synthetic dataset", flush=True)
    root = ensure_synthetic(args.data_root)
    synthetic_sheet(root, args.out / "synthetic_sheet.png")
    report += ["## The embedded synthetic dataset", "",
               f"{root}: COCO JSON + JPEGs and a VOC tree (XML + palette masks) of the same scenes. Validation "
               "images with their boxes (top) and masks (bottom):", "", "![synthetic](synthetic_sheet.png)", ""]  # fmt: skip

    assets = assets_dir()
    print("3/3 official TFLite models on real images", flush=True)
    if assets is None:
        report += ["## Official models on real images", "", "Skipped: ../shared/assets (or $MNV2_ASSETS) is absent."]
    else:
        report += ["## Google's MobileNetV2 classifier (TFLite, imported) on real photos", "",
                   *classify_photos(assets), "",  # fmt: skip
                   "## Google's Mobile DeepLabv3 (TFLite, imported) on real VOC val images", "",
                   "Each overlay: image | ground truth | our prediction.", "",
                   *segment_voc_samples(assets, args.out), ""]  # fmt: skip
    report.append(f"Made by `make demo` in {time.perf_counter() - start:.0f} s.")
    tmp = args.out / ".REPORT.md.tmp"
    tmp.write_text("\n".join(report) + "\n")
    os.replace(tmp, args.out / "REPORT.md")
    print(f"done in {time.perf_counter() - start:.0f} s: open {args.out / 'REPORT.md'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
