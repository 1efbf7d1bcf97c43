"""Streaming segmentation metrics: one confusion matrix, updated batch by batch, summed over processes.

Per-class IoU, mIoU, pixel accuracy and mean class accuracy all derive from it, so evaluation memory does
not grow with the dataset (VOC val is 1,449 images at full resolution).
"""

from __future__ import annotations

import numpy as np
import torch

from common.distributed import all_reduce_sum
from common.labels import IGNORE_INDEX


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
            raise ValueError(f"ground-truth class ids {bad} are outside 0..{self.num_classes - 1} "
                             f"and not {IGNORE_INDEX}")  # fmt: skip
        index = target * self.num_classes + prediction
        self.matrix += torch.bincount(index, minlength=self.num_classes**2).view(
            self.num_classes, self.num_classes
        )

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
