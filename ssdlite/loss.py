"""SSD training loss over a whole batch: matching, smooth-L1 on matched anchors, classification with 3:1 hard
negative mining, all as batched tensor ops (no Python loop over images).

Targets are padded tensors: `gt_boxes` [B, M, 4] (x0, y0, x1, y1) normalised to [0, 1] and `gt_labels` [B, M] with
classes 1..C-1; an entry is an object when its label is at least 1 and its box has positive area, so padding is
label 0 with a zero box (what `pad_targets` writes).
"""

from __future__ import annotations

from typing import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from ssdlite.anchors import encode_boxes, match_anchors
from ssdlite.presets import Classification


def pad_targets(
    boxes: Sequence[torch.Tensor], labels: Sequence[torch.Tensor], image_size: tuple[int, int]
) -> tuple[torch.Tensor, torch.Tensor]:
    """Stack per-image boxes (pixels of the network input, (x0, y0, x1, y1)) and labels into the padded,
    normalised tensors the loss takes. Collate functions can call this once per batch."""
    if len(boxes) != len(labels):
        raise ValueError(f"{len(boxes)} box tensors but {len(labels)} label tensors")
    h, w = image_size
    scale = torch.tensor([w, h, w, h], dtype=torch.float32)
    gt_boxes = nn.utils.rnn.pad_sequence(
        [b.reshape(-1, 4).float() / scale.to(b.device) for b in boxes], batch_first=True
    )
    gt_labels = nn.utils.rnn.pad_sequence([lab.reshape(-1).long() for lab in labels], batch_first=True)
    return gt_boxes, gt_labels


def object_mask(gt_boxes: torch.Tensor, gt_labels: torch.Tensor) -> torch.Tensor:
    """[B, M] True for real objects, False for padding (label 0 or a box without area)."""
    return (gt_labels > 0) & (gt_boxes[..., 2] > gt_boxes[..., 0]) & (gt_boxes[..., 3] > gt_boxes[..., 1])


class SSDLiteLoss(nn.Module):
    """Smooth-L1 box loss + softmax cross-entropy or sigmoid BCE, both normalised by the number of matched anchors.

    Sigmoid follows TF's `weighted_sigmoid` loss: one-hot targets over all C columns, background column included,
    summed per anchor. Hard negative mining keeps, per image, the `neg_pos_ratio` × positives (at least
    `min_negatives`) background anchors with the highest classification loss (TF: 3 and 3).
    """

    def __init__(
        self,
        classification: Classification,
        iou_threshold: float = 0.5,
        neg_pos_ratio: int = 3,
        min_negatives: int = 3,
        box_weight: float = 1.0,
    ) -> None:
        super().__init__()
        if classification not in ("sigmoid", "softmax"):
            raise ValueError(f"classification must be 'sigmoid' or 'softmax', got {classification!r}")
        self.classification = classification
        self.iou_threshold = iou_threshold
        self.neg_pos_ratio = neg_pos_ratio
        self.min_negatives = min_negatives
        self.box_weight = box_weight

    def forward(
        self,
        box_regression: torch.Tensor,
        class_logits: torch.Tensor,
        anchors: torch.Tensor,
        gt_boxes: torch.Tensor,
        gt_labels: torch.Tensor,
    ) -> dict[str, torch.Tensor]:
        """box_regression [B, A, 4], class_logits [B, A, C], anchors [A, 4] (cx, cy, w, h normalised), padded targets.

        Returns "loss" (to backpropagate), "box_loss", "cls_loss" and "num_positives" (matched anchors, detached).
        """
        num_classes = class_logits.shape[-1]
        if gt_labels.numel() and int(gt_labels.max()) >= num_classes:
            raise ValueError(
                f"target label {int(gt_labels.max())} does not exist in a model with {num_classes} classes "
                "(background included): the dataset's class count disagrees with the model's"
            )
        with torch.no_grad():
            matches = match_anchors(gt_boxes, object_mask(gt_boxes, gt_labels), anchors, self.iou_threshold)
        positive = matches >= 0
        matched = matches.clamp(min=0)
        num_positives = positive.sum()
        normaliser = num_positives.clamp(min=1).to(box_regression.dtype)

        matched_boxes = gt_boxes.gather(1, matched[..., None].expand(-1, -1, 4))[positive]
        box_targets = encode_boxes(matched_boxes, anchors.expand_as(box_regression)[positive])
        box_loss = F.smooth_l1_loss(box_regression[positive], box_targets, beta=1.0, reduction="sum") / normaliser

        target_labels = torch.where(positive, gt_labels.gather(1, matched), torch.zeros_like(matched))
        per_anchor = self._classification_loss(class_logits, target_labels)
        selected = positive | self._hard_negatives(per_anchor.detach(), positive)
        cls_loss = per_anchor[selected].sum() / normaliser

        return {
            "loss": self.box_weight * box_loss + cls_loss,
            "box_loss": box_loss.detach(),
            "cls_loss": cls_loss.detach(),
            "num_positives": num_positives.detach(),
        }

    def _classification_loss(self, class_logits: torch.Tensor, target_labels: torch.Tensor) -> torch.Tensor:
        """Unreduced loss per anchor: [B, A]."""
        if self.classification == "softmax":
            flat = F.cross_entropy(class_logits.flatten(0, 1), target_labels.flatten(), reduction="none")
            return flat.view_as(target_labels)
        # Σ_c BCE(x_c, onehot_c) = Σ_c softplus(x_c) − x_target: the same sum without a [B, A, C] one-hot tensor.
        target_logit = class_logits.gather(-1, target_labels[..., None]).squeeze(-1)
        return F.softplus(class_logits).sum(-1) - target_logit

    def _hard_negatives(self, loss: torch.Tensor, positive: torch.Tensor) -> torch.Tensor:
        """[B, A] mask of the background anchors with the highest loss, per image, ranked by one batched sort."""
        num_negatives = (self.neg_pos_ratio * positive.sum(1, keepdim=True)).clamp(min=self.min_negatives)
        order = loss.masked_fill(positive, -float("inf")).argsort(dim=1, descending=True)
        rank = order.argsort(dim=1)
        return (rank < num_negatives) & ~positive
