"""Segmentation evaluation, shared by training (periodic validation) and eval/voc_miou.py: every validation image
through the segmenter's own path (`deeplab_mobile.segmenter.masks_at_image_size`, single-scale or multi-scale + flip, the
paper's "MF"), scored at the image's own size into one streaming confusion matrix, summed over processes.

The loader's samples come from `datasets.transforms.SegmentationEvalTransform` with the head's preprocessing and
`collate_segmentation_eval`: (network inputs, masks at each image's size, the image regions in the inputs).
Per-class IoU, mIoU, pixel accuracy and mean class accuracy all derive from the matrix, so evaluation memory does
not grow with the dataset (VOC val is 1,449 images at full resolution).
"""

from __future__ import annotations

from typing import Iterator, Sequence

import numpy as np
import torch
from torch.utils.data import DataLoader
from tqdm import tqdm

from common.distributed import DistInfo, all_reduce_sum
from common.labels import IGNORE_INDEX
from deeplab_mobile.model import MobileDeepLabV3
from deeplab_mobile.segmenter import Region, masks_at_image_size


class ConfusionMatrix:
    """Rows: ground truth, columns: prediction; pixels labelled IGNORE_INDEX are not counted."""

    def __init__(self, num_classes: int, device: torch.device | str = "cpu") -> None:
        self.num_classes = num_classes
        self.matrix = torch.zeros(num_classes, num_classes, dtype=torch.int64, device=device)

    def update(self, prediction: torch.Tensor, target: torch.Tensor) -> None:
        """Add a batch of class maps (any shape, same for both)."""
        if prediction.shape != target.shape:
            raise ValueError(f"prediction shape {tuple(prediction.shape)} ≠ target shape {tuple(target.shape)}")
        target, prediction = target.to(self.matrix.device), prediction.to(self.matrix.device)
        valid = target != IGNORE_INDEX
        target, prediction = target[valid].long(), prediction[valid].long()
        if target.numel() and (int(target.max()) >= self.num_classes or int(target.min()) < 0):
            bad = sorted(set(target.unique().tolist()) - set(range(self.num_classes)))
            raise ValueError(
                f"ground-truth class ids {bad} are outside 0..{self.num_classes - 1} and not {IGNORE_INDEX}"
            )
        index = target * self.num_classes + prediction
        self.matrix += torch.bincount(index, minlength=self.num_classes**2).view(self.num_classes, self.num_classes)

    def reduce(self) -> "ConfusionMatrix":
        """Sum the matrices of all torchrun processes (no-op in a single process)."""
        all_reduce_sum(self.matrix)
        return self

    def compute(self) -> dict[str, float | list[float]]:
        """IoU per class (NaN for classes absent from both ground truth and prediction) and the summaries."""
        m = self.matrix.double().cpu().numpy()
        true_positive = np.diag(m)
        gt, pred = m.sum(axis=1), m.sum(axis=0)
        with np.errstate(divide="ignore", invalid="ignore"):
            iou = true_positive / (gt + pred - true_positive)
            class_accuracy = true_positive / gt
        total = m.sum()
        return {
            "mIoU": float(np.nanmean(iou)) if np.isfinite(iou).any() else 0.0,
            "pixel_accuracy": float(true_positive.sum() / total) if total else 0.0,
            "mean_class_accuracy": float(np.nanmean(class_accuracy)) if np.isfinite(class_accuracy).any() else 0.0,
            "per_class_iou": iou.tolist(),
        }


def image_mean_iou(prediction: np.ndarray, truth: np.ndarray, num_classes: int) -> float:
    """Mean IoU of one image over the classes its ground truth holds (255 ignored): the per-image figure the
    sample checks quote (TF's and ours), where classes absent from the image would only add noise."""
    matrix = ConfusionMatrix(num_classes)
    matrix.update(torch.from_numpy(prediction.astype(np.int64)), torch.from_numpy(truth.astype(np.int64)))
    present = sorted(set(np.unique(truth).tolist()) - {IGNORE_INDEX})
    return float(np.asarray(matrix.compute()["per_class_iou"])[present].mean())


Scored = tuple[list[torch.Tensor], list[Region], list[torch.Tensor], list[torch.Tensor]]


def predicted_masks(
    model: MobileDeepLabV3,
    loader: DataLoader,
    scales: Sequence[float] = (1.0,),
    flip: bool = False,
    progress: bool = False,
) -> Iterator[Scored]:
    """(network inputs, regions, predicted masks, ground-truth masks) per batch, masks at each image's size, on the
    CPU: what `Segmenter` predicts for the same images, pixel for pixel."""
    for batch in tqdm(loader, desc="segment", disable=not progress, dynamic_ncols=True):
        if batch is None:  # every sample of the batch was skipped by the dataset's skip policy
            continue
        inputs, masks, regions = batch
        yield (
            inputs,
            regions,
            masks_at_image_size(model, inputs, regions, [tuple(m.shape) for m in masks], scales, flip),
            masks,
        )


def evaluate_segmentation(
    model: MobileDeepLabV3,
    loader: DataLoader,
    dist: DistInfo,
    scales: Sequence[float] = (1.0,),
    flip: bool = False,
    progress: bool = False,
) -> ConfusionMatrix:
    """The confusion matrix of `model` on the loader, summed over every torchrun process."""
    matrix = ConfusionMatrix(model.num_classes, dist.device)  # NCCL reduces device tensors only
    for _, _, predicted, truth in predicted_masks(model, loader, scales, flip, progress):
        for one, expected in zip(predicted, truth, strict=True):
            matrix.update(one, expected)
    return matrix.reduce()
