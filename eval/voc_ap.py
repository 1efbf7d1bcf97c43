"""PASCAL VOC detection AP: the VOC07 11-point and VOC2010+ area metrics, with `difficult` objects
neither rewarded nor penalised, as the VOC devkit counts them.

Boxes are xyxy in pixels; IoU uses torchvision's continuous-coordinate convention (no "+1" pixel), which
moves AP by a few hundredths of a point against the original MATLAB devkit.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torchvision.ops import box_iou


@dataclass
class ImageDetections:
    boxes: torch.Tensor  # [N, 4] xyxy
    scores: torch.Tensor  # [N]
    labels: torch.Tensor  # [N] contiguous class ids 1..K


@dataclass
class ImageGroundTruth:
    boxes: torch.Tensor  # [M, 4] xyxy
    labels: torch.Tensor  # [M]
    difficult: torch.Tensor  # [M] bool


def average_precision(recall: np.ndarray, precision: np.ndarray, use_07_metric: bool) -> float:
    """Area under the PR curve: 11 recall points (VOC2007) or the exact monotone envelope (VOC2010+)."""
    if use_07_metric:
        points = [precision[recall >= t].max() if (recall >= t).any() else 0.0 for t in np.linspace(0, 1, 11)]
        return float(np.mean(points))
    r = np.concatenate([[0.0], recall, [1.0]])
    p = np.concatenate([[0.0], precision, [0.0]])
    p = np.maximum.accumulate(p[::-1])[::-1]
    changes = np.nonzero(r[1:] != r[:-1])[0]
    return float(np.sum((r[changes + 1] - r[changes]) * p[changes + 1]))


def _match_image(det: ImageDetections, gt: ImageGroundTruth, label: int, iou_threshold: float):
    """Greedy matching in score order inside one image: (scores, is_tp, is_counted) for class `label`."""
    d = det.labels == label
    scores, boxes = det.scores[d], det.boxes[d]
    order = torch.argsort(scores, descending=True)
    scores, boxes = scores[order], boxes[order]
    g = gt.labels == label
    gt_boxes, difficult = gt.boxes[g], gt.difficult[g]
    tp = np.zeros(len(scores), dtype=bool)
    counted = np.ones(len(scores), dtype=bool)
    if len(gt_boxes) and len(boxes):
        iou = box_iou(boxes, gt_boxes).numpy()
        taken = np.zeros(len(gt_boxes), dtype=bool)
        best = iou.argmax(axis=1)
        for i, j in enumerate(best):
            if iou[i, j] < iou_threshold:
                continue
            if difficult[j]:
                counted[i] = False  # a hit on a difficult object is ignored
            elif not taken[j]:
                tp[i], taken[j] = True, True
    return scores.numpy(), tp, counted


def voc_detection_ap(
    detections: list[ImageDetections],
    ground_truths: list[ImageGroundTruth],
    num_classes: int,
    iou_threshold: float = 0.5,
    use_07_metric: bool = True,
) -> list[float]:
    """AP for each class 1..num_classes-1 (index 0, background, is skipped); NaN for classes without
    non-difficult ground truth."""
    aps = []
    for label in range(1, num_classes):
        parts = [_match_image(d, g, label, iou_threshold) for d, g in zip(detections, ground_truths, strict=True)]
        positives = sum(int(((g.labels == label) & ~g.difficult).sum()) for g in ground_truths)
        if positives == 0:
            aps.append(float("nan"))
            continue
        scores = np.concatenate([p[0] for p in parts]) if parts else np.zeros(0)
        tp = np.concatenate([p[1] for p in parts]) if parts else np.zeros(0, bool)
        counted = np.concatenate([p[2] for p in parts]) if parts else np.zeros(0, bool)
        order = np.argsort(-scores, kind="stable")
        tp = tp[order][counted[order]]  # detections of difficult objects drop out of the ranking
        tp_cum = np.cumsum(tp)
        fp_cum = np.cumsum(~tp)
        recall = tp_cum / positives
        precision = tp_cum / np.maximum(tp_cum + fp_cum, np.finfo(np.float64).eps)
        aps.append(average_precision(recall, precision, use_07_metric))
    return aps
