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
from functools import partial
from pathlib import Path
from typing import Any

import torch
from torch import nn

from common.cli import new_parser
from common.distributed import DistInfo
from common.labels import IGNORE_INDEX
from datasets.loading import collate_segmentation, collate_segmentation_eval
from datasets.sources import add_data_arguments, segmentation_data
from datasets.transforms import SegmentationEvalTransform, segmentation_train_transform
from deeplab_mobile.checkpoint import checkpoint_dict
from deeplab_mobile.loss import segmentation_loss
from deeplab_mobile.model import build_deeplab
from deeplab_mobile.presets import PRESETS, get_preset
from deeplab_mobile.segmenter import preprocess_image
from eval.segmentation import evaluate_segmentation
from train.engine import train_main
from train.flags import add_engine_arguments, add_model_arguments
from train.task import Task, global_batch_share
from train.transfer import preset_like_source


class DeepLabTask(Task):
    """Mobile DeepLabv3 for the training engine: model, data, pixel cross-entropy and mIoU validation."""

    name = "deeplab"

    def __init__(self, args: argparse.Namespace) -> None:
        default_weights = "none" if args.data == "synthetic" else "IMAGENET1K_V1"  # synthetic shapes: from scratch
        super().__init__(args.weights or default_weights, args.freeze, args.skip_bad_samples)
        preset = get_preset(args.preset or "mnv2_os16")
        if self.source is not None and args.preset is None:  # fine-tuning keeps the source's conventions
            preset = preset_like_source(preset, self.source)
        changes = {"width_mult": args.width_mult, "crop_size": args.crop_size}
        preset = preset.derive(**{k: v for k, v in changes.items() if v is not None})
        training = segmentation_train_transform(
            preset.crop_size,
            (args.min_scale, args.max_scale),
            preset.normalization,
            preset.resize,
            augment=not args.no_augment,
        )
        evaluation = SegmentationEvalTransform(partial(preprocess_image, preset=preset))
        self.data = segmentation_data(args, training, evaluation, self.skip)
        self.preset = dataclasses.replace(preset, num_classes=len(self.data.class_names))  # the dataset's classes
        self.input_size, self.size_flags = (preset.crop_size,) * 2, f"--crop-size {preset.crop_size}"

    def new_model(self) -> nn.Module:
        return build_deeplab(self.preset, class_names=self.data.class_names)

    head_checkpoint_of = staticmethod(checkpoint_dict)
    collate = staticmethod(collate_segmentation)
    eval_collate = staticmethod(collate_segmentation_eval)  # what SegmentationEvalTransform's samples batch into

    def compute_loss(self, model: nn.Module, batch: Any, device: torch.device) -> tuple[torch.Tensor, dict[str, float]]:
        images, masks = batch
        masks = masks.to(device, non_blocking=True)
        loss = segmentation_loss(model(images.to(device, non_blocking=True)), masks)
        return loss * global_batch_share((masks != IGNORE_INDEX).sum()), {}  # mean over the global batch's pixels

    def evaluate(self, model: nn.Module, loader, run_dir: Path, dist_info: DistInfo) -> dict[str, float] | None:
        metrics = evaluate_segmentation(model, loader, dist_info).compute()
        if not dist_info.is_main:
            return None
        return {"score": metrics["mIoU"], "mIoU": metrics["mIoU"], "pixel_accuracy": metrics["pixel_accuracy"]}


def build_parser() -> argparse.ArgumentParser:
    parser = new_parser("python train/deeplab.py", __doc__)
    add_model_arguments(
        parser,
        PRESETS,
        "architecture and input conventions (default: mnv2_os16, the paper's row, "
        "padding and normalising like --weights); the class count comes from the dataset",
        "a named segmenter, or a detector's backbone",
    )
    g = parser.add_argument_group("augmentation")
    g.add_argument("--crop-size", type=int, default=None, help="training crop (default: the preset's, 513)")
    g.add_argument("--min-scale", type=float, default=0.5, help="random scale lower bound (default: 0.5)")
    g.add_argument("--max-scale", type=float, default=2.0, help="random scale upper bound (default: 2.0)")
    add_data_arguments(parser, segmentation=True)
    add_engine_arguments(parser, lr=0.01, epochs=50, batch_size=16, weight_decay=4e-5, optimizer="sgd", schedule="poly")
    return parser


def main(argv: list[str] | None = None) -> Path:
    return train_main(build_parser(), DeepLabTask, DeepLabTask.name, argv)


if __name__ == "__main__":
    main()
