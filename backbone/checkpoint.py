"""Checkpoint files: written atomically (temp file + rename), read with `weights_only=True`.

A checkpoint is a dict with at least "arch" (which model family), "config" (the model's constructor
arguments) and "model" (its state dict), so a file alone rebuilds its model and a wrong file is named.
`model_from_checkpoint` is the one rebuild every model family (MobileNetV2, SSDLite, DeepLab) goes through.
"""

from __future__ import annotations

import io
import os
import pickle
import re
import zipfile
from pathlib import Path
from typing import Any, Callable, Mapping, TypeVar

import torch
from torch import nn

from backbone.named_weights import find_weights, resolve
from common.errors import WeightsError
from common.files import write_atomic

M = TypeVar("M", bound=nn.Module)


def save_checkpoint(obj: dict[str, Any], path: str | os.PathLike) -> Path:
    """Write `obj` with torch.save to a temporary file beside `path`, then rename: never a half-written file.
    Serialised in memory first: torch's zip writer turns a failed write into a RuntimeError ("unexpected pos"),
    while a plain write of the bytes reports what the disk said (no space, read-only) as an OSError naming `path`."""
    buffer = io.BytesIO()
    torch.save(obj, buffer)
    return write_atomic(path, buffer.getbuffer())


def load_checkpoint(path: str | os.PathLike) -> Any:
    """torch.load with weights_only=True on CPU. Anything else (a folder, a text file, a plain pickle, another
    framework's file, a file whose pickle asks for code) is one WeightsError that says what the file is; a refused
    pickle names the global it asked for (nothing in it ran)."""
    text = os.fspath(path)
    if not text.strip():
        raise WeightsError("an empty path was given as weights: give a checkpoint file or a weights name")
    path = Path(text)
    if path.is_dir():
        raise WeightsError(
            f"{path}: is a folder, not a checkpoint file: give a file in it (a training run's "
            f"{path / 'best.pt'} or last.pt)"
        )
    if not path.is_file():
        raise WeightsError(f"{path}: no such file")
    kind = file_kind(path)
    if kind != TORCH_ARCHIVE:
        raise WeightsError(
            f"{path}: {kind}, not a PyTorch checkpoint written by torch.save; "
            f"{_WHAT_TO_DO.get(kind, 'give a checkpoint of this suite or a weights name')}"
        )
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except (
        RuntimeError,
        EOFError,
        pickle.UnpicklingError,
        zipfile.BadZipFile,
        ValueError,
        OSError,
        KeyError,
        IndexError,
    ) as e:
        raise WeightsError(f"{path}: {_reason(e)}") from e


TORCH_ARCHIVE = "a torch.save archive"
_WHAT_TO_DO = {
    "a TFLite model": "import it first (python -m tools.import_tflite, tools.import_tf_segmentation) or use a "
    "weights name",
    "a TorchScript archive": "load the checkpoint it was exported from",
    "a plain pickle": "save the state dict with torch.save, or use a weights name",
}


def file_kind(path: Path) -> str:
    """What a file is, from its first bytes: a torch.save archive, a TorchScript archive, or what it is instead."""
    with open(path, "rb") as f:
        head = f.read(64)
    if not head:
        return "an empty file"
    if head.startswith(b"PK\x03\x04"):
        try:
            with zipfile.ZipFile(path) as archive:
                names = archive.namelist()
        except zipfile.BadZipFile:
            return "a damaged zip archive (a truncated copy?)"
        if any(n.split("/", 1)[-1].startswith("code/") for n in names):
            return "a TorchScript archive"
        return TORCH_ARCHIVE if any(n.endswith("data.pkl") for n in names) else "a zip archive"
    if head[4:8] == b"TFL3":
        return "a TFLite model"
    if head.startswith(b"\x89HDF"):
        return "an HDF5 file (Keras?)"
    if head[:1] == b"\x80":  # pickle protocol 2+: torch.save's legacy format, or any other pickle
        return "a plain pickle"
    if len(head) > 8 and head[8:10] == b'{"':
        return "a safetensors file"
    try:
        head.decode("utf-8")
        return "a text file"
    except UnicodeDecodeError:
        return "an unknown binary file"


def _reason(error: BaseException) -> str:
    """The cause in one line. torch's weights-only refusal suggests retrying with weights_only=False, which would let
    the file run code: keep only what the file asked for."""
    text = str(error)
    refused = re.search(r"(?:unsupported )?GLOBAL ([\w.]+)", text, flags=re.IGNORECASE)
    if "Weights only load failed" in text or refused:
        asked = f"the Python global {refused[1]}" if refused else "an object that is not a tensor or a container"
        return (
            f"refused: its pickle asks for {asked}, which a weights file never needs (only tensors and plain "
            "containers are loaded, so nothing in it ran); get the weights from their source or a weights name"
        )
    first = next((line for line in text.splitlines() if line.strip()), type(error).__name__)
    return f"not a readable PyTorch checkpoint (truncated or damaged?): {first}"


def load_state_dict_checked(model: nn.Module, state: Mapping[str, torch.Tensor], source: str) -> None:
    """Load `state` into `model`, or raise one WeightsError that lists what is missing, extra or misshapen.

    The classifier is optional on both sides: a classifier-less model takes classifier weights silently,
    and a model whose class count differs keeps its own freshly initialised classifier.
    """
    own = model.state_dict()
    state = {
        k: v for k, v in state.items() if not k.startswith("classifier.") or (k in own and own[k].shape == v.shape)
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


def model_from_checkpoint(
    checkpoint: Any, source: str, arch: str, what: str, build: Callable[[Mapping[str, Any]], M], ema: bool = True
) -> M:
    """The model a loaded checkpoint of family `arch` describes (`what` names the family in messages), built by
    `build(checkpoint)` (which checks the configuration against what the caller expects), with its weights.

    A training checkpoint with EMA weights yields those (`ema=False`: the raw weights): the engine evaluates and
    keeps best.pt by the EMA weights, so they are the ones that reproduce its scores.
    """
    if not isinstance(checkpoint, Mapping) or not {"arch", "config", "model"} <= checkpoint.keys():
        raise WeightsError(f"{source}: not a suite checkpoint (needs 'arch', 'config' and 'model' entries)")
    if checkpoint["arch"] != arch:
        raise WeightsError(
            f"{source}: {other_model(checkpoint['arch'])}, not {what}: pass a checkpoint of that model, "
            "written by its training script or import tool"
        )
    model = build(checkpoint)
    weights = checkpoint["ema"] if ema and checkpoint.get("ema") is not None else checkpoint["model"]
    load_state_dict_checked(model, weights, source)
    return model


# Where each model family is used, for the message a checkpoint or weights name of another family gets.
_FAMILIES = {
    "ssdlite": "an SSDLite detector (Detector, eval/coco_map.py, eval/voc_map.py, --det)",
    "deeplab": "a Mobile DeepLabv3 segmenter (Segmenter, eval/voc_miou.py, --seg)",
    "mobilenet_v2": "a MobileNetV2 classifier (demo/classify.py; --weights of training, for its backbone)",
}


def other_model(arch: Any) -> str:
    """How a message names a checkpoint's model family and where it goes."""
    return f"holds {_FAMILIES[arch]}" if arch in _FAMILIES else f"holds a {arch!r} model"


def load_model(
    name_or_path: str | os.PathLike, rebuild: Callable[[Any, str], M], arch: str, what: str
) -> tuple[M, dict[str, Any]]:
    """The model of a checkpoint file or weights name (backbone/named_weights.py), rebuilt by `rebuild(checkpoint,
    source)` (a head's `*_from_checkpoint`, which checks it), in eval mode, and the checkpoint dict (extras such as
    the training epoch or import provenance). A weights name of another family (`arch`, `what`) is refused before
    anything is converted or downloaded."""
    entry = find_weights(os.fspath(name_or_path))
    if entry is not None and entry.arch != arch:
        raise WeightsError(f"{entry.name}: a weights name that {other_model(entry.arch)}, not {what}")
    path = resolve(name_or_path)
    checkpoint = load_checkpoint(path)
    return rebuild(checkpoint, str(path)).eval(), checkpoint
