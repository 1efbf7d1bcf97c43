"""Segmentation evaluation shared by training (periodic validation) and eval/voc_miou.py: predict every
validation image single-scale or multi-scale + flip (the paper's "MF"), and stream the confusion matrix."""

from __future__ import annotations

from typing import Iterator, Sequence

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader
from tqdm import tqdm

from common.distributed import DistInfo
from eval.segmentation_metrics import ConfusionMatrix

PAPER_MF_SCALES = (0.5, 0.75, 1.0, 1.25, 1.5, 1.75)  # DeepLabv3's multi-scale inputs; with flip this is "MF"


def predict_probabilities(model: nn.Module, images: torch.Tensor, scales: Sequence[float] = (1.0,),
                          flip: bool = False) -> torch.Tensor:  # fmt: skip
    """Class probabilities [B, C, H, W] averaged over input scales (and horizontal flips) at the input size."""
    size = images.shape[-2:]
    total = None
    for scale in scales:
        scaled = images if scale == 1.0 else F.interpolate(images, scale_factor=scale, mode="bilinear",
                                                           align_corners=False)  # fmt: skip
        views = [(scaled, False), (scaled.flip(-1), True)] if flip else [(scaled, False)]
        for view, flipped in views:
            logits = model(view)
            if flipped:
                logits = logits.flip(-1)
            if logits.shape[-2:] != size:
                logits = F.interpolate(logits, size=size, mode="bilinear", align_corners=False)
            probs = logits.softmax(dim=1)
            total = probs if total is None else total + probs
    return total / (len(scales) * (2 if flip else 1))


def predicted_masks(model: nn.Module, loader: DataLoader, device: torch.device, scales: Sequence[float] = (1.0,),
                    flip: bool = False, progress: bool = False,
                    ) -> Iterator[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]:  # fmt: skip
    """(images, predicted masks, ground-truth masks) per batch, all on the CPU."""
    for batch in tqdm(loader, desc="segment", disable=not progress, dynamic_ncols=True):
        if batch is None:  # every sample of the batch was skipped by the dataset's skip policy
            continue
        images, masks = batch
        probs = predict_probabilities(model, images.to(device, non_blocking=True), scales, flip)
        yield images, probs.argmax(1).cpu(), masks


def evaluate_segmentation(model: nn.Module, loader: DataLoader, num_classes: int, dist: DistInfo,
                          scales: Sequence[float] = (1.0,), flip: bool = False, progress: bool = False,
                          ) -> ConfusionMatrix:  # fmt: skip
    """The confusion matrix of `model` on the loader, summed over every torchrun process."""
    matrix = ConfusionMatrix(num_classes, dist.device)  # NCCL reduces device tensors only
    for _, predicted, truth in predicted_masks(model, loader, dist.device, scales, flip, progress):
        matrix.update(predicted, truth)
    return matrix.reduce()
