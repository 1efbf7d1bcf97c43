"""Checkpoint files: written atomically (temp file + rename), read with `weights_only=True`.

A checkpoint is a dict with at least "arch" (which model family), "config" (the model's constructor
arguments) and "model" (its state dict), so a file alone rebuilds its model and a wrong file is named.
"""

from __future__ import annotations

import os
import pickle
import tempfile
import zipfile
from pathlib import Path
from typing import Any

import torch


class WeightsError(ValueError):
    """A weights or checkpoint file that cannot be used; the message names the file and what to do."""


def save_checkpoint(obj: dict[str, Any], path: str | os.PathLike) -> Path:
    """Write `obj` with torch.save to a temporary file beside `path`, then rename: never a half-written file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.fchmod(fd, 0o644)  # mkstemp makes it 0600; results are read by others, like any written file
    try:
        with os.fdopen(fd, "wb") as f:
            torch.save(obj, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def load_checkpoint(path: str | os.PathLike) -> Any:
    """torch.load with weights_only=True on CPU, turning unreadable files into one clear WeightsError."""
    path = Path(path)
    if not path.is_file():
        raise WeightsError(f"{path}: no such file")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except (RuntimeError, EOFError, pickle.UnpicklingError, zipfile.BadZipFile, ValueError, OSError) as e:
        reason = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise WeightsError(
            f"{path}: not a readable PyTorch checkpoint (truncated, corrupt or not saved by torch.save?): {reason}"
        ) from e
