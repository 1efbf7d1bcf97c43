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
from pathlib import Path
from typing import Any

import torch
from torch import nn

from common.cli import new_parser
from common.distributed import DistInfo
from common.errors import WeightsError
from datasets.loading import collate_detection
from datasets.sources import add_data_arguments, detection_data
from datasets.transforms import detection_eval_transform, detection_train_transform
from eval.detection import (
    base_dataset,
    evaluate_coco_detections,
    evaluate_voc_detections,
)
from ssdlite.checkpoint import checkpoint_dict
from ssdlite.loss import SSDLiteLoss, pad_targets
from ssdlite.model import build_ssdlite
from ssdlite.presets import PRESETS, SSDLITE320_COCO, SSDLitePreset, get_preset
from train.flags import add_engine_arguments
from train.freeze import add_freeze_argument
from train.head_task import HeadTask
from train.main import train_main
from train.task import global_batch_share
from train.transfer import preset_like_source

REFERENCE_BATCH, REFERENCE_LR = 192, 0.15  # torchvision ssdlite320_mobilenet_v3_large: 8 GPUs × 24, lr 0.15


def source_preset(checkpoint: dict[str, Any], source: str) -> SSDLitePreset:
    """The preset an SSDLite checkpoint was made with: its anchors, padding, normalisation and scoring."""
    try:
        return SSDLitePreset.from_config(checkpoint["config"])
    except (KeyError, TypeError, ValueError) as e:
        raise WeightsError(f"{source}: unreadable SSDLite configuration: {e}") from e


class SSDLiteTask(HeadTask):
    """SSDLite for the training engine: model, data, batched loss and COCO/VOC validation."""

    name = "ssdlite"

    def __init__(self, args: argparse.Namespace) -> None:
        super().__init__(args)
        preset = get_preset(args.preset or SSDLITE320_COCO.name)
        if self.source is not None and args.preset is None:  # fine-tuning keeps the source's conventions
            preset = (source_preset(self.source, args.weights) if self.source.get("arch") == "ssdlite"
                      else preset_like_source(preset, self.source))  # fmt: skip
        if args.image_size is not None:
            preset = dataclasses.replace(preset, image_size=(args.image_size, args.image_size))
        if args.width_mult is not None:
            preset = dataclasses.replace(preset, width_mult=args.width_mult)
        evaluation = detection_eval_transform(preset.image_size, preset.normalization)
        training = evaluation if args.no_augment else detection_train_transform(preset.image_size, preset.normalization)
        self.data = detection_data(args, training, evaluation, self.skip)
        self.preset = dataclasses.replace(preset, num_classes=len(self.data.class_names))
        self.loss = SSDLiteLoss(self.preset.classification)

    def new_model(self) -> nn.Module:
        return build_ssdlite(self.preset, class_names=self.data.class_names)

    def collate(self, samples: list[Any]):
        return collate_detection(samples)

    def compute_loss(self, model: nn.Module, batch: Any, device: torch.device) -> tuple[torch.Tensor, dict[str, float]]:
        images, targets = batch
        gt_boxes, gt_labels = pad_targets([t["boxes"] for t in targets], [t["labels"] for t in targets],
                                          self.preset.image_size)  # fmt: skip
        box_regression, class_logits = model(images.to(device, non_blocking=True))
        anchors = self.model.anchors(self.preset.image_size, device)
        out = self.loss(box_regression, class_logits, anchors, gt_boxes.to(device), gt_labels.to(device))
        loss = out["loss"] * global_batch_share(out["num_positives"])  # normalised by the global batch's positives
        return loss, {"box_loss": out["box_loss"].item(), "cls_loss": out["cls_loss"].item(),
                      "positives": out["num_positives"].item()}  # fmt: skip

    def evaluate(self, model: nn.Module, loader, run_dir: Path, dist_info: DistInfo) -> dict[str, float] | None:
        if hasattr(base_dataset(loader.dataset), "coco"):
            result = evaluate_coco_detections(model, loader, dist_info, run_dir / "val", "Validation (COCO mAP)")
            return None if result is None else {"score": result.stats["AP"], **result.stats}
        voc = evaluate_voc_detections(model, loader, dist_info)
        return None if voc is None else {"score": voc["mAP"], "mAP_voc07": voc["mAP"]}

    def head_checkpoint(self) -> dict[str, Any]:
        return checkpoint_dict(self.model)


def build_parser() -> argparse.ArgumentParser:
    parser = new_parser("python train/ssdlite.py", __doc__)
    g = parser.add_argument_group("model")
    g.add_argument("--preset", default=None, choices=sorted(PRESETS),
                   help="architecture, input size, anchors and normalisation (default: the preset of an SSDLite "
                        "--weights, else ssdlite320_coco); the class count comes from the dataset")  # fmt: skip
    g.add_argument("--image-size", type=int, default=None, help="override the preset's square input size")
    g.add_argument("--width-mult", type=float, default=None, help="override the preset's width multiplier")
    g.add_argument("--weights", default=None,
                   help="start from: a weights name (e.g. IMAGENET1K_V1, a named detector or segmenter), a "
                        "checkpoint file, or none; whatever fits is kept, class rows by class name, and a transfer "
                        "report says what (default: IMAGENET1K_V1; none for --data synthetic)")  # fmt: skip
    add_freeze_argument(g)
    add_data_arguments(parser, segmentation=False)
    add_engine_arguments(parser, lr=REFERENCE_LR * 32 / REFERENCE_BATCH, epochs=600, batch_size=32,
                         weight_decay=4e-5, optimizer="sgd", schedule="cosine")  # fmt: skip
    return parser


def main(argv: list[str] | None = None) -> Path:
    return train_main(build_parser(), SSDLiteTask, SSDLiteTask.name, argv)


if __name__ == "__main__":
    main()
