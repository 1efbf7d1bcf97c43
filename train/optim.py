"""Optimiser, learning-rate schedule and the weight EMA."""

from __future__ import annotations

import argparse
import math
from typing import Any

import torch
from torch import nn


def parameter_groups(model: nn.Module, weight_decay: float) -> list[dict[str, Any]]:
    """No weight decay on BatchNorm parameters and biases (every tensor with fewer than 2 dimensions)."""
    decay, no_decay = [], []
    for p in model.parameters():
        if p.requires_grad:
            (decay if p.ndim > 1 else no_decay).append(p)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


def build_optimizer(model: nn.Module, args: argparse.Namespace) -> torch.optim.Optimizer:
    groups = parameter_groups(model, args.weight_decay)
    if args.optimizer == "sgd":
        return torch.optim.SGD(groups, lr=args.lr, momentum=args.momentum, nesterov=args.momentum > 0)
    if args.optimizer == "rmsprop":  # TF's RMSProp defaults as in the ssdlite_mobilenet_v2_coco config
        return torch.optim.RMSprop(groups, lr=args.lr, momentum=args.momentum, alpha=0.9, eps=1.0)
    return torch.optim.AdamW(groups, lr=args.lr)


def lr_factor(step: int, total: int, warmup: int, schedule: str) -> float:
    """Linear warmup, then cosine to zero or TF's poly (power 0.9) decay, as a factor of the peak lr."""
    if step < warmup:
        return (step + 1) / warmup
    progress = min(1.0, (step - warmup) / max(1, total - warmup))
    if schedule == "cosine":
        return 0.5 * (1.0 + math.cos(math.pi * progress))
    return (1.0 - progress) ** 0.9


def build_scheduler(
    optimizer: torch.optim.Optimizer, total_steps: int, warmup_steps: int, schedule: str
) -> torch.optim.lr_scheduler.LambdaLR:
    """Stepped once per optimiser step."""
    return torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: lr_factor(s, total_steps, warmup_steps, schedule))


def ramped_ema(decay: float, ramp_steps: float = 2000.0):
    """AveragedModel `multi_avg_fn` whose decay rises as decay·(1 - exp(-t/ramp_steps)) (yolov5/timm).

    A fixed 0.9998 keeps 90% of the random initial weights after 500 steps, so short runs would evaluate a
    near-untrained model; the ramp lets the average follow the weights early and settle later.
    """

    @torch.no_grad()
    def update(averaged: list[torch.Tensor], current: list[torch.Tensor], num_averaged: torch.Tensor) -> None:
        d = decay * (1.0 - math.exp(-(int(num_averaged) + 1) / ramp_steps))
        if averaged[0].is_floating_point():
            torch._foreach_lerp_(averaged, current, 1.0 - d)
        else:  # integer buffers (BatchNorm's num_batches_tracked) follow the model
            torch._foreach_copy_(averaged, current)

    return update
