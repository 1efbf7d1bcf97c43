"""`--freeze N`: keep the first N backbone blocks as the source trained them, for small datasets.

Frozen means no gradient *and* fixed BatchNorm statistics: a frozen block whose running averages still moved would
feed the trained layers above it features that drift with every batch of the new data.
"""

from __future__ import annotations

import argparse

from backbone.mobilenetv2 import NUM_BLOCKS, MobileNetV2
from train.batchnorm import freeze_batchnorm


def block_count(text: str) -> int:
    """argparse type of --freeze: 0..NUM_BLOCKS, anything else a flag error naming the range."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number of blocks") from None
    if not 0 <= value <= NUM_BLOCKS:
        raise argparse.ArgumentTypeError(f"{value}: the MobileNetV2 backbone has {NUM_BLOCKS} blocks (0..{NUM_BLOCKS})")
    return value


def add_freeze_argument(group: argparse._ArgumentGroup) -> None:
    group.add_argument("--freeze", type=block_count, default=0, metavar="N",
                       help=f"freeze the stem and the first N of the backbone's {NUM_BLOCKS} blocks, BatchNorm "
                            "statistics included (small datasets; default: 0)")  # fmt: skip


def freeze_backbone(backbone: MobileNetV2, blocks: int) -> list[str]:
    """Freeze the stem and blocks 0..blocks-1 in place (nothing for 0); the names of the frozen layers."""
    if not 0 <= blocks <= len(backbone.blocks):
        raise ValueError(f"cannot freeze {blocks} blocks of a backbone with {len(backbone.blocks)}")
    layers = {"stem": backbone.stem, **{f"block{i}": backbone.blocks[i] for i in range(blocks)}} if blocks else {}
    for layer in layers.values():
        layer.requires_grad_(False)
        freeze_batchnorm(layer)
    return list(layers)
