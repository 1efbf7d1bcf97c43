"""Pretrained MobileNetV2 weights: torchvision's ImageNet checkpoints, local files, and checks that name
what does not fit.

`load_pretrained(model, "IMAGENET1K_V1" | "IMAGENET1K_V2" | a weights name | "path/to/file")` is the one entry
point the training scripts call; `.tflite` files are converted first by tools/import_tflite.py.
"""

from __future__ import annotations

import contextlib
import io
import re
import sys
import urllib.error
from pathlib import Path
from typing import Mapping

import torch
from torchvision.models import MobileNet_V2_Weights

from backbone.checkpoint import load_checkpoint, load_state_dict_checked, model_from_checkpoint
from backbone.mobilenetv2 import MobileNetV2
from backbone.named_weights import resolve
from common.errors import WeightsError

TORCHVISION_WEIGHTS = tuple(w.name for w in MobileNet_V2_Weights)  # ("IMAGENET1K_V1", "IMAGENET1K_V2")

# torchvision `features.K` → our names. Block i is features.(i+1); block 0 has no expansion conv.
_TORCHVISION_RULES: tuple[tuple[str, str], ...] = (
    (r"^features\.0\.0\.", "stem.conv."),
    (r"^features\.0\.1\.", "stem.bn."),
    (r"^features\.18\.0\.", "last_conv.conv."),
    (r"^features\.18\.1\.", "last_conv.bn."),
    (r"^classifier\.1\.", "classifier."),
)
_FIRST_BLOCK = {
    "conv.0.0": "depthwise.conv",
    "conv.0.1": "depthwise.bn",
    "conv.1": "project.conv",
    "conv.2": "project.bn",
}
_OTHER_BLOCKS = {
    "conv.0.0": "expand.conv",
    "conv.0.1": "expand.bn",
    "conv.1.0": "depthwise.conv",
    "conv.1.1": "depthwise.bn",
    "conv.2": "project.conv",
    "conv.3": "project.bn",
}
_BLOCK_KEY = re.compile(r"^features\.(\d+)\.(conv\.\d+(?:\.\d+)?)\.(\w+)$")


def is_torchvision_state_dict(state: Mapping[str, torch.Tensor]) -> bool:
    return "features.0.0.weight" in state


def from_torchvision(state: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Rename a torchvision `mobilenet_v2` state dict to this package's layer names."""
    out = {}
    for key, value in state.items():
        new = key
        for pattern, repl in _TORCHVISION_RULES:
            new = re.sub(pattern, repl, new)
        match = _BLOCK_KEY.match(key) if new == key else None
        if match:
            feature, layer, param = int(match[1]), match[2], match[3]
            table = _FIRST_BLOCK if feature == 1 else _OTHER_BLOCKS
            if layer not in table:
                raise WeightsError(f"unexpected torchvision key {key!r}")
            new = f"blocks.{feature - 1}.{table[layer]}.{param}"
        out[new] = value
    return out


def load_torchvision_imagenet(model: MobileNetV2, name: str = "IMAGENET1K_V1") -> None:
    """Load torchvision's ImageNet weights through its own download path (cached in $TORCH_HOME)."""
    if name not in TORCHVISION_WEIGHTS:
        raise WeightsError(f"unknown torchvision weights {name!r}: choose one of {', '.join(TORCHVISION_WEIGHTS)}")
    weights = MobileNet_V2_Weights[name]
    chatter = io.StringIO()  # torch.hub announces "Downloading: ..." even when the download then fails
    try:
        with contextlib.redirect_stderr(chatter):
            state = weights.get_state_dict(progress=False, weights_only=True, check_hash=True)  # sha256 prefix
    except (urllib.error.URLError, OSError) as e:
        reason = getattr(e, "reason", e)
        raise WeightsError(
            f"could not download torchvision MobileNet_V2_Weights.{name} from {weights.url} ({reason}). "
            "Without internet, fetch that file elsewhere and pass its path instead of the weights name."
        ) from e
    sys.stderr.write(chatter.getvalue())
    load_state_dict_checked(model, from_torchvision(state), f"torchvision MobileNet_V2_Weights.{name}")


def load_weights_file(model: MobileNetV2, path: str | Path) -> None:
    """Load a local file: a torchvision or suite state dict, or a suite checkpoint holding one under "model"."""
    obj = load_checkpoint(path)
    if isinstance(obj, dict) and "model" in obj and isinstance(obj["model"], Mapping):
        if obj.get("arch", "mobilenet_v2") != "mobilenet_v2":
            state = {k.removeprefix("backbone."): v for k, v in obj["model"].items() if k.startswith("backbone.")}
            if not state:
                raise WeightsError(f"{path}: a {obj['arch']!r} checkpoint without backbone weights")
        else:
            state = obj["model"]
    elif isinstance(obj, Mapping) and all(isinstance(v, torch.Tensor) for v in obj.values()):
        state = obj
    else:
        raise WeightsError(f"{path}: neither a state dict nor a checkpoint with a 'model' entry")
    if is_torchvision_state_dict(state):
        state = from_torchvision(state)
    load_state_dict_checked(model, state, str(path))


def load_pretrained(model: MobileNetV2, spec: str) -> None:
    """`spec`: a torchvision weights name (IMAGENET1K_V1/V2), any other weights name (backbone/named_weights.py: the
    backbone of a named detector or segmenter), or a PyTorch weights file (state dict or suite checkpoint)."""
    if spec in TORCHVISION_WEIGHTS:
        load_torchvision_imagenet(model, spec)
    else:
        load_weights_file(model, resolve_pytorch_weights(spec))


def resolve_pytorch_weights(spec: str) -> Path:
    """The PyTorch file a weights name or path stands for; a TFLite file is refused with its import command."""
    path = resolve(spec)
    if path.suffix == ".tflite":
        raise WeightsError(
            f"{spec}: TFLite files are converted once, then loaded: "
            f"python -m tools.import_tflite {spec} --out {path.with_suffix('.pt')}"
        )
    return path


def checkpoint_dict(model: MobileNetV2, **extra: object) -> dict[str, object]:
    """The suite's checkpoint layout for a bare MobileNetV2 (see backbone/checkpoint.py)."""
    return {"arch": "mobilenet_v2", "config": dict(model.config), "model": model.state_dict(), **extra}


def mobilenet_v2_from_checkpoint(name_or_path: str | Path) -> MobileNetV2:
    """Rebuild a MobileNetV2 from a suite checkpoint written with `checkpoint_dict` (a path or a weights name)."""
    path = resolve(name_or_path)

    def build(checkpoint: Mapping) -> MobileNetV2:
        return MobileNetV2(**checkpoint["config"])

    return model_from_checkpoint(
        load_checkpoint(path), str(path), "mobilenet_v2", "a MobileNetV2 classifier/backbone", build
    )
