"""SSD anchors exactly as TF's `multiple_grid_anchor_generator.create_ssd_anchors` makes them, and what works against
them: TF's box coder (`encode_boxes` / `decode_boxes`) and its matching of ground truth to anchors (`match_anchors`).

Order matters for imported weights: TF lays anchors out map by map, then row, column, box within the cell, which
is also the order in which the prediction heads' outputs are flattened. Anchors are (cx, cy, w, h) normalised to
the input image, not clipped (TF does not clip them either).
"""

from __future__ import annotations

import math

import torch
from torchvision.ops import box_convert, box_iou

NUM_FEATURE_MAPS = 6


def box_specs(
    min_scale: float, max_scale: float, aspect_ratios: tuple[float, ...], reduce_first_map: bool
) -> list[list[tuple[float, float]]]:
    """(scale, aspect ratio) of every box of a cell, per feature map.

    Scales grow linearly from `min_scale` to `max_scale`; each map adds one box of ratio 1 at the geometric mean of
    its scale and the next (1.0 after the last). TF's reduced first map has 3 boxes: (0.1, 1), (s0, 2), (s0, 1/2).
    """
    n = NUM_FEATURE_MAPS
    scales = [min_scale + (max_scale - min_scale) * i / (n - 1) for i in range(n)] + [1.0]
    specs = []
    for k in range(n):
        if k == 0 and reduce_first_map:
            specs.append([(0.1, 1.0), (scales[0], 2.0), (scales[0], 0.5)])
        else:
            layer = [(scales[k], ratio) for ratio in aspect_ratios]
            layer.append((math.sqrt(scales[k] * scales[k + 1]), 1.0))
            specs.append(layer)
    return specs


def feature_map_sizes(image_size: tuple[int, int]) -> list[tuple[int, int]]:
    """Cells of the six maps: strides 16 and 32 of the backbone, then four stride-2 extra layers.

    Every stride-2 layer maps n to ceil(n / 2), with symmetric and with TF "SAME" padding alike, so the sizes
    follow from the input size without running the network: 300 → 19, 10, 5, 3, 2, 1; 320 → 20, 10, 5, 3, 2, 1.
    """
    h, w = image_size
    for _ in range(4):
        h, w = -(-h // 2), -(-w // 2)
    sizes = []
    for _ in range(NUM_FEATURE_MAPS):
        sizes.append((h, w))
        h, w = -(-h // 2), -(-w // 2)
    return sizes


class AnchorGenerator:
    """Anchors per input size, computed once and cached per (size, device, dtype)."""

    def __init__(
        self,
        min_scale: float = 0.2,
        max_scale: float = 0.95,
        aspect_ratios: tuple[float, ...] = (1.0, 2.0, 0.5, 3.0, 0.3333),
        reduce_first_map: bool = True,
    ) -> None:
        self.specs = box_specs(min_scale, max_scale, tuple(aspect_ratios), reduce_first_map)
        self.num_anchors_per_location = [len(s) for s in self.specs]
        self._cache: dict[tuple[tuple[int, int], torch.device, torch.dtype], torch.Tensor] = {}

    def __call__(
        self, image_size: tuple[int, int], device: torch.device | str = "cpu", dtype: torch.dtype = torch.float32
    ) -> torch.Tensor:
        """[A, 4] anchors (cx, cy, w, h) in [0, 1] units of the input for an image of `image_size` (h, w)."""
        key = ((int(image_size[0]), int(image_size[1])), torch.device(device), dtype)
        if key not in self._cache:
            self._cache[key] = self._generate(key[0]).to(device=key[1], dtype=dtype)
        return self._cache[key]

    def num_anchors(self, image_size: tuple[int, int]) -> int:
        return sum(
            h * w * k for (h, w), k in zip(feature_map_sizes(image_size), self.num_anchors_per_location, strict=True)
        )

    def _generate(self, image_size: tuple[int, int]) -> torch.Tensor:
        im_h, im_w = image_size
        # TF scales the unit base anchor so that boxes stay square in pixels on non-square inputs.
        base_h, base_w = min(im_h, im_w) / im_h, min(im_h, im_w) / im_w
        per_map = []
        for (grid_h, grid_w), specs in zip(feature_map_sizes(image_size), self.specs, strict=True):
            scales = torch.tensor([s for s, _ in specs], dtype=torch.float64)
            ratio_sqrt = torch.tensor([r for _, r in specs], dtype=torch.float64).sqrt()
            heights, widths = scales / ratio_sqrt * base_h, scales * ratio_sqrt * base_w
            cy = (torch.arange(grid_h, dtype=torch.float64) + 0.5) / grid_h
            cx = (torch.arange(grid_w, dtype=torch.float64) + 0.5) / grid_w
            k = len(specs)
            shape = (grid_h, grid_w, k)
            per_map.append(
                torch.stack(
                    [
                        cx.view(1, -1, 1).expand(shape),
                        cy.view(-1, 1, 1).expand(shape),
                        widths.view(1, 1, -1).expand(shape),
                        heights.view(1, 1, -1).expand(shape),
                    ],
                    dim=-1,
                ).reshape(-1, 4)
            )
        return torch.cat(per_map)


# ---- TF's `FasterRcnnBoxCoder` with scales (10, 10, 5, 5), in (x, y, w, h) order. TF's box predictor emits
# (ty, tx, th, tw); our heads emit (tx, ty, tw, th) and the importer permutes the predictor's output channels
# accordingly, so the same numbers come out. Boxes are (x0, y0, x1, y1), anchors (cx, cy, w, h), both in the same
# units (normalised here).

BOX_CODER_SCALES = (10.0, 10.0, 5.0, 5.0)
# TF adds this to sizes before dividing or taking logs, so degenerate boxes encode to finite numbers.
_EPS = 1e-8
# Cap on decoded log-sizes (torchvision's value): a wild prediction cannot overflow exp() during training.
_MAX_LOG_SIZE = math.log(1000.0 / 16)


def encode_boxes(boxes: torch.Tensor, anchors: torch.Tensor) -> torch.Tensor:
    """Regression targets [..., 4] for `boxes` [..., 4] relative to `anchors` (broadcastable)."""
    w = boxes[..., 2] - boxes[..., 0] + _EPS
    h = boxes[..., 3] - boxes[..., 1] + _EPS
    cx = boxes[..., 0] + 0.5 * w
    cy = boxes[..., 1] + 0.5 * h
    aw = anchors[..., 2] + _EPS
    ah = anchors[..., 3] + _EPS
    sx, sy, sw, sh = BOX_CODER_SCALES
    return torch.stack(
        [
            sx * (cx - anchors[..., 0]) / aw,
            sy * (cy - anchors[..., 1]) / ah,
            sw * torch.log(w / aw),
            sh * torch.log(h / ah),
        ],
        dim=-1,
    )


def decode_boxes(deltas: torch.Tensor, anchors: torch.Tensor) -> torch.Tensor:
    """Boxes (x0, y0, x1, y1) [..., 4] from regression outputs `deltas` [..., 4] and `anchors` (broadcastable)."""
    sx, sy, sw, sh = BOX_CODER_SCALES
    cx = deltas[..., 0] / sx * anchors[..., 2] + anchors[..., 0]
    cy = deltas[..., 1] / sy * anchors[..., 3] + anchors[..., 1]
    half_w = 0.5 * torch.exp((deltas[..., 2] / sw).clamp(max=_MAX_LOG_SIZE)) * anchors[..., 2]
    half_h = 0.5 * torch.exp((deltas[..., 3] / sh).clamp(max=_MAX_LOG_SIZE)) * anchors[..., 3]
    return torch.stack([cx - half_w, cy - half_h, cx + half_w, cy + half_h], dim=-1)


# ---- TF's `ArgMaxMatcher` (IoU threshold, every object forced onto its best anchor), for a batch of padded targets.


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
