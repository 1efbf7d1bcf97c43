"""DeepLab checkpoints: {"arch": "deeplab", "preset": name, "preset_config": the preset's fields, "config": the
model's constructor arguments, "model": state dict, "class_names": [...]} plus anything the caller adds
(optimizer state, import provenance). A file alone rebuilds its model and its preprocessing, and a file of the
other head, another preset or another class count is refused with its name.

`save_deeplab(model, path, **extra)` / `load_deeplab(name_or_path, ...)` have the same shape as SSDLite's."""

from __future__ import annotations

import os
from dataclasses import asdict, fields
from pathlib import Path
from typing import Any, Mapping

from backbone.checkpoint import load_checkpoint, model_from_checkpoint, save_checkpoint
from backbone.pretrained import resolve
from common.errors import WeightsError
from deeplab_mobile.model import MobileDeepLabV3
from deeplab_mobile.presets import DeepLabPreset

ARCH = "deeplab"
_PRESET_FIELDS = {f.name for f in fields(DeepLabPreset)}


def checkpoint_dict(model: MobileDeepLabV3, **extra: Any) -> dict[str, Any]:
    """The checkpoint of `model`, its preset and class names included."""
    if model.preset is None:
        raise ValueError("a MobileDeepLabV3 without a preset: build it with build_deeplab or load_deeplab")
    return {
        "arch": ARCH,
        "preset": model.preset.name,
        "preset_config": asdict(model.preset),
        "config": dict(model.config),
        "model": model.state_dict(),
        "class_names": list(model.class_names),
        **extra,
    }


def save_deeplab(model: MobileDeepLabV3, path: str | os.PathLike, **extra: Any) -> Path:
    """Write atomically: an interrupted or failed save leaves any previous file untouched."""
    return save_checkpoint(checkpoint_dict(model, **extra), path)


def deeplab_from_checkpoint(
    checkpoint: Any, source: str, *, preset: DeepLabPreset | str | None = None, num_classes: int | None = None,
    ema: bool = True,
) -> MobileDeepLabV3:  # fmt: skip
    """Rebuild the model a loaded checkpoint describes; `preset` / `num_classes` state what the caller expects, and
    every mismatch is a WeightsError naming `source`."""

    def build(checkpoint: Mapping[str, Any]) -> MobileDeepLabV3:
        saved = checkpoint.get("preset_config")
        if not isinstance(saved, dict) or set(saved) != _PRESET_FIELDS:
            raise WeightsError(
                f"{source}: DeepLab checkpoint without a valid 'preset_config' entry (written by another version?)"
            )
        found = DeepLabPreset(**saved)
        expected = preset.name if isinstance(preset, DeepLabPreset) else preset
        if expected is not None and found.name != expected:
            raise WeightsError(f"{source}: a checkpoint of preset {found.name!r}, not the {expected!r} asked for")
        classes = checkpoint["config"].get("num_classes")
        if num_classes is not None and classes != num_classes:
            raise WeightsError(f"{source}: a {classes}-class model, not the {num_classes} classes asked for")
        try:
            model = MobileDeepLabV3(**checkpoint["config"])
        except (TypeError, ValueError) as e:
            raise WeightsError(f"{source}: its model config does not build a MobileDeepLabV3: {e}") from e
        names = list(checkpoint.get("class_names") or [])
        if len(names) != model.num_classes:
            raise WeightsError(f"{source}: {len(names)} class names for a {model.num_classes}-class model")
        model.preset, model.class_names = found, names
        return model

    return model_from_checkpoint(checkpoint, source, ARCH, "a Mobile DeepLabv3 segmentation model", build, ema)


def load_deeplab(
    name_or_path: str | os.PathLike, *, preset: DeepLabPreset | str | None = None, num_classes: int | None = None,
    ema: bool = True,
) -> tuple[MobileDeepLabV3, dict[str, Any]]:  # fmt: skip
    """The model of a checkpoint file or weights name (deeplab_mobile/weights.py), in eval mode, and the checkpoint
    dict (extras such as import provenance). See `deeplab_from_checkpoint` for the checks."""
    path = resolve(name_or_path)
    checkpoint = load_checkpoint(path)
    model = deeplab_from_checkpoint(checkpoint, str(path), preset=preset, num_classes=num_classes, ema=ema)
    return model.eval(), checkpoint
