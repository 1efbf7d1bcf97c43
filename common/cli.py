"""Entry-point plumbing every command shares: a parser whose errors are one line, the --device check, and
`run_cli`, the one place where library exceptions become an `error:` line and an exit status."""

from __future__ import annotations

import argparse
import math
import sys
from pathlib import Path
from typing import Any, Callable, NoReturn, Sequence, TypeVar

import torch

from common.distributed import cleanup
from common.errors import EXIT_DIVERGED, EXIT_USER_ERROR, TrainingDiverged, UserError

T = TypeVar("T")


class OneLineArgumentParser(argparse.ArgumentParser):
    """argparse whose errors are one line, `error: ...`, exit status 2 (argparse's own prints the usage too)."""

    def error(self, message: str) -> NoReturn:  # type: ignore[override]
        print(f"error: {message}", file=sys.stderr)
        raise SystemExit(EXIT_USER_ERROR)


def new_parser(prog: str, doc: str | None) -> OneLineArgumentParser:
    return OneLineArgumentParser(prog=prog, description=doc, formatter_class=argparse.RawDescriptionHelpFormatter)


def check_device_flag(parser: argparse.ArgumentParser, device: str) -> None:
    """--device: auto or anything torch.device accepts; a typo fails here rather than deep inside a run."""
    if device != "auto":
        try:
            torch.device(device)
        except RuntimeError:
            parser.error(f"--device {device}: expected auto, cpu, cuda or cuda:N")


def _finite(low: float, high: float = math.inf) -> Callable[[Any], bool]:
    return lambda v: math.isfinite(v) and low <= v <= high


# The one rule per flag that several entry points share (training, evaluation, demo): (test, what it must be).
FLAG_RULES: dict[str, tuple[Callable[[Any], bool], str]] = {
    "batch_size": (lambda v: v >= 1, "must be at least 1"),
    "workers": (lambda v: v >= 0, "must be 0 or more"),
    "max_images": (lambda v: v >= 1, "must be at least 1"),
    "epochs": (lambda v: v >= 1, "must be at least 1"),
    "eval_interval": (lambda v: v >= 1, "must be at least 1 (epochs between evaluations)"),
    "log_interval": (lambda v: v >= 1, "must be at least 1 (steps between logged scalars)"),
    "image_size": (lambda v: v >= 32, "must be at least 32 (the backbone's stride)"),
    "crop_size": (lambda v: v >= 16, "must be at least 16 (the output stride)"),
    "width_mult": (lambda v: math.isfinite(v) and v > 0, "must be a positive number"),
    "lr": (lambda v: math.isfinite(v) and v > 0, "must be a positive number"),
    "momentum": (_finite(0.0, 1.0), "must be between 0 and 1"),
    "weight_decay": (_finite(0.0), "must be 0 or more"),
    "warmup_epochs": (_finite(0.0), "must be 0 or more"),
    "clip_grad": (_finite(0.0), "must be 0 (off) or more"),
    "ema_decay": (lambda v: 0.0 <= v < 1.0, "must be in [0, 1) (0 disables the EMA)"),
    "bn_recalibration": (lambda v: v >= 0, "must be 0 (off) or more"),
    "num_classes": (lambda v: v >= 2, "counts the background, so it must be at least 2"),
    "min_scale": (lambda v: math.isfinite(v) and v > 0, "must be a positive number"),
    "max_scale": (lambda v: math.isfinite(v) and v > 0, "must be a positive number"),
}


def check_output_file(parser: argparse.ArgumentParser, flag: str, path: Path) -> None:
    """A flag naming a file to write: a folder there is a mistake to report now, not an IsADirectoryError later."""
    if path.is_dir():
        parser.error(f"{flag} {path}: is a folder; give the file to write, e.g. {path / 'model.pt'}")


def check_flags(parser: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    """Check every flag of `args` that has a rule in FLAG_RULES (and --device), so each flag is checked the same
    way by every entry point that takes it."""
    for dest, (ok, rule) in FLAG_RULES.items():
        value = getattr(args, dest, None)
        if value is not None and not ok(value):
            parser.error(f"--{dest.replace('_', '-')} {rule}, got {value}")
    if getattr(args, "device", None) is not None:
        check_device_flag(parser, args.device)


def _one_line(text: str) -> str:
    text = " ".join(text.split())
    return text[len("error: "):] if text.startswith("error: ") else text


def fail(message: str, status: int = EXIT_USER_ERROR) -> NoReturn:
    """Print `error: <message>` on one line and exit with `status` (entry points only)."""
    print(f"error: {_one_line(message)}", file=sys.stderr)
    raise SystemExit(status)


def run_cli(parser: argparse.ArgumentParser, argv: Sequence[str] | None,
            check: Callable[[argparse.ArgumentParser, argparse.Namespace], None],
            body: Callable[[argparse.Namespace], T]) -> T:  # fmt: skip
    """Parse, check and run `body`; user errors become one `error:` line and exit status 2, never a traceback.
    The process group torchrun set up is left cleanly either way."""
    args = parser.parse_args(argv)
    check(parser, args)
    try:
        return body(args)
    except UserError as e:  # raised in a DataLoader worker too: datasets.loading.Loader hands it back intact
        fail(str(e))
    except TrainingDiverged as e:
        fail(str(e), EXIT_DIVERGED)
    finally:
        cleanup()
