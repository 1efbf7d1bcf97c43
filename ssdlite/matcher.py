"""Anchor ↔ ground-truth matching of TF's `ArgMaxMatcher` (IoU threshold, every object forced onto its best anchor),
for a whole batch of padded targets at once."""

from __future__ import annotations

import torch
from torchvision.ops import box_convert, box_iou


def match_anchors(
    gt_boxes: torch.Tensor, valid: torch.Tensor, anchors: torch.Tensor, iou_threshold: float = 0.5
) -> torch.Tensor:
    """Index of the object each anchor is matched to, or -1 for background: [B, A] int64.

    gt_boxes: [B, M, 4] (x0, y0, x1, y1) padded per image; valid: [B, M] marks real objects; anchors: [A, 4]
    (cx, cy, w, h) in the units of `gt_boxes`. An anchor takes the object it overlaps most when that IoU is at least
    `iou_threshold`; then each object claims its best anchor regardless of IoU, the lowest object index winning
    when two objects claim the same anchor (TF's rule), so no object is left without an anchor.
    """
    batch, num_objects = valid.shape
    num_anchors = anchors.shape[0]
    if num_objects == 0:
        return torch.full((batch, num_anchors), -1, dtype=torch.int64, device=anchors.device)
    anchors_xyxy = box_convert(anchors, "cxcywh", "xyxy")
    iou = box_iou(gt_boxes.reshape(-1, 4), anchors_xyxy).view(batch, num_objects, num_anchors)
    iou = iou.masked_fill(~valid[..., None], -1.0)

    best_iou, best_object = iou.max(dim=1)
    matches = torch.where(best_iou >= iou_threshold, best_object, torch.full_like(best_object, -1))

    # Each object claims its best anchor; scatter_reduce("amin") keeps the lowest claimant, `num_objects` = none.
    best_anchor = iou.argmax(dim=2)  # [B, M]
    object_index = torch.arange(num_objects, device=iou.device).expand(batch, -1)
    claimant = torch.full_like(matches, num_objects).scatter_reduce_(
        1, best_anchor, object_index.masked_fill(~valid, num_objects), reduce="amin"
    )
    return torch.where(claimant < num_objects, claimant, matches)
