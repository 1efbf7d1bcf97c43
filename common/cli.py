"""Entry-point plumbing every command shares: a parser whose errors are one line, the --device check, and
`run_cli`, the one place where library exceptions, the operating system's refusals (disk full, read-only, missing
folder, permission) and Ctrl-C become one line and an exit status."""

from __future__ import annotations

import argparse
import contextlib
import errno
import io
import math
import os
import sys
import tempfile
from pathlib import Path
from typing import Any, Callable, Iterator, NoReturn, Sequence, TypeVar

import cv2
import torch

from common.distributed import cleanup
from common.errors import EXIT_DIVERGED, EXIT_INTERRUPTED, EXIT_USER_ERROR, Interrupted, TrainingDiverged, UserError

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


@contextlib.contextmanager
def native_stderr_captured() -> Iterator[io.StringIO]:
    """File descriptor 2 (not just sys.stderr) into the yielded buffer for the duration, filled when it ends: where
    C++ libraries (OpenCV, the LiteRT interpreter, TensorFlow and absl under the converter) log straight to the
    process's stderr. Callers quote it when something fails, and drop it otherwise."""
    sys.stderr.flush()
    buffer, saved, scratch = io.StringIO(), os.dup(2), tempfile.TemporaryFile()
    os.dup2(scratch.fileno(), 2)
    try:
        yield buffer
    finally:
        sys.stderr.flush()
        os.dup2(saved, 2)
        os.close(saved)
        scratch.seek(0)
        buffer.write(scratch.read().decode(errors="replace"))
        scratch.close()


def _one_line(text: str) -> str:
    text = " ".join(text.split())
    return text[len("error: ") :] if text.startswith("error: ") else text


def fail(message: str, status: int = EXIT_USER_ERROR) -> NoReturn:
    """Print `error: <message>` on one line and exit with `status` (entry points only)."""
    print(f"error: {_one_line(message)}", file=sys.stderr)
    raise SystemExit(status)


# What the operating system said, and what the user can do about it.
_OS_ERRORS: dict[int, tuple[str, str]] = {
    errno.ENOSPC: ("disk full", "free space or write elsewhere, then run the command again"),
    errno.EDQUOT: ("disk quota exceeded", "free space or write elsewhere, then run the command again"),
    errno.EROFS: ("read-only file system", "write somewhere writable (--project, --out, $MNV2_CACHE)"),
    errno.EACCES: (
        "permission denied",
        "write somewhere you may (--project, --out, $MNV2_CACHE) or fix the permissions",
    ),
    errno.EPERM: ("operation not permitted", "write somewhere you may, or fix the permissions"),
    errno.ENOENT: ("no such file or folder", "check the path (was it moved or deleted while the command ran?)"),
    errno.ENOTDIR: ("a part of the path is a file, not a folder", "check the path"),
    errno.EISDIR: ("is a folder, not a file", "give a file"),
    errno.EEXIST: ("is in the way (a file where a folder should be, or the reverse)", "move it or choose another path"),
}


def describe_os_error(error: OSError) -> str:
    """An OSError in one line naming the path, what happened and what to do."""
    path = " → ".join(str(p) for p in (error.filename, error.filename2) if p)
    what, fix = _OS_ERRORS.get(error.errno or -1, (error.strerror or type(error).__name__, "check the path"))
    return f"{path + ': ' if path else ''}{what} ({error.strerror or error}); {fix}"


_OUT_OF_MEMORY = ("not enough memory", "failed to allocate", "out of memory", "cannot allocate memory")


def run_cli(
    parser: argparse.ArgumentParser,
    argv: Sequence[str] | None,
    check: Callable[[argparse.ArgumentParser, argparse.Namespace], None],
    body: Callable[[argparse.Namespace], T],
) -> T:
    """Parse, check and run `body`; user errors and the operating system's refusals become one `error:` line and
    exit status 2, Ctrl-C one line and 130, never a traceback. The process group torchrun set up is left cleanly
    either way."""
    args = parser.parse_args(argv)
    check(parser, args)
    try:
        return body(args)
    except UserError as e:  # raised in a DataLoader worker too: datasets.loading.Loader hands it back intact
        if e.details:
            print(e.details)
        fail(str(e), e.exit_status)
    except TrainingDiverged as e:
        fail(str(e), EXIT_DIVERGED)
    except OSError as e:
        fail(describe_os_error(e))
    except (MemoryError, RuntimeError, cv2.error) as e:  # how torch and OpenCV report failed allocations
        if not isinstance(e, MemoryError) and not any(words in str(e).lower() for words in _OUT_OF_MEMORY):
            raise
        fail(f"out of memory ({' '.join(str(e).split())[:200] or 'MemoryError'}): use smaller images or batches")
    except Interrupted as e:
        _stop(str(e))
    except KeyboardInterrupt:
        _stop("interrupted by Ctrl-C: every file written so far is complete (files are written whole or not at all)")
    finally:
        cleanup()


def _stop(message: str) -> NoReturn:
    print(f"\n{_one_line(message)}", file=sys.stderr)
    raise SystemExit(EXIT_INTERRUPTED)
