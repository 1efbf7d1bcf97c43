"""DeepLab checkpoints: {"arch": "deeplab", "preset": name, "config": the preset's fields, "model": state dict,
"class_names": [...]} plus anything the caller adds (optimizer state, import provenance), the layout of SSDLite's.
A file alone rebuilds its model and its preprocessing, and a file of the other head, another preset or another
class count is refused with its name.

Files written before the preset held the whole network (until December 2026: a "preset_config" entry beside the
model's constructor arguments in "config") are converted on read, with a note on stderr.

`save_deeplab(model, path, **extra)` / `load_deeplab(name_or_path, ...)` have the same shape as SSDLite's."""

from __future__ import annotations

import os
import sys
from functools import partial
from pathlib import Path
from typing import Any, Mapping

from backbone.checkpoint import load_model, model_from_checkpoint, save_checkpoint
from backbone.preset import check_preset
from common.errors import WeightsError
from deeplab_mobile.model import MobileDeepLabV3
from deeplab_mobile.presets import PRESETS, DeepLabPreset

ARCH = "deeplab"
# What the old layout kept in the model's constructor arguments rather than in the preset.
_OLD_MODEL_FIELDS = ("bn_eps", "bn_momentum", "dropout", "align_corners")


def checkpoint_dict(model: MobileDeepLabV3, **extra: Any) -> dict[str, Any]:
    """The checkpoint of `model`, its preset and class names included."""
    return {
        "arch": ARCH,
        "preset": model.preset.name,
        "config": model.preset.to_config(),
        "class_names": list(model.class_names),
        "model": model.state_dict(),
        **extra,
    }


def save_deeplab(model: MobileDeepLabV3, path: str | os.PathLike, **extra: Any) -> Path:
    """Write atomically: an interrupted or failed save leaves any previous file untouched."""
    return save_checkpoint(checkpoint_dict(model, **extra), path)


def _converted_config(checkpoint: Mapping[str, Any], source: str) -> dict[str, Any]:
    """The preset fields of an old-layout checkpoint: its "preset_config" (whose fixed-window image pooling is the
    global pooling every TF input path computed, deeplab_mobile/head.py) plus what its "config" held."""
    old, model = dict(checkpoint["preset_config"]), checkpoint["config"]
    old.pop("tf_fixed_pooling", None)
    if "resize" not in old and "args" in checkpoint:  # trained here, so resized by the training pipeline's OpenCV
        old["resize"] = "opencv_linear"
    old.update({k: model[k] for k in _OLD_MODEL_FIELDS if k in model})
    if model.get("num_classes", old.get("num_classes")) != old.get("num_classes"):
        raise WeightsError(f"{source}: its preset and model disagree on the class count")
    print(
        f"note: {source}: a DeepLab checkpoint of the earlier layout, converted on read; save it again "
        "(Segmenter.load(path).save(path)) to skip this",
        file=sys.stderr,
    )
    return old


def stored_preset(checkpoint: Mapping[str, Any], source: str) -> DeepLabPreset:
    """The preset a checkpoint was made with (old layouts converted)."""
    try:
        config = _converted_config(checkpoint, source) if "preset_config" in checkpoint else checkpoint["config"]
        return DeepLabPreset.from_config(config)
    except (KeyError, TypeError, ValueError) as e:
        raise WeightsError(f"{source}: unreadable DeepLab configuration: {e}") from e


def deeplab_from_checkpoint(
    checkpoint: Any,
    source: str,
    *,
    preset: DeepLabPreset | str | None = None,
    num_classes: int | None = None,
    ema: bool = True,
) -> MobileDeepLabV3:
    """Rebuild the model a loaded checkpoint describes; `preset` / `num_classes` state what the caller expects, and
    every mismatch is a WeightsError naming `source`."""

    def build(checkpoint: Mapping[str, Any]) -> MobileDeepLabV3:
        stored = stored_preset(checkpoint, source)
        check_preset(stored, preset, PRESETS, source)
        if num_classes is not None and stored.num_classes != num_classes:
            raise WeightsError(f"{source}: a {stored.num_classes}-class model, not the {num_classes} classes asked for")
        names = list(checkpoint.get("class_names") or [])
        if len(names) != stored.num_classes:
            raise WeightsError(f"{source}: {len(names)} class names for a {stored.num_classes}-class model")
        return MobileDeepLabV3(stored, names)

    return model_from_checkpoint(checkpoint, source, ARCH, "a Mobile DeepLabv3 segmentation model", build, ema)


def load_deeplab(
    name_or_path: str | os.PathLike,
    *,
    preset: DeepLabPreset | str | None = None,
    num_classes: int | None = None,
    ema: bool = True,
) -> tuple[MobileDeepLabV3, dict[str, Any]]:
    """The model of a checkpoint file or weights name, in eval mode, and the checkpoint dict (see
    backbone.checkpoint.load_model; `deeplab_from_checkpoint` for the checks)."""
    rebuild = partial(deeplab_from_checkpoint, preset=preset, num_classes=num_classes, ema=ema)
    return load_model(name_or_path, rebuild, ARCH, "a Mobile DeepLabv3 segmenter")
