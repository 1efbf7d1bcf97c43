"""Train Mobile DeepLabv3 on VOC trainaug, COCO (the 20 VOC classes), any VOC-layout dataset or the embedded
synthetic dataset.

    python train/deeplab.py                                        # synthetic data, CPU or GPU
    python train/deeplab.py --data voc --data-root /data/VOCdevkit --sbd-root /data/SBD/dataset
    torchrun --nproc_per_node=4 train/deeplab.py --data coco --data-root /data/coco --batch-size 32
    python train/deeplab.py --resume runs/deeplab/exp/last.pt

Defaults follow the DeepLab recipe (SGD, poly schedule, weight decay 4e-5, crop 513, random scale 0.5–2.0,
flip; lr 0.01 at batch 16 as common PyTorch reproductions use); results go to runs/deeplab/<name>/.
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
from common.labels import IGNORE_INDEX
from datasets.loading import collate_segmentation
from datasets.sources import add_data_arguments, segmentation_data
from datasets.transforms import (
    segmentation_eval_transform,
    segmentation_train_transform,
)
from deeplab_mobile.checkpoint import checkpoint_dict
from deeplab_mobile.loss import segmentation_loss
from deeplab_mobile.presets import PRESETS, build_deeplab, get_preset
from eval.segmentation import evaluate_segmentation
from train.flags import add_engine_arguments
from train.freeze import add_freeze_argument
from train.head_task import HeadTask
from train.main import train_main
from train.task import global_batch_share
from train.transfer import preset_like_source, source_conventions


class DeepLabTask(HeadTask):
    """Mobile DeepLabv3 for the training engine: model, data, pixel cross-entropy and mIoU validation."""

    name = "deeplab"

    def __init__(self, args: argparse.Namespace) -> None:
        super().__init__(args)
        preset = get_preset(args.preset or "mnv2_os16")
        self.bn_eps = None  # the builder's default, unless fine-tuning keeps the source's (not a preset field)
        if self.source is not None and args.preset is None:  # fine-tuning keeps the source's conventions
            preset = preset_like_source(preset, self.source)
            self.bn_eps = source_conventions(self.source).get("bn_eps")
        if args.width_mult is not None:
            preset = dataclasses.replace(preset, width_mult=args.width_mult)
        crop = args.crop_size or preset.crop_size
        evaluation = segmentation_eval_transform(crop, preset.normalization)
        training = (evaluation if args.no_augment
                    else segmentation_train_transform(crop, (args.min_scale, args.max_scale), preset.normalization))
        self.data = segmentation_data(args, training, evaluation, self.skip)
        self.num_classes = len(self.data.class_names)
        self.preset = dataclasses.replace(preset, num_classes=self.num_classes, crop_size=crop)  # what was trained

    def new_model(self) -> nn.Module:
        extra = {} if self.bn_eps is None else {"bn_eps": self.bn_eps}
        return build_deeplab(self.preset, class_names=self.data.class_names, **extra)

    def collate(self, samples: list[Any]):
        return collate_segmentation(samples)

    def compute_loss(self, model: nn.Module, batch: Any, device: torch.device) -> tuple[torch.Tensor, dict[str, float]]:
        images, masks = batch
        masks = masks.to(device, non_blocking=True)
        loss = segmentation_loss(model(images.to(device, non_blocking=True)), masks)
        return loss * global_batch_share((masks != IGNORE_INDEX).sum()), {}  # mean over the global batch's pixels

    def evaluate(self, model: nn.Module, loader, run_dir: Path, dist_info: DistInfo) -> dict[str, float] | None:
        metrics = evaluate_segmentation(model, loader, self.num_classes, dist_info).compute()
        if not dist_info.is_main:
            return None
        return {"score": metrics["mIoU"], "mIoU": metrics["mIoU"], "pixel_accuracy": metrics["pixel_accuracy"]}

    def head_checkpoint(self) -> dict[str, Any]:
        return checkpoint_dict(self.model)


def build_parser() -> argparse.ArgumentParser:
    parser = new_parser("python train/deeplab.py", __doc__)
    g = parser.add_argument_group("model")
    g.add_argument("--preset", default=None, choices=[p.name for p in PRESETS],
                   help="architecture and input conventions (default: mnv2_os16, the paper's row, padding and "
                        "normalising like --weights); the class count comes from the dataset")  # fmt: skip
    g.add_argument("--width-mult", type=float, default=None, help="override the preset's width multiplier")
    g.add_argument("--weights", default=None,
                   help="start from: a weights name (e.g. IMAGENET1K_V1, a named segmenter or detector: its "
                        "backbone), a checkpoint file, or none; whatever fits is kept, class rows by class name, and "
                        "a transfer report says what (default: IMAGENET1K_V1; none for --data synthetic)")  # fmt: skip
    add_freeze_argument(g)
    g = parser.add_argument_group("augmentation")
    g.add_argument("--crop-size", type=int, default=None, help="training crop (default: the preset's, 513)")
    g.add_argument("--min-scale", type=float, default=0.5, help="random scale lower bound (default: 0.5)")
    g.add_argument("--max-scale", type=float, default=2.0, help="random scale upper bound (default: 2.0)")
    add_data_arguments(parser, segmentation=True)
    add_engine_arguments(parser, lr=0.01, epochs=50, batch_size=16, weight_decay=4e-5, optimizer="sgd",
                         schedule="poly")  # fmt: skip
    return parser


def main(argv: list[str] | None = None) -> Path:
    return train_main(build_parser(), DeepLabTask, DeepLabTask.name, argv)


if __name__ == "__main__":
    main()
