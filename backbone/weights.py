"""Pretrained MobileNetV2 weights: torchvision's ImageNet checkpoints, local files, and checks that name
what does not fit.

`load_pretrained(model, "IMAGENET1K_V1" | "IMAGENET1K_V2" | "path/to/file")` is the one entry point the
training scripts call; `.tflite` files are converted first by tools/import_tflite.py.
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
from torch import nn
from torchvision.models import MobileNet_V2_Weights

from backbone.checkpoint import WeightsError, load_checkpoint
from backbone.mobilenetv2 import MobileNetV2

TORCHVISION_WEIGHTS = tuple(w.name for w in MobileNet_V2_Weights)  # ("IMAGENET1K_V1", "IMAGENET1K_V2")

# torchvision `features.K` → our names. Block i is features.(i+1); block 0 has no expansion conv.
_TORCHVISION_RULES: tuple[tuple[str, str], ...] = (
    (r"^features\.0\.0\.", "stem.conv."),
    (r"^features\.0\.1\.", "stem.bn."),
    (r"^features\.18\.0\.", "last_conv.conv."),
    (r"^features\.18\.1\.", "last_conv.bn."),
    (r"^classifier\.1\.", "classifier."),
)
_FIRST_BLOCK = {"conv.0.0": "depthwise.conv", "conv.0.1": "depthwise.bn", "conv.1": "project.conv", "conv.2": "project.bn"}
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
        for label, items in (("missing keys", missing), ("unexpected keys", unexpected), ("shape mismatches", mismatched)):
            if items:
                parts.append(f"{len(items)} {label} (e.g. {', '.join(items[:2])})")
        width = getattr(model, "config", {}).get("width_mult", "?")
        raise WeightsError(
            f"{source}: weights do not fit {type(model).__name__} (width {width}): {'; '.join(parts)}. "
            "Is it a checkpoint of another architecture or width?"
        )
    model.load_state_dict({k: v for k, v in state.items() if k in own}, strict=False)


def load_torchvision_imagenet(model: MobileNetV2, name: str = "IMAGENET1K_V1") -> None:
    """Load torchvision's ImageNet weights through its own download path (cached in $TORCH_HOME)."""
    if name not in TORCHVISION_WEIGHTS:
        raise WeightsError(f"unknown torchvision weights {name!r}: choose one of {', '.join(TORCHVISION_WEIGHTS)}")
    weights = MobileNet_V2_Weights[name]
    chatter = io.StringIO()  # torch.hub announces "Downloading: ..." even when the download then fails
    try:
        with contextlib.redirect_stderr(chatter):
            state = weights.get_state_dict(progress=False, weights_only=True)
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
    """`spec` is a torchvision weights name (IMAGENET1K_V1/V2), a `.tflite` file or a PyTorch weights file."""
    if spec in TORCHVISION_WEIGHTS:
        load_torchvision_imagenet(model, spec)
    elif Path(spec).suffix == ".tflite":
        raise WeightsError(
            f"{spec}: TFLite files are converted once, then loaded: "
            f"python -m tools.import_tflite {spec} --out {Path(spec).with_suffix('.pt')}"
        )
    elif not Path(spec).exists() and Path(spec).suffix == "" and "/" not in spec:
        raise WeightsError(
            f"{spec}: neither a torchvision weights name ({', '.join(TORCHVISION_WEIGHTS)}) nor an existing file"
        )
    else:
        load_weights_file(model, spec)


def checkpoint_dict(model: MobileNetV2, **extra: object) -> dict[str, object]:
    """The suite's checkpoint layout for a bare MobileNetV2 (see backbone/checkpoint.py)."""
    return {"arch": "mobilenet_v2", "config": dict(model.config), "model": model.state_dict(), **extra}


def mobilenet_v2_from_checkpoint(path: str | Path) -> MobileNetV2:
    """Rebuild a MobileNetV2 from a suite checkpoint written with `checkpoint_dict`."""
    obj = load_checkpoint(path)
    if not isinstance(obj, dict) or "config" not in obj or "model" not in obj:
        raise WeightsError(f"{path}: not a suite checkpoint (needs 'arch', 'config' and 'model' entries)")
    if obj.get("arch") != "mobilenet_v2":
        raise WeightsError(f"{path}: holds a {obj.get('arch')!r} model, not a MobileNetV2 classifier/backbone")
    model = MobileNetV2(**obj["config"])
    load_state_dict_checked(model, obj["model"], str(path))
    return model
