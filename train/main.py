"""What `python train/<task>.py` does: parse (or restore on --resume) the flags, build the task, train,
summarise; user errors become one `error:` line and exit 2, divergence exit 3 (common.cli.run_cli)."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any, Callable, Sequence

from common.cli import run_cli
from train.engine import Trainer
from train.flags import check_training_arguments, restore_resumed_arguments


def train_main(parser: argparse.ArgumentParser, make_task: Callable[[argparse.Namespace], Any], task_name: str,
               argv: Sequence[str] | None) -> Path:  # fmt: skip
    def body(args: argparse.Namespace) -> Path:
        restore_resumed_arguments(parser, args, task_name)
        task = make_task(args)
        run_dir = Trainer(task, args).fit()
        skip = getattr(task, "skip", None)
        if skip is not None and skip.total:
            print(skip.summary())
        print(f"results in {run_dir}")
        return run_dir

    return run_cli(parser, argv, check_training_arguments, body)
