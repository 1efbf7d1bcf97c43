"""Command-line plumbing the evaluation entry points share (eval/coco_map.py, eval/voc_map.py, eval/voc_miou.py):
the common flags, the results folder and the sharded loader (the parser and error handling are common.cli's)."""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path
from typing import Any, Callable, Mapping, TypeVar

from torch.utils.data import DataLoader, Dataset, Subset

from common.cli import check_flags
from common.distributed import DistInfo, barrier, gather_objects, shard_dataset
from common.files import write_atomic
from common.runs import next_run_dir
from datasets.errors import SkipCounter
from datasets.loading import make_loader
from eval.segmentation_report import json_safe, setup_section

T = TypeVar("T")


def add_common_arguments(parser: argparse.ArgumentParser, batch_size: int) -> None:
    """--weights and the run flags every evaluation entry point takes."""
    g = parser.add_argument_group("model")
    g.add_argument("--weights", required=True, metavar="CKPT",
                   help="checkpoint to evaluate: a training run's best.pt/last.pt, an imported model or a weights "
                        "name (README: Model zoo)")  # fmt: skip
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
    check_flags(parser, args)  # the rules training shares, in common.cli


def record_skipped(skip: SkipCounter | None, details: dict[str, Any]) -> None:
    """Put the count of samples the skip policy dropped into the report's details and print it."""
    if skip is not None and skip.total:
        details["skipped"] = skip.summary()
        print(skip.summary())


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
    write_atomic(report, "\n".join([head, "", *setup_section(setup), rest]))
    metrics_path = out_dir / "metrics.json"
    metrics = json.loads(metrics_path.read_text())
    metrics["setup"] = dict(setup)
    write_atomic(metrics_path, json.dumps(json_safe(metrics), indent=2) + "\n")
