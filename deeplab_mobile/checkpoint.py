"""DeepLab checkpoints: {"arch": "deeplab", "preset": name, "preset_config": the preset's fields, "config": the
model's constructor arguments, "model": state dict, "class_names": [...]} plus anything the caller adds
(optimizer state, import provenance). A file alone rebuilds its model and its preprocessing, and a file of the
other head, another preset or another class count is refused with its name."""

from __future__ import annotations

import os
from dataclasses import asdict, fields
from pathlib import Path
from typing import Any, Sequence

from backbone.checkpoint import WeightsError, load_checkpoint, save_checkpoint
from backbone.weights import load_state_dict_checked
from deeplab_mobile.model import MobileDeepLabV3
from deeplab_mobile.presets import DeepLabPreset

ARCH = "deeplab"
_PRESET_FIELDS = {f.name for f in fields(DeepLabPreset)}


def checkpoint_dict(
    model: MobileDeepLabV3, preset: DeepLabPreset, class_names: Sequence[str], **extra: Any
) -> dict[str, Any]:
    if len(class_names) != model.num_classes:
        raise ValueError(f"{len(class_names)} class names for a {model.num_classes}-class model")
    return {
        "arch": ARCH,
        "preset": preset.name,
        "preset_config": asdict(preset),
        "config": dict(model.config),
        "model": model.state_dict(),
        "class_names": list(class_names),
        **extra,
    }


def save_deeplab(
    path: str | os.PathLike, model: MobileDeepLabV3, preset: DeepLabPreset, class_names: Sequence[str], **extra: Any
) -> Path:
    """Write atomically: an interrupted or failed save leaves any previous file untouched."""
    return save_checkpoint(checkpoint_dict(model, preset, class_names, **extra), path)


def load_deeplab(
    path: str | os.PathLike, preset: str | None = None, num_classes: int | None = None, ema: bool = True
) -> tuple[MobileDeepLabV3, DeepLabPreset, list[str]]:
    """Rebuild the model of the DeepLab checkpoint file `path`; see `deeplab_from_checkpoint`."""
    return deeplab_from_checkpoint(load_checkpoint(path), str(path), preset, num_classes, ema)


def deeplab_from_checkpoint(
    obj: Any, source: str, preset: str | None = None, num_classes: int | None = None, ema: bool = True
) -> tuple[MobileDeepLabV3, DeepLabPreset, list[str]]:
    """Rebuild the model a loaded checkpoint describes; `preset` / `num_classes` state what the caller expects, and
    every mismatch is a WeightsError naming `source`.

    A training checkpoint with EMA weights yields those (`ema=False`: the raw weights): the engine evaluates and
    keeps `best.pt` by the EMA weights."""
    if not isinstance(obj, dict) or not {"arch", "config", "model"} <= obj.keys():
        raise WeightsError(f"{source}: not a suite checkpoint (needs 'arch', 'config' and 'model' entries)")
    if obj["arch"] != ARCH:
        raise WeightsError(
            f"{source}: holds a {obj['arch']!r} model, not a Mobile DeepLabv3 segmentation model; "
            "pass a checkpoint written by the DeepLab training or import tools"
        )
    saved = obj.get("preset_config")
    if not isinstance(saved, dict) or set(saved) != _PRESET_FIELDS:
        raise WeightsError(
            f"{source}: DeepLab checkpoint without a valid 'preset_config' entry (written by another version?)"
        )
    found = DeepLabPreset(**saved)
    if preset is not None and found.name != preset:
        raise WeightsError(f"{source}: a checkpoint of preset {found.name!r}, not the {preset!r} asked for")
    classes = obj["config"].get("num_classes")
    if num_classes is not None and classes != num_classes:
        raise WeightsError(f"{source}: a {classes}-class model, not the {num_classes} classes asked for")
    try:
        model = MobileDeepLabV3(**obj["config"])
    except (TypeError, ValueError) as e:
        raise WeightsError(f"{source}: its model config does not build a MobileDeepLabV3: {e}") from e
    weights = obj["ema"] if ema and obj.get("ema") is not None else obj["model"]
    load_state_dict_checked(model, weights, source)
    names = list(obj.get("class_names") or [])
    if len(names) != model.num_classes:
        raise WeightsError(f"{source}: {len(names)} class names for a {model.num_classes}-class model")
    return model, found, names
