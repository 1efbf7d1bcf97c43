"""The flags every training entry point shares: definitions and checks (train/resume.py restores them on --resume)."""

from __future__ import annotations

import argparse
import os
from collections.abc import Iterable
from pathlib import Path

from common.cli import check_flags
from train.batchnorm import add_freeze_argument

COMPILE_CHOICES = ("auto", "on", "off")  # --compile; what auto decides: train.engine.compile_decision


def add_model_arguments(
    parser: argparse.ArgumentParser, presets: Iterable[str], preset_help: str, heads: str
) -> argparse._ArgumentGroup:
    """The "model" flags both heads take: --preset (one of `presets`), --width-mult, --weights (`heads`: which named
    models it takes whole, e.g. "a named detector or segmenter") and --freeze; the group, for a head's own flags."""
    g = parser.add_argument_group("model")
    g.add_argument("--preset", default=None, choices=sorted(presets), help=preset_help)
    g.add_argument("--width-mult", type=float, default=None, help="override the preset's width multiplier")
    g.add_argument(
        "--weights",
        default=None,
        help=f"start from: a weights name (e.g. IMAGENET1K_V1, {heads}), a checkpoint file, or none; "
        "whatever fits is kept, class rows by class name, and a transfer report says what (default: "
        "IMAGENET1K_V1; none for --data synthetic)",
    )
    add_freeze_argument(g)
    return g


def add_engine_arguments(
    parser: argparse.ArgumentParser,
    *,
    lr: float,
    epochs: int,
    batch_size: int,
    weight_decay: float,
    optimizer: str,
    schedule: str,
) -> None:
    """Flags every training entry point shares; the task passes its recipe's defaults."""
    g = parser.add_argument_group("training")
    g.add_argument("--epochs", type=int, default=epochs, help=f"training epochs (default: {epochs})")
    g.add_argument(
        "--batch-size",
        type=int,
        default=batch_size,
        help=f"total batch size over all processes (default: {batch_size})",
    )
    g.add_argument("--lr", type=float, default=lr, help=f"peak learning rate (default: {lr})")
    g.add_argument(
        "--optimizer", choices=("sgd", "rmsprop", "adamw"), default=optimizer, help=f"(default: {optimizer})"
    )
    g.add_argument("--momentum", type=float, default=0.9, help="SGD/RMSProp momentum (default: 0.9)")
    g.add_argument(
        "--weight-decay",
        type=float,
        default=weight_decay,
        help=f"on conv/linear weights only, never on BN or biases (default: {weight_decay})",
    )
    g.add_argument("--schedule", choices=("cosine", "poly"), default=schedule, help=f"(default: {schedule})")
    g.add_argument("--warmup-epochs", type=float, default=1.0, help="linear warmup length (default: 1)")
    g.add_argument("--clip-grad", type=float, default=10.0, help="max gradient norm, 0 disables (default: 10)")
    g.add_argument(
        "--ema-decay",
        type=float,
        default=0.9998,
        help="EMA of weights used for evaluation, 0 disables; ramped up over the first ~2000 steps so "
        "short runs are not stuck near the initial weights (default: 0.9998)",
    )
    g.add_argument("--frozen-bn", action="store_true", help="freeze every BatchNorm (small batches, fine-tuning)")
    g.add_argument(
        "--no-augment",
        action="store_true",
        help="train on the evaluation transform (resize/pad only): the sanity check that a model can "
        "fit a few images before a long run",
    )
    g.add_argument(
        "--bn-recalibration",
        type=int,
        default=20,
        metavar="N",
        help="before each evaluation, recompute BatchNorm statistics of the evaluated weights on N "
        "training batches (precise BN); running averages lag the weights in short runs; 0 disables "
        "(default: 20)",
    )
    g.add_argument(
        "--amp",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="mixed precision (default: on for CUDA, off on CPU)",
    )
    g.add_argument(
        "--channels-last",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="channels_last memory format (default: on; on CPU, NCHW depthwise backward is ~17× slower)",
    )
    g.add_argument(
        "--compile",
        nargs="?",
        const="on",
        default="auto",
        choices=COMPILE_CHOICES,
        help="torch.compile the training forward: on (bare --compile), off, or auto: on when the run sees "
        "enough images to repay the compile time and a compiler is here (BENCHMARKS.md) "
        "(default: auto)",
    )
    g = parser.add_argument_group("run")
    g.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N (default: auto)")
    g.add_argument(
        "--workers", type=int, default=min(8, os.cpu_count() or 1), help="data loading processes per training process"
    )
    g.add_argument("--seed", type=int, default=0, help="random seed (default: 0)")
    g.add_argument("--project", type=Path, default=None, help="results root (default: runs/<task>)")
    g.add_argument("--name", default="exp", help="run folder name under --project (default: exp)")
    g.add_argument(
        "--exist-ok",
        action="store_true",
        help="reuse runs/<task>/<name> instead of making name2, name3… (refused while a run uses it)",
    )
    g.add_argument(
        "--resume",
        nargs="?",
        const="auto",
        default=None,
        metavar="LAST_PT",
        help="continue a run: its last.pt, or runs/<task>/<name>/last.pt when no path is given",
    )
    g.add_argument("--eval-interval", type=int, default=1, help="evaluate every N epochs (default: 1)")
    g.add_argument("--log-interval", type=int, default=10, help="TensorBoard scalars every N steps (default: 10)")
    g.add_argument("--no-progress", action="store_true", help="no progress bars (logs only)")


def check_training_arguments(parser: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    """The shared rules (common.cli.check_flags), and what only training needs: BatchNorm in train mode needs
    two samples per batch."""
    check_flags(parser, args)
    if args.batch_size < 2 and not args.frozen_bn:
        parser.error(
            f"--batch-size {args.batch_size}: BatchNorm needs at least 2 samples per batch to train; "
            "raise it or add --frozen-bn"
        )
