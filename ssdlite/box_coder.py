"""TF's `FasterRcnnBoxCoder` with scales (10, 10, 5, 5), in (x, y, w, h) order.

TF's box predictor emits (ty, tx, th, tw); our heads emit (tx, ty, tw, th) and the importer permutes the
predictor's output channels accordingly, so the same numbers come out. Boxes are (x0, y0, x1, y1), anchors
(cx, cy, w, h), both in the same units (normalised here).
"""

from __future__ import annotations

import math

import torch

SCALES = (10.0, 10.0, 5.0, 5.0)
# TF adds this to sizes before dividing or taking logs, so degenerate boxes encode to finite numbers.
_EPS = 1e-8
# Cap on decoded log-sizes (torchvision's value): a wild prediction cannot overflow exp() during training.
_MAX_LOG_SIZE = math.log(1000.0 / 16)


def encode(boxes: torch.Tensor, anchors: torch.Tensor) -> torch.Tensor:
    """Regression targets [..., 4] for `boxes` [..., 4] relative to `anchors` (broadcastable)."""
    w = boxes[..., 2] - boxes[..., 0] + _EPS
    h = boxes[..., 3] - boxes[..., 1] + _EPS
    cx = boxes[..., 0] + 0.5 * w
    cy = boxes[..., 1] + 0.5 * h
    aw = anchors[..., 2] + _EPS
    ah = anchors[..., 3] + _EPS
    sx, sy, sw, sh = SCALES
    return torch.stack(
        [
            sx * (cx - anchors[..., 0]) / aw,
            sy * (cy - anchors[..., 1]) / ah,
            sw * torch.log(w / aw),
            sh * torch.log(h / ah),
        ],
        dim=-1,
    )


def decode(deltas: torch.Tensor, anchors: torch.Tensor) -> torch.Tensor:
    """Boxes (x0, y0, x1, y1) [..., 4] from regression outputs `deltas` [..., 4] and `anchors` (broadcastable)."""
    sx, sy, sw, sh = SCALES
    cx = deltas[..., 0] / sx * anchors[..., 2] + anchors[..., 0]
    cy = deltas[..., 1] / sy * anchors[..., 3] + anchors[..., 1]
    half_w = 0.5 * torch.exp((deltas[..., 2] / sw).clamp(max=_MAX_LOG_SIZE)) * anchors[..., 2]
    half_h = 0.5 * torch.exp((deltas[..., 3] / sh).clamp(max=_MAX_LOG_SIZE)) * anchors[..., 3]
    return torch.stack([cx - half_w, cy - half_h, cx + half_w, cy + half_h], dim=-1)
