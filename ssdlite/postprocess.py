"""Raw head outputs → detections: decode, score, threshold, per-class NMS, top-k, original-pixel boxes.

The whole batch goes through one `batched_nms` call (groups = image × class), so there is no per-image loop on
the tensor work; only the final split into one dict per image is a Python list.
"""

from __future__ import annotations

from typing import Sequence

import torch
from torchvision.ops import batched_nms

from ssdlite.anchors import decode_boxes
from ssdlite.presets import Classification

Detections = dict[str, torch.Tensor]  # "boxes" [N, 4] float (x0, y0, x1, y1) pixels, "scores" [N], "labels" [N] int64


def class_scores(class_logits: torch.Tensor, classification: Classification) -> torch.Tensor:
    """Per-class probabilities without the background column: [B, A, C - 1]."""
    probs = class_logits.sigmoid() if classification == "sigmoid" else class_logits.softmax(dim=-1)
    return probs[..., 1:]


def decode_outputs(
    box_regression: torch.Tensor, class_logits: torch.Tensor, anchors: torch.Tensor, classification: Classification
) -> tuple[torch.Tensor, torch.Tensor]:
    """Boxes [B, A, 4] (x0, y0, x1, y1) normalised and clipped to the image (TF's clip window), and class scores
    [B, A, C - 1]: the fixed-shape half of post-processing, which exported graphs (tools/export.py) contain."""
    return decode_boxes(box_regression, anchors).clamp(0.0, 1.0), class_scores(class_logits, classification)


def postprocess(
    box_regression: torch.Tensor,
    class_logits: torch.Tensor,
    anchors: torch.Tensor,
    image_sizes: Sequence[tuple[int, int]],
    *,
    classification: Classification,
    score_threshold: float,
    nms_iou: float,
    pre_nms_topk: int,
    detections_per_image: int,
) -> list[Detections]:
    """Detections per image, boxes in pixels of `image_sizes` (h, w): the original images the inputs were resized from.

    Candidates are the `pre_nms_topk` best (anchor, class) pairs of an image scoring above `score_threshold`;
    labels are class indices 1..C-1 (0 is the background).
    """
    boxes, scores = decode_outputs(box_regression, class_logits, anchors, classification)
    return select_detections(
        boxes,
        scores,
        image_sizes,
        score_threshold=score_threshold,
        nms_iou=nms_iou,
        pre_nms_topk=pre_nms_topk,
        detections_per_image=detections_per_image,
    )


def select_detections(
    boxes: torch.Tensor,
    scores: torch.Tensor,
    image_sizes: Sequence[tuple[int, int]],
    *,
    score_threshold: float,
    nms_iou: float,
    pre_nms_topk: int,
    detections_per_image: int,
) -> list[Detections]:
    """`postprocess` from `decode_outputs`' boxes and scores on: threshold, top-k, per-class NMS, pixel boxes."""
    batch = scores.shape[0]
    num_classes = scores.shape[2] + 1  # the background has no score column
    if len(image_sizes) != batch:
        raise ValueError(f"{len(image_sizes)} image sizes for a batch of {batch}")
    scores = scores.reshape(batch, -1)

    top_scores, top_index = scores.topk(min(pre_nms_topk, scores.shape[1]), dim=1)
    anchor_index = torch.div(top_index, num_classes - 1, rounding_mode="floor")
    labels = top_index % (num_classes - 1) + 1
    image_index = torch.arange(batch, device=scores.device)[:, None].expand_as(top_index)
    boxes = boxes.gather(1, anchor_index[..., None].expand(-1, -1, 4))

    keep = top_scores > score_threshold
    boxes, top_scores, labels, image_index = boxes[keep], top_scores[keep], labels[keep], image_index[keep]
    kept = batched_nms(boxes, top_scores, image_index * num_classes + labels, nms_iou)  # by decreasing score
    kept = kept[torch.sort(image_index[kept], stable=True).indices]  # group by image, keeping score order

    sizes = torch.tensor([[w, h, w, h] for h, w in image_sizes], dtype=boxes.dtype, device=boxes.device)
    counts = torch.bincount(image_index[kept], minlength=batch).tolist()
    results = []
    for i, idx in enumerate(torch.split(kept, counts)):
        idx = idx[:detections_per_image]
        results.append({"boxes": boxes[idx] * sizes[i], "scores": top_scores[idx], "labels": labels[idx]})
    return results
