"""Checkpoint files: written atomically (temp file + rename), read with `weights_only=True`.

A checkpoint is a dict with at least "arch" (which model family), "config" (the model's constructor
arguments) and "model" (its state dict), so a file alone rebuilds its model and a wrong file is named.
`model_from_checkpoint` is the one rebuild every model family (MobileNetV2, SSDLite, DeepLab) goes through.
"""

from __future__ import annotations

import os
import pickle
import zipfile
from pathlib import Path
from typing import Any, Callable, Mapping, TypeVar

import torch
from torch import nn

from backbone.named_weights import resolve
from common.errors import WeightsError
from common.files import write_atomic_with

M = TypeVar("M", bound=nn.Module)


def save_checkpoint(obj: dict[str, Any], path: str | os.PathLike) -> Path:
    """Write `obj` with torch.save to a temporary file beside `path`, then rename: never a half-written file."""
    return write_atomic_with(path, lambda f: torch.save(obj, f))


def load_checkpoint(path: str | os.PathLike) -> Any:
    """torch.load with weights_only=True on CPU, turning unreadable files into one clear WeightsError."""
    path = Path(path)
    if not path.is_file():
        raise WeightsError(f"{path}: no such file")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except (RuntimeError, EOFError, pickle.UnpicklingError, zipfile.BadZipFile, ValueError, OSError) as e:
        reason = _reason(e)
        raise WeightsError(
            f"{path}: not a readable PyTorch checkpoint (truncated, corrupt or not saved by torch.save?): {reason}"
        ) from e


def load_state_dict_checked(model: nn.Module, state: Mapping[str, torch.Tensor], source: str) -> None:
    """Load `state` into `model`, or raise one WeightsError that lists what is missing, extra or misshapen.

    The classifier is optional on both sides: a classifier-less model takes classifier weights silently,
    and a model whose class count differs keeps its own freshly initialised classifier.
    """
    own = model.state_dict()
    state = {
        k: v
        for k, v in state.items()
        if not k.startswith("classifier.") or (k in own and own[k].shape == v.shape)
    }
    missing = [k for k in own if k not in state and not k.startswith("classifier.") and "num_batches_tracked" not in k]
    unexpected = [k for k in state if k not in own and "num_batches_tracked" not in k]
    mismatched = [
        f"{k}: file {list(state[k].shape)} vs model {list(own[k].shape)}"
        for k in own
        if k in state and state[k].shape != own[k].shape
    ]
    if missing or unexpected or mismatched:
        parts = []
        problems = (("missing keys", missing), ("unexpected keys", unexpected), ("shape mismatches", mismatched))
        for label, items in problems:
            if items:
                parts.append(f"{len(items)} {label} (e.g. {', '.join(items[:2])})")
        width = getattr(model, "config", {}).get("width_mult", "?")
        raise WeightsError(
            f"{source}: weights do not fit {type(model).__name__} (width {width}): {'; '.join(parts)}. "
            "Is it a checkpoint of another architecture or width?"
        )
    model.load_state_dict({k: v for k, v in state.items() if k in own}, strict=False)


def model_from_checkpoint(checkpoint: Any, source: str, arch: str, what: str,
                          build: Callable[[Mapping[str, Any]], M], ema: bool = True) -> M:  # fmt: skip
    """The model a loaded checkpoint of family `arch` describes (`what` names the family in messages), built by
    `build(checkpoint)` (which checks the configuration against what the caller expects), with its weights.

    A training checkpoint with EMA weights yields those (`ema=False`: the raw weights): the engine evaluates and
    keeps best.pt by the EMA weights, so they are the ones that reproduce its scores.
    """
    if not isinstance(checkpoint, Mapping) or not {"arch", "config", "model"} <= checkpoint.keys():
        raise WeightsError(f"{source}: not a suite checkpoint (needs 'arch', 'config' and 'model' entries)")
    if checkpoint["arch"] != arch:
        raise WeightsError(
            f"{source}: holds a {checkpoint['arch']!r} model, not {what}: pass a checkpoint of that model, "
            "written by its training script or import tool"
        )
    model = build(checkpoint)
    weights = checkpoint["ema"] if ema and checkpoint.get("ema") is not None else checkpoint["model"]
    load_state_dict_checked(model, weights, source)
    return model


def _reason(error: BaseException) -> str:
    """The cause in one line. torch's weights-only refusal suggests retrying with weights_only=False, which would let
    the file run code: keep only the unpickler's own finding."""
    text = str(error).strip()
    if "WeightsUnpickler error:" in text:
        detail = text.split("WeightsUnpickler error:", 1)[1].strip().splitlines()[0]
        return detail.split(". Please use", 1)[0].rstrip(".") + " (only tensors and plain containers are ever loaded)"
    return text.splitlines()[0] if text else type(error).__name__


def load_model(name_or_path: str | os.PathLike, rebuild: Callable[[Any, str], M]) -> tuple[M, dict[str, Any]]:
    """The model of a checkpoint file or weights name (backbone/named_weights.py), rebuilt by `rebuild(checkpoint,
    source)` (a head's `*_from_checkpoint`, which checks it), in eval mode, and the checkpoint dict (extras such as
    the training epoch or import provenance)."""
    path = resolve(name_or_path)
    checkpoint = load_checkpoint(path)
    return rebuild(checkpoint, str(path)).eval(), checkpoint
