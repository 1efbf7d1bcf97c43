"""SSDLite checkpoints: {"arch": "ssdlite", "preset": name, "config": preset fields, "model": state dict,
"class_names": [...], ...extra}. The backbone lives under the "backbone." prefix of the state dict, so
`backbone.load_pretrained` can take it from a detection checkpoint.

`save_ssdlite(model, path, **extra)` / `load_ssdlite(name_or_path, ...)` have the same shape as DeepLab's."""

from __future__ import annotations

import os
from functools import partial
from pathlib import Path
from typing import Any, Mapping

from backbone.checkpoint import load_model, model_from_checkpoint, save_checkpoint
from backbone.preset import check_preset
from common.errors import WeightsError
from ssdlite.model import SSDLite
from ssdlite.presets import PRESETS, SSDLitePreset

ARCH = "ssdlite"


def checkpoint_dict(model: SSDLite, **extra: Any) -> dict[str, Any]:
    """The checkpoint of `model`, its preset and class names included."""
    return {
        "arch": ARCH,
        "preset": model.preset.name,
        "config": model.preset.to_config(),
        "class_names": list(model.class_names),
        "model": model.state_dict(),
        **extra,
    }


def save_ssdlite(model: SSDLite, path: str | os.PathLike, **extra: Any) -> Path:
    """Write atomically: an existing file is replaced only once the new one is complete."""
    return save_checkpoint(checkpoint_dict(model, **extra), path)


def stored_preset(checkpoint: Mapping[str, Any], source: str) -> SSDLitePreset:
    """The preset a checkpoint was made with. Files written before presets recorded their resize were resized by
    OpenCV when trained here (they hold the training flags) and by TF when imported from Google's TF-padded
    models."""
    try:
        config = dict(checkpoint["config"])
        if "resize" not in config and "args" in checkpoint:
            config["resize"] = "opencv_linear"
        return SSDLitePreset.from_config(config)
    except (KeyError, TypeError, ValueError) as e:
        raise WeightsError(f"{source}: unreadable SSDLite configuration: {e}") from e


def ssdlite_from_checkpoint(
    checkpoint: Any,
    source: str,
    *,
    preset: SSDLitePreset | str | None = None,
    num_classes: int | None = None,
    ema: bool = True,
) -> SSDLite:
    """Rebuild the model a loaded checkpoint describes, checking it against the preset and class count the caller
    expects (e.g. from --preset and the dataset); every mismatch is a WeightsError naming `source`."""

    def build(checkpoint: Mapping[str, Any]) -> SSDLite:
        stored = stored_preset(checkpoint, source)
        check_preset(stored, preset, PRESETS, source)
        if num_classes is not None and num_classes != stored.num_classes:
            raise WeightsError(
                f"{source}: has {stored.num_classes} classes (background included) but {num_classes} were asked for "
                "(dataset or --num-classes): use a checkpoint trained on this dataset, or fine-tune from its backbone"
            )
        names = checkpoint.get("class_names")
        if names is not None and len(names) != stored.num_classes:
            raise WeightsError(f"{source}: {len(names)} class names for a {stored.num_classes}-class model")
        return SSDLite(stored, names)

    return model_from_checkpoint(checkpoint, source, ARCH, "an SSDLite detector", build, ema)


def load_ssdlite(
    name_or_path: str | os.PathLike,
    *,
    preset: SSDLitePreset | str | None = None,
    num_classes: int | None = None,
    ema: bool = True,
) -> tuple[SSDLite, dict[str, Any]]:
    """The model of a checkpoint file or weights name, in eval mode, and the checkpoint dict (see
    backbone.checkpoint.load_model; `ssdlite_from_checkpoint` for the checks)."""
    rebuild = partial(ssdlite_from_checkpoint, preset=preset, num_classes=num_classes, ema=ema)
    return load_model(name_or_path, rebuild, ARCH, "an SSDLite detector")
