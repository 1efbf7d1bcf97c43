"""Per-pixel cross-entropy for segmentation, with the VOC convention that 255 marks pixels to ignore."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from common.labels import IGNORE_INDEX


def check_target(target: torch.Tensor, num_classes: int, ignore_index: int = IGNORE_INDEX) -> None:
    """Raise ValueError naming the values of `target` that are neither a class id nor `ignore_index`.

    Cross-entropy would crash on them (CPU) or assert without a hint (CUDA), and masking them silently would
    hide a wrong label map or a model built with too few classes.
    """
    bad = ((target < 0) | (target >= num_classes)) & (target != ignore_index)
    if bool(bad.any()):
        values = sorted(int(v) for v in torch.unique(target[bad])[:10])
        raise ValueError(
            f"mask values {values} are not class ids of this {num_classes}-class model (0..{num_classes - 1}) "
            f"nor the ignore value {ignore_index}: check the label maps or build the model with more classes"
        )


def segmentation_loss(logits: torch.Tensor, target: torch.Tensor, ignore_index: int = IGNORE_INDEX) -> torch.Tensor:
    """Mean cross-entropy of `logits` [B, C, H, W] against class ids `target` [B, H, W] over non-ignored pixels;
    0 (not NaN) when a batch has no labelled pixel, which random crops of border-heavy masks can produce."""
    if logits.ndim != 4 or target.shape != (logits.shape[0], *logits.shape[2:]):
        raise ValueError(
            f"mask batch of shape {list(target.shape)} does not match logits {list(logits.shape)}: expected "
            f"{[logits.shape[0], *logits.shape[2:]]} (one class id per image pixel; resize masks with their images)"
        )
    check_target(target, logits.shape[1], ignore_index)
    target = target.long()
    total = F.cross_entropy(logits, target, ignore_index=ignore_index, reduction="sum")
    return total / (target != ignore_index).sum().clamp(min=1)
