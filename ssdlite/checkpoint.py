"""SSDLite checkpoints: {"arch": "ssdlite", "preset": name, "config": preset fields, "model": state dict,
"class_names": [...], ...extra}. The backbone lives under the "backbone." prefix of the state dict, so
`backbone.load_pretrained` can take it from a detection checkpoint."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Mapping, Sequence

from backbone.checkpoint import WeightsError, load_checkpoint, save_checkpoint
from backbone.weights import load_state_dict_checked
from ssdlite.model import SSDLite
from ssdlite.presets import SSDLitePreset

ARCH = "ssdlite"


def checkpoint_meta(preset: SSDLitePreset, class_names: Sequence[str]) -> dict[str, Any]:
    """Everything but the weights: what the training engine's `Task.checkpoint_meta` returns for SSDLite."""
    if len(class_names) != preset.num_classes:
        raise ValueError(f"{len(class_names)} class names for a model with {preset.num_classes} classes")
    return {"arch": ARCH, "preset": preset.name, "config": preset.to_config(), "class_names": list(class_names)}


def checkpoint_dict(model: SSDLite, class_names: Sequence[str], **extra: Any) -> dict[str, Any]:
    """The checkpoint of `model`; `class_names` has one name per class, the background (index 0) included."""
    return {**checkpoint_meta(model.preset, class_names), "model": model.state_dict(), **extra}


def save_ssdlite(model: SSDLite, path: str | os.PathLike, class_names: Sequence[str], **extra: Any) -> Path:
    """Write atomically: an existing file is replaced only once the new one is complete."""
    return save_checkpoint(checkpoint_dict(model, class_names, **extra), path)


def ssdlite_from_checkpoint(
    checkpoint: Any,
    source: str,
    preset: SSDLitePreset | str | None = None,
    num_classes: int | None = None,
    ema: bool = True,
) -> SSDLite:
    """Rebuild the model a loaded checkpoint describes, checking it against the preset and class count the caller
    expects (e.g. from --preset and the dataset); every mismatch is a WeightsError naming `source`.

    A training checkpoint with EMA weights yields those (`ema=False`: the raw weights): the engine evaluates and
    selects best.pt by the EMA weights, so they are the ones that reproduce its scores.
    """
    if not isinstance(checkpoint, Mapping) or not {"arch", "config", "model"} <= checkpoint.keys():
        raise WeightsError(f"{source}: not a suite checkpoint (needs 'arch', 'config' and 'model' entries)")
    if checkpoint["arch"] != ARCH:
        raise WeightsError(
            f"{source}: holds a {checkpoint['arch']!r} model, not an SSDLite detector: "
            "pass a checkpoint written by the SSDLite training or import tools"
        )
    try:
        stored = SSDLitePreset.from_config(checkpoint["config"])
    except (TypeError, ValueError) as e:
        raise WeightsError(f"{source}: unreadable SSDLite configuration: {e}") from e
    expected = preset.name if isinstance(preset, SSDLitePreset) else preset
    if expected is not None and expected != stored.name:
        raise WeightsError(
            f"{source}: made with preset {stored.name!r}, not {expected!r}: use --preset {stored.name} "
            "(a preset fixes padding, normalisation and anchors, so the weights only fit their own)"
        )
    if num_classes is not None and num_classes != stored.num_classes:
        raise WeightsError(
            f"{source}: has {stored.num_classes} classes (background included) but {num_classes} were asked for "
            "(dataset or --num-classes): use a checkpoint trained on this dataset, or fine-tune from its backbone"
        )
    model = SSDLite(stored)
    weights = checkpoint.get("ema") if ema and checkpoint.get("ema") is not None else checkpoint["model"]
    load_state_dict_checked(model, weights, source)
    return model


def load_ssdlite(
    path: str | os.PathLike,
    preset: SSDLitePreset | str | None = None,
    num_classes: int | None = None,
    ema: bool = True,
) -> tuple[SSDLite, dict[str, Any]]:
    """The model in `path`, in eval mode (see `ssdlite_from_checkpoint` for the checks), and the checkpoint dict
    (class names, extras)."""
    checkpoint = load_checkpoint(path)
    return ssdlite_from_checkpoint(checkpoint, str(path), preset, num_classes, ema).eval(), checkpoint
