"""Fine-tuning rules: which tensors of a trained model a new model keeps, and a report of what happened.

Every tensor whose role and shape fit is kept (backbone, SSDLite extras and box predictors, the DeepLab head); the
class predictors' rows are mapped by class name (common.labels' alias table, background to background) so a COCO
person detector fine-tuned on "person, bicycle, dog" keeps those three rows; the rest keeps the target's fresh
initialisation. A backbone of another width or a source without a MobileNetV2 stops with one WeightsError.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any, TypeVar

import torch
from torch import nn

import deeplab_mobile  # noqa: F401  (registers the named segmenters, so --weights takes either head's names)
import ssdlite  # noqa: F401  (registers the named detectors)
from backbone.checkpoint import load_checkpoint
from backbone.mobilenet_weights import (
    TORCHVISION_WEIGHTS,
    checkpoint_dict,
    from_torchvision,
    is_torchvision_state_dict,
    load_torchvision_imagenet,
    resolve_pytorch_weights,
)
from backbone.mobilenetv2 import MobileNetV2
from backbone.preset import Preset
from common.errors import WeightsError
from common.labels import UNUSED_CLASS, canonical_class_name, match_class_names

# Output convolutions whose rows are classes: SSDLite's per map (anchors × classes, anchor-major), DeepLab's one.
_CLASS_PREDICTOR = re.compile(r"^head\.(?:cls\.(\d+)\.conv|classifier)\.(?:weight|bias)$")
_BOX_PREDICTOR = re.compile(r"^head\.box\.(\d+)\.conv\.(?:weight|bias)$")
_KINDS = {"ssdlite": "detector (SSDLite)", "deeplab": "segmenter (DeepLab)", "mobilenet_v2": "MobileNetV2"}
P = TypeVar("P", bound=Preset)
_SKIPPED = "num_batches_tracked"  # a counter, not a weight: neither counted nor copied


@dataclass
class TransferReport:
    """What `transfer_weights` did: printed by training, stored in args.json and the run's checkpoints."""

    source: str
    transferred: int = 0  # target tensors copied whole
    row_mapped: int = 0  # class predictor tensors whose rows were copied by class name
    total: int = 0  # target tensors (BatchNorm step counters excluded)
    class_rows: list[str] = field(default_factory=list)  # "target ← source" per class row mapped by name
    new_classes: list[str] = field(default_factory=list)  # target classes that start fresh
    unused_classes: list[str] = field(default_factory=list)  # source classes the target does not have
    reinitialised: list[str] = field(default_factory=list)  # "module: why"
    notes: list[str] = field(default_factory=list)

    def summary(self) -> str:
        rows = f" (+{self.row_mapped} class predictor tensors by row)" if self.row_mapped else ""
        lines = [f"Transferred {self.transferred}/{self.total} tensors{rows} from {self.source}"]
        if self.class_rows:
            lines.append(f"  class rows mapped by name: {', '.join(self.class_rows)}")
        if self.new_classes:
            lines.append(f"  new classes (fresh rows): {', '.join(self.new_classes)}")
        if self.unused_classes:
            more = f" and {len(self.unused_classes) - 10} more" if len(self.unused_classes) > 10 else ""
            lines.append(f"  source classes not in the target: {', '.join(self.unused_classes[:10])}{more}")
        lines += [f"  re-initialised {item}" for item in self.reinitialised]
        lines += [f"  note: {note}" for note in self.notes]
        return "\n".join(lines)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def load_source(spec: str) -> dict[str, Any]:
    """The checkpoint `--weights` names: torchvision's ImageNet weights, a named model, or a file."""
    if spec in TORCHVISION_WEIGHTS:
        body = MobileNetV2()
        load_torchvision_imagenet(body, spec)
        return checkpoint_dict(body)
    path = resolve_pytorch_weights(spec)
    checkpoint = load_checkpoint(path)
    if not isinstance(checkpoint, Mapping):
        raise WeightsError(f"{spec}: neither a checkpoint with a 'model' entry nor a state dict")
    return dict(checkpoint)


def _architecture(model: nn.Module) -> str:
    """ "ssdlite" or "deeplab" by structure (the two heads this module knows)."""
    head = getattr(model, "head", None)
    if head is not None and hasattr(head, "cls") and hasattr(head, "box"):
        return "ssdlite"
    if head is not None and hasattr(head, "classifier"):
        return "deeplab"
    raise TypeError(f"cannot transfer weights into a {type(model).__name__}: expected an SSDLite or a DeepLab model")


def source_state(checkpoint: Mapping[str, Any], source: str) -> tuple[str, dict[str, torch.Tensor], list[str] | None]:
    """(architecture, state dict with the target's key names, class names or None) of a loaded checkpoint: one of
    ours (EMA weights when it has them), an imported one, or a bare MobileNetV2 / torchvision state dict."""
    if "model" in checkpoint and isinstance(checkpoint["model"], Mapping):
        arch = checkpoint.get("arch", "unknown")
        state = checkpoint["ema"] if checkpoint.get("ema") is not None else checkpoint["model"]
        names = checkpoint.get("class_names")
    elif checkpoint and all(isinstance(v, torch.Tensor) for v in checkpoint.values()):
        arch, state, names = "mobilenet_v2", checkpoint, None
    else:
        raise WeightsError(f"{source}: neither a checkpoint with a 'model' entry nor a state dict")
    if is_torchvision_state_dict(state):
        state = from_torchvision(state)
    if arch == "mobilenet_v2":  # a classifier or bare backbone: its body is our backbone, its classifier unused
        state = {f"backbone.{k}": v for k, v in state.items() if not k.startswith("classifier.")}
    if not any(k.startswith("backbone.") for k in state):
        raise WeightsError(
            f"{source}: a {arch!r} checkpoint without MobileNetV2 backbone weights: nothing to start from"
        )
    return arch, dict(state), list(names) if names else None


def _width(checkpoint: Mapping[str, Any]) -> Any:
    config = checkpoint.get("config")
    return config.get("width_mult", "?") if isinstance(config, Mapping) else "?"


def _check_backbone(
    own: Mapping[str, torch.Tensor], state: Mapping[str, torch.Tensor], source: str, theirs: str, ours: str
) -> None:
    """A backbone tensor of another shape means another width or architecture: stop, naming both."""
    for key, value in state.items():
        if key.startswith("backbone.") and key in own and own[key].shape != value.shape:
            raise WeightsError(
                f"{source}: {theirs} does not fit the {ours} being trained ({key}: {list(value.shape)} vs "
                f"{list(own[key].shape)}); train with the source's width (e.g. drop --width-mult) or pick weights "
                "of this width"
            )


def _anchors_per_location(state: Mapping[str, torch.Tensor], index: str) -> int:
    return state[f"head.box.{index}.conv.weight"].shape[0] // 4


def _map_class_rows(
    own: torch.Tensor,
    theirs: torch.Tensor,
    pairs: Sequence[tuple[int, int]],
    own_classes: int,
    their_classes: int,
    anchors: int,
) -> None:
    """Copy row (anchor a, class s) of `theirs` to row (a, t) of `own` for every (t, s) in `pairs`; rows are laid
    out anchor-major (a · classes + class), as SSDLite's head flattens them; DeepLab has one "anchor"."""
    for a in range(anchors):
        for t, s in pairs:
            own[a * own_classes + t] = theirs[a * their_classes + s]


CONVENTIONS = ("padding_mode", "normalization", "bn_eps")  # how a model pads, scales its input, normalises


def source_conventions(checkpoint: Mapping[str, Any]) -> dict[str, Any]:
    """How the source padded, fed and normalised (CONVENTIONS, where known). A fine-tuned model should keep them:
    TF's BatchNorm epsilon is 1e-3, and its depthwise layers have variances far below that, so the same weights
    under PyTorch's 1e-5 compute other features."""
    if "model" not in checkpoint:  # a bare state dict: torchvision's conventions
        return {"padding_mode": "symmetric", "normalization": "imagenet", "bn_eps": 1e-5}
    found: dict[str, Any] = {}
    for part in ("config", "preset_config"):  # the model's constructor arguments; a DeepLab's preset
        config = checkpoint.get(part)
        if isinstance(config, Mapping):
            found.update({k: config[k] for k in CONVENTIONS if k in config})
    return found


def preset_like_source(preset: P, checkpoint: Mapping[str, Any]) -> P:
    """`preset` (an SSDLite or DeepLab preset) padding, normalising and with the BatchNorm epsilon of the source;
    derived under a name that lists the changes (backbone.preset.Preset.derive), so checkpoints do not claim the
    original preset's conventions."""
    return preset.derive(**{k: v for k, v in source_conventions(checkpoint).items() if hasattr(preset, k)})


def transfer_weights(
    model: nn.Module, class_names: Sequence[str], checkpoint: Mapping[str, Any], source: str
) -> TransferReport:
    """Load into `model` (freshly built, `class_names` with the background first) what fits of `checkpoint`
    (loaded from `source`, the name used in messages) and say what was done."""
    target = _architecture(model)
    arch, state, source_names = source_state(checkpoint, source)
    own = model.state_dict()
    report = TransferReport(source=source, total=sum(_SKIPPED not in k for k in own))
    _check_backbone(
        own,
        state,
        source,
        f"its {_KINDS.get(arch, arch)} of width {_width(checkpoint)}",
        f"{_KINDS[target]} of width {getattr(model, 'config', {}).get('width_mult', '?')}",
    )
    if arch != target:
        state = {k: v for k, v in state.items() if k.startswith("backbone.")}
        report.notes.append(
            f"from a {_KINDS.get(arch, arch)}: only its backbone (the shared MobileNetV2 extractor) "
            f"is used, the head starts fresh"
        )
    _note_conventions(model, checkpoint, report)

    # SSDLite: maps whose anchors per location differ keep neither box predictor nor class rows.
    other_anchors = {}
    for key in own:
        match = _BOX_PREDICTOR.match(key)
        if match and key in state and state[key].shape != own[key].shape:
            other_anchors[match[1]] = _anchors_per_location(state, match[1])
    for index, anchors in sorted(other_anchors.items()):
        report.reinitialised.append(
            f"head.box.{index}.conv and head.cls.{index}.conv: {anchors} anchors per "
            f"location in the source, {_anchors_per_location(own, index)} here"
        )

    predictors = [k for k in own if _CLASS_PREDICTOR.match(k) and k in state]
    pairs = _class_pairs(class_names, source_names, report, predictors, state)
    copied, absent = {}, set()
    for key, value in own.items():
        if _SKIPPED in key:
            continue
        if key not in state:  # named by its top module when the source has none of it ("head"), else one level down
            top = key.split(".")[0]
            absent.add(top if not any(k.startswith(f"{top}.") for k in state) else ".".join(key.split(".")[:2]))
            continue
        predictor, box = _CLASS_PREDICTOR.match(key), _BOX_PREDICTOR.match(key)
        index = (predictor or box)[1] if predictor or box else None  # the feature map (None: DeepLab's classifier)
        if index in other_anchors:
            continue
        if predictor:
            if pairs:
                anchors = _anchors_per_location(own, index) if target == "ssdlite" else 1
                rows = value.clone()
                _map_class_rows(rows, state[key], pairs, len(class_names), state[key].shape[0] // anchors, anchors)
                copied[key] = rows
                report.row_mapped += 1
        elif state[key].shape != value.shape:
            report.reinitialised.append(
                f"{key}: shape {list(state[key].shape)} in the source, {list(value.shape)} here"
            )
        else:
            copied[key] = state[key]
            report.transferred += 1
    report.reinitialised += [f"{prefix}: not in the source" for prefix in sorted(absent)]
    model.load_state_dict(copied, strict=False)
    return report


def _note_conventions(model: nn.Module, checkpoint: Mapping[str, Any], report: TransferReport) -> None:
    """Say when the target feeds or scores images unlike the source: the kept weights then need re-learning."""
    theirs = source_conventions(checkpoint)
    ours = {k: getattr(model, "config", {}).get(k) for k in ("padding_mode", "bn_eps")}
    preset = getattr(model, "preset", None)  # both heads own their preset
    if preset is not None:
        ours["normalization"] = preset.normalization
        their_scores = (checkpoint.get("config") or {}).get("classification")
        our_scores = getattr(preset, "classification", None)
        if their_scores and our_scores and their_scores != our_scores:
            report.notes.append(
                f"the source scores classes with {their_scores}, this model with {our_scores}: "
                "mapped rows keep their logits, not their probabilities"
            )
    for key, value in theirs.items():
        if ours.get(key) is not None and ours[key] != value:
            report.notes.append(f"the source was trained with {key} {value!r}, this model uses {ours[key]!r}")


def _class_pairs(
    class_names: Sequence[str],
    source_names: list[str] | None,
    report: TransferReport,
    predictors: list[str],
    state: Mapping[str, torch.Tensor],
) -> list[tuple[int, int]]:
    """(target index, source index) of the class rows to copy; fills the report's class entries."""
    report.new_classes = list(class_names)
    if not predictors:
        return []
    if source_names is None:
        report.notes.append(
            "the source has no class names, so its class rows cannot be mapped by name: "
            "every class row is re-initialised"
        )
        return []
    rows = state[predictors[0]].shape[0]
    if rows % len(source_names):
        report.notes.append(
            f"the source's {len(source_names)} class names do not describe its {rows} class rows: "
            "every class row is re-initialised"
        )
        return []
    pairs = sorted((t, s) for s, t in match_class_names(source_names, class_names).items())
    if all(t == 0 for t, _ in pairs):
        # The background row alone was trained against classes absent here: it calls everything background and holds
        # the new rows back (SSDLite on the synthetic set: AP50 0.073 with it, 0.145 without; docs/custom_data.md).
        if pairs:
            report.notes.append("only the background matches by name: its row starts fresh with the new classes")
        pairs = []
    mapped, used = {t for t, _ in pairs}, {s for _, s in pairs}
    report.class_rows = [f"{class_names[t]} ← {source_names[s]}" for t, s in pairs]
    report.new_classes = [name for t, name in enumerate(class_names) if t not in mapped]
    report.unused_classes = [
        name for s, name in enumerate(source_names) if s not in used and canonical_class_name(name) != UNUSED_CLASS
    ]
    return pairs
