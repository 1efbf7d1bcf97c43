"""Command-line plumbing the evaluation entry points share (eval/coco_map.py, eval/voc_map.py, eval/voc_miou.py):
the common flags, one-line errors with exit status 2, the results folder and the sharded loader."""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence, TypeVar

import torch
from torch.utils.data import DataLoader, Dataset, Subset

from backbone.checkpoint import WeightsError
from datasets.errors import DatasetError, SkipCounter
from datasets.loading import make_loader
from datasets.sources import DEFAULT_SYNTHETIC_ROOT, ensure_synthetic
from eval.segmentation_report import json_safe, write_atomic
from train.distributed import DistInfo, barrier, cleanup, gather_objects, shard_dataset

T = TypeVar("T")

class UserError(ValueError):
    """A problem the user can fix (flags, data, checkpoint): one `error:` line and exit status 2."""


class EvalArgumentParser(argparse.ArgumentParser):
    """argparse whose errors are one line, `error: ...`, exit status 2 (argparse's own prints the usage too)."""

    def error(self, message: str) -> None:  # type: ignore[override]
        print(f"error: {message}", file=sys.stderr)
        raise SystemExit(2)


def new_parser(prog: str, doc: str | None) -> EvalArgumentParser:
    return EvalArgumentParser(prog=prog, description=doc, formatter_class=argparse.RawDescriptionHelpFormatter)


def add_common_arguments(parser: argparse.ArgumentParser, batch_size: int) -> None:
    """--weights and the run flags every evaluation entry point takes."""
    g = parser.add_argument_group("model")
    g.add_argument("--weights", type=Path, required=True, metavar="CKPT",
                   help="checkpoint to evaluate: a training run's best.pt/last.pt or an imported model")  # fmt: skip
    g.add_argument("--no-ema", action="store_true",
                   help="evaluate a training checkpoint's raw weights instead of its EMA weights")  # fmt: skip
    g = parser.add_argument_group("run")
    g.add_argument("--batch-size", type=int, default=batch_size, help=f"images per batch and process "
                   f"(default: {batch_size})")  # fmt: skip
    g.add_argument("--workers", type=int, default=min(4, os.cpu_count() or 1),
                   help="data-loading processes per process (default: 4, at most the CPU count)")  # fmt: skip
    g.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N (default: auto)")
    g.add_argument("--max-images", type=int, default=None, metavar="N",
                   help="evaluate only the first N images (a quick check)")  # fmt: skip
    g.add_argument("--project", type=Path, default=Path("runs/eval"), help="results parent folder "
                   "(default: runs/eval)")  # fmt: skip
    g.add_argument("--name", default="exp", help="results folder name; taken names get 2, 3, ... (default: exp)")
    g.add_argument("--exist-ok", action="store_true", help="write into --project/--name even if it exists")
    g.add_argument("--quiet", action="store_true", help="no progress bar")


def check_common_arguments(parser: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    if args.batch_size < 1:
        parser.error(f"--batch-size must be at least 1, got {args.batch_size}")
    if args.workers < 0:
        parser.error(f"--workers must be 0 or more, got {args.workers}")
    if args.max_images is not None and args.max_images < 1:
        parser.error(f"--max-images must be at least 1, got {args.max_images}")
    check_device_flag(parser, args.device)


def check_device_flag(parser: argparse.ArgumentParser, device: str) -> None:
    """--device: auto or anything torch.device accepts; a typo fails here rather than deep inside a run."""
    if device != "auto":
        try:
            torch.device(device)
        except RuntimeError:
            parser.error(f"--device {device}: expected auto, cpu, cuda or cuda:N")


def record_skipped(skip: SkipCounter | None, details: dict[str, Any]) -> None:
    """Put the count of samples the skip policy dropped into the report's details and print it."""
    if skip is not None and skip.total:
        details["skipped"] = skip.summary()
        print(skip.summary())


def _one_line(text: str) -> str:
    text = " ".join(text.split())
    return text[len("error: "):] if text.startswith("error: ") else text


def fail(message: str) -> None:
    print(f"error: {_one_line(message)}", file=sys.stderr)
    raise SystemExit(2)


def run_cli(parser: argparse.ArgumentParser, argv: Sequence[str] | None,
            check: Callable[[argparse.ArgumentParser, argparse.Namespace], None],
            body: Callable[[argparse.Namespace], T]) -> T:  # fmt: skip
    """Parse, check and run `body`; user errors become one `error:` line and exit status 2, never a traceback.
    The process group torchrun set up is left cleanly either way."""
    args = parser.parse_args(argv)
    check(parser, args)
    try:
        return body(args)
    except (WeightsError, DatasetError, UserError) as e:
        fail(str(e))
    except RuntimeError as e:
        # A DatasetError raised in a DataLoader worker comes back as a RuntimeError holding its traceback
        # (DatasetError cannot be rebuilt from the message alone); its last line is the original message.
        text = str(e)
        if text.startswith("Caught DatasetError"):
            last = [line for line in text.splitlines() if line.strip()][-1]
            fail(last.split("DatasetError: ", 1)[-1])
        raise
    except SystemExit as e:
        if isinstance(e.code, str):  # SystemExit("error: ...") from datasets.sources / train.distributed
            fail(e.code)
        raise
    finally:
        cleanup()
    raise AssertionError("unreachable")


def main_first(dist: DistInfo, build: Callable[[], T]) -> T:
    """`build()` on rank 0, then on the other ranks: files it creates once (the synthetic dataset, COCO→VOC mask
    cache) are not raced for. An error on rank 0 is raised after the barrier, so the others do not hang."""
    if not dist.distributed:
        return build()
    result, error = None, None
    if dist.is_main:
        try:
            result = build()
        except Exception as e:  # noqa: BLE001 - re-raised below
            error = e
    barrier()
    if error is not None:
        raise error
    return result if dist.is_main else build()  # type: ignore[return-value]


def data_root(args: argparse.Namespace) -> Path:
    """--data-root, drawing the synthetic dataset first where needed."""
    if args.data == "synthetic":
        return ensure_synthetic(args.data_root or DEFAULT_SYNTHETIC_ROOT)
    if args.data_root is None:
        raise UserError(f"--data {args.data} needs --data-root (the dataset folder)")
    if not args.data_root.is_dir():
        raise UserError(f"--data-root {args.data_root}: no such folder")
    return args.data_root


def first_images(dataset: Dataset, max_images: int | None) -> Dataset:
    """The first `max_images` samples (all without it), as a Subset so the reader's metadata stays reachable."""
    if max_images is None or max_images >= len(dataset):
        return dataset
    return Subset(dataset, range(max_images))


def eval_loader(dataset: Dataset, args: argparse.Namespace, dist: DistInfo, collate: Callable,
                batch_size: int | None = None) -> DataLoader:  # fmt: skip
    return make_loader(shard_dataset(dataset, dist), batch_size or args.batch_size, train=False, workers=args.workers,
                       collate_fn=collate)  # fmt: skip


def results_dir(args: argparse.Namespace) -> Path:
    """runs/eval/<name>, or <name>2, <name>3... if taken (call on rank 0 only: it creates the folder)."""
    from train.engine import next_run_dir

    out = next_run_dir(args.project, args.name, args.exist_ok)
    out.mkdir(parents=True, exist_ok=True)
    return out


def process_count(n: int) -> int:
    """Sum of an integer over the processes."""
    return sum(gather_objects(n))  # type: ignore[arg-type]


def amend_report(out_dir: Path, setup: Mapping[str, Any]) -> None:
    """Add a "Setup" list under the title of report.md and a "setup" entry to metrics.json."""
    report = out_dir / "report.md"
    head, _, rest = report.read_text().partition("\n")
    items = "\n".join(f"- {key.replace('_', ' ')}: {value}" for key, value in setup.items())
    write_atomic(report, f"{head}\n\n## Setup\n\n{items}\n{rest}")
    metrics_path = out_dir / "metrics.json"
    metrics = json.loads(metrics_path.read_text())
    metrics["setup"] = dict(setup)
    write_atomic(metrics_path, json.dumps(json_safe(metrics), indent=2) + "\n")
