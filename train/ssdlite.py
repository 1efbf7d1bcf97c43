"""Train SSDLite on COCO, VOC 07+12, any COCO-format dataset or the embedded synthetic dataset.

    python train/ssdlite.py                                   # synthetic data, CPU or GPU
    python train/ssdlite.py --data coco --data-root /data/coco --weights IMAGENET1K_V1
    torchrun --nproc_per_node=8 train/ssdlite.py --data coco --data-root /data/coco --batch-size 192
    python train/ssdlite.py --resume runs/ssdlite/exp/last.pt

Defaults follow torchvision's ssdlite320 recipe (SGD, lr 0.15 at batch 192 scaled linearly, weight decay 4e-5,
cosine, 600 epochs); results go to runs/ssdlite/<name>/.
"""

from __future__ import annotations

import argparse
import dataclasses
from functools import partial
from pathlib import Path
from typing import Any

import torch
from torch import nn

from common.cli import new_parser
from common.distributed import DistInfo
from datasets.loading import collate_detection
from datasets.sources import add_data_arguments, detection_data
from datasets.transforms import DetectionEvalTransform, detection_train_transform
from eval.detection import (
    base_dataset,
    evaluate_coco_detections,
    evaluate_voc_detections,
)
from ssdlite.checkpoint import checkpoint_dict, stored_preset
from ssdlite.detector import preprocess_image
from ssdlite.loss import SSDLiteLoss, pad_targets
from ssdlite.model import build_ssdlite
from ssdlite.presets import PRESETS, SSDLITE320_COCO, get_preset
from train.engine import train_main
from train.flags import add_engine_arguments, add_model_arguments
from train.task import Task, global_batch_share
from train.transfer import preset_like_source

REFERENCE_BATCH, REFERENCE_LR = 192, 0.15  # torchvision ssdlite320_mobilenet_v3_large: 8 GPUs × 24, lr 0.15


class SSDLiteTask(Task):
    """SSDLite for the training engine: model, data, batched loss and COCO/VOC validation."""

    name = "ssdlite"

    def __init__(self, args: argparse.Namespace) -> None:
        default_weights = "none" if args.data == "synthetic" else "IMAGENET1K_V1"  # synthetic shapes: from scratch
        super().__init__(args.weights or default_weights, args.freeze, args.skip_bad_samples)
        preset = get_preset(args.preset or SSDLITE320_COCO.name)
        if self.source is not None and args.preset is None:  # fine-tuning keeps the source's conventions
            preset = (
                stored_preset(self.source, self.weights)
                if self.source.get("arch") == "ssdlite"
                else preset_like_source(preset, self.source)
            )
        changes = {
            "image_size": None if args.image_size is None else (args.image_size, args.image_size),
            "width_mult": args.width_mult,
        }
        preset = preset.derive(**{k: v for k, v in changes.items() if v is not None})
        evaluation = DetectionEvalTransform(partial(preprocess_image, preset=preset))
        training = (
            evaluation
            if args.no_augment
            else detection_train_transform(preset.image_size, preset.normalization, preset.resize)
        )
        self.data = detection_data(args, training, evaluation, self.skip)
        self.preset = dataclasses.replace(preset, num_classes=len(self.data.class_names))  # the dataset's classes
        self.loss = SSDLiteLoss(self.preset.classification)
        self.input_size, self.size_flags = self.preset.image_size, f"--image-size {self.preset.image_size[0]}"

    def new_model(self) -> nn.Module:
        return build_ssdlite(self.preset, class_names=self.data.class_names)

    head_checkpoint_of = staticmethod(checkpoint_dict)
    collate = staticmethod(collate_detection)

    def compute_loss(self, model: nn.Module, batch: Any, device: torch.device) -> tuple[torch.Tensor, dict[str, float]]:
        images, targets = batch
        gt_boxes, gt_labels = pad_targets(
            [t["boxes"] for t in targets], [t["labels"] for t in targets], self.preset.image_size
        )
        box_regression, class_logits = model(images.to(device, non_blocking=True))
        anchors = self.model.anchors(self.preset.image_size, device)
        out = self.loss(box_regression, class_logits, anchors, gt_boxes.to(device), gt_labels.to(device))
        loss = out["loss"] * global_batch_share(out["num_positives"])  # normalised by the global batch's positives
        return loss, {
            "box_loss": out["box_loss"].item(),
            "cls_loss": out["cls_loss"].item(),
            "positives": out["num_positives"].item(),
        }

    def evaluate(self, model: nn.Module, loader, run_dir: Path, dist_info: DistInfo) -> dict[str, float] | None:
        if hasattr(base_dataset(loader.dataset), "coco"):
            result = evaluate_coco_detections(model, loader, dist_info, run_dir / "val", "Validation (COCO mAP)")
            return None if result is None else {"score": result.stats["AP"], **result.stats}
        voc = evaluate_voc_detections(model, loader, dist_info)
        return None if voc is None else {"score": voc["mAP"], "mAP_voc07": voc["mAP"]}


def build_parser() -> argparse.ArgumentParser:
    parser = new_parser("python train/ssdlite.py", __doc__)
    g = add_model_arguments(
        parser,
        PRESETS,
        "architecture, input size, anchors and normalisation (default: the "
        "preset of an SSDLite --weights, else ssdlite320_coco); the class count comes from the "
        "dataset",
        "a named detector, or a segmenter's backbone",
    )
    g.add_argument("--image-size", type=int, default=None, help="override the preset's square input size")
    add_data_arguments(parser, segmentation=False)
    add_engine_arguments(
        parser,
        lr=REFERENCE_LR * 32 / REFERENCE_BATCH,
        epochs=600,
        batch_size=32,
        weight_decay=4e-5,
        optimizer="sgd",
        schedule="cosine",
    )
    return parser


def main(argv: list[str] | None = None) -> Path:
    return train_main(build_parser(), SSDLiteTask, SSDLiteTask.name, argv)


if __name__ == "__main__":
    main()
