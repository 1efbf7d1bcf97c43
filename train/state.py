"""Process random state (saved in every checkpoint, so a resumed run draws what the interrupted one would have)
and reading a training checkpoint back for --resume."""

from __future__ import annotations

import random
from pathlib import Path
from typing import Any

import numpy as np
import torch

from backbone.checkpoint import load_checkpoint
from common.errors import WeightsError


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
        raise WeightsError(f"--resume {path}: not a training checkpoint of this suite (a run's last.pt holds the "
                           "model, optimiser, position and flags); start a new run with --weights to fine-tune it")
    task = ckpt.get("task", ckpt.get("arch"))
    if task != task_name:
        raise WeightsError(f"--resume {path}: a {task!r} training run's checkpoint, not a {task_name!r} one; "
                           f"resume it with train/{task}.py")
    return ckpt
