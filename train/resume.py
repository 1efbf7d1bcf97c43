"""What --resume needs beyond the weights: the process random state (saved in every checkpoint, so a resumed run
draws what the interrupted one would have), reading a run's checkpoint back, and the run's own flags.

A resumed run takes its flags from the checkpoint. On the command line it accepts the runtime flags (RUNTIME_FLAGS)
and new paths for data that moved (DATA_PATH_FLAGS, logged); any other flag given with a value the run did not
have is refused with its name, as it would otherwise be silently ignored.
"""

from __future__ import annotations

import argparse
import copy
import random
import sys
from pathlib import Path
from typing import Any, Iterable, Sequence

import numpy as np
import torch

from backbone.checkpoint import load_checkpoint
from common.errors import UserError, WeightsError

# Flags a resumed run takes from the command line rather than from the interrupted run.
RUNTIME_FLAGS = frozenset({"resume", "device", "workers", "no_progress", "compile"})
# Where the data lives: a resumed run may name new places for the same files (moved, another mount).
DATA_PATH_FLAGS = frozenset({"data_root", "sbd_root", "train_ann", "train_images", "val_ann", "val_images"})


def rng_state() -> dict[str, Any]:
    state = {
        "python": random.getstate(),
        "numpy": torch.from_numpy(np.random.get_state()[1].astype(np.int64)),
        "numpy_pos": int(np.random.get_state()[2]),
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    random.setstate(state["python"])
    np.random.set_state(("MT19937", state["numpy"].numpy().astype(np.uint32), state["numpy_pos"], 0, 0.0))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


TRAINING_KEYS = ("model", "optimizer", "scheduler", "epoch", "step_in_epoch", "rng", "args")


def read_training_checkpoint(path: str | Path, task_name: str) -> dict[str, Any]:
    """A `last.pt` this suite's engine wrote for `task_name`, or a WeightsError saying what the file is instead
    (an imported model, a `best.pt` of another head, not a checkpoint at all)."""
    ckpt = load_checkpoint(path)
    if not isinstance(ckpt, dict) or not set(TRAINING_KEYS) <= ckpt.keys() or not isinstance(ckpt["args"], dict):
        raise WeightsError(
            f"--resume {path}: not a training checkpoint of this suite (a run's last.pt holds the "
            "model, optimiser, position and flags); start a new run with --weights to fine-tune it"
        )
    task = ckpt.get("task", ckpt.get("arch"))
    if task != task_name:
        raise WeightsError(
            f"--resume {path}: a {task!r} training run's checkpoint, not a {task_name!r} one; "
            f"resume it with train/{task}.py"
        )
    return ckpt


def given_flags(parser: argparse.ArgumentParser, argv: Sequence[str] | None) -> set[str]:
    """The destinations of the flags written on the command line (whatever their value)."""
    quiet = copy.deepcopy(parser)
    for action in quiet._actions:
        action.default = argparse.SUPPRESS
    return set(vars(quiet.parse_known_args(sys.argv[1:] if argv is None else list(argv))[0]))


def resumed_arguments(
    parser: argparse.ArgumentParser,
    args: argparse.Namespace,
    task_name: str,
    argv: Sequence[str] | None,
    runtime_flags: Iterable[str] = (),
) -> tuple[argparse.Namespace, list[str]]:
    """With --resume: the interrupted run's flags (converted by each flag's own type: checkpoints keep paths as
    strings) with this command line's runtime flags and data paths, and the log lines of the paths that changed;
    flags that would not apply are a UserError naming them. Without --resume: `args` as it is."""
    if not args.resume:
        return args, []
    resume = args.resume
    if resume == "auto":
        resume = str((args.project or Path("runs") / task_name) / args.name / "last.pt")
    saved = read_training_checkpoint(resume, task_name)["args"]
    types = {a.dest: a.type for a in parser._actions if callable(a.type)}
    restored = {key: _typed(value, types.get(key)) for key, value in saved.items()}
    runtime = RUNTIME_FLAGS | set(runtime_flags)
    given = given_flags(parser, argv) - runtime
    ignored = sorted(dest for dest in given - DATA_PATH_FLAGS if restored.get(dest) != getattr(args, dest))
    if ignored:
        listed = ", ".join(
            f"{_flag(dest)} {getattr(args, dest)} (the run has {restored.get(dest)})" for dest in ignored
        )
        raise UserError(
            f"--resume {resume} continues the run with its own flags, so {listed} would not apply: drop "
            f"{'it' if len(ignored) == 1 else 'them'}, or start a new run (--weights {resume} fine-tunes "
            "from it)"
        )
    moved = [
        f"{_flag(dest)}: {restored.get(dest)} → {getattr(args, dest)}"
        for dest in sorted(given & DATA_PATH_FLAGS)
        if restored.get(dest) != getattr(args, dest)
    ]
    merged = {**restored, **{dest: getattr(args, dest) for dest in runtime | (given & DATA_PATH_FLAGS)}}
    merged["resume"] = resume
    return argparse.Namespace(**{**vars(args), **merged}), moved


def _flag(dest: str) -> str:
    return "--" + dest.replace("_", "-")


def _typed(value: Any, kind: Any) -> Any:
    if kind is None or value is None:
        return value
    if isinstance(value, list):
        return [kind(v) if isinstance(v, str) else v for v in value]
    return kind(value) if isinstance(value, str) else value


def saved_arguments(args: argparse.Namespace) -> dict[str, Any]:
    """The flags as a checkpoint and args.json keep them (paths as strings)."""
    return {
        k: [str(x) if isinstance(x, Path) else x for x in v]
        if isinstance(v, list)
        else str(v)
        if isinstance(v, Path)
        else v
        for k, v in vars(args).items()
    }
