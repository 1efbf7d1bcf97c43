"""What the presets of both heads share (ssdlite.SSDLitePreset, deeplab_mobile.DeepLabPreset): a frozen dataclass
with a name that fixes everything defining a network and how images are fed to it, stored in checkpoints as plain
values, derived under a name that says what changed when a flag changes a field, and compared field by field when
a checkpoint is loaded for a preset; and the model base that owns a preset and its class names.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any, Iterable, Mapping, Sequence, TypeVar

from torch import nn

from common.errors import WeightsError

P = TypeVar("P", bound="Preset")

# Fields that do not define the network: a checkpoint made under a renamed or re-described preset with the same
# fields fits; the class count is checked on its own (it comes from the dataset, not from a preset).
NOT_COMPARED = ("name", "description", "num_classes")


@dataclass(frozen=True)
class Preset:
    name: str

    def to_config(self) -> dict[str, Any]:
        """Plain values for a checkpoint or args.json (tuples become lists)."""
        return {k: list(v) if isinstance(v, tuple) else v for k, v in dataclasses.asdict(self).items()}

    @classmethod
    def from_config(cls: type[P], config: Mapping[str, Any]) -> P:
        """The preset `to_config` wrote; a ValueError names unknown or missing fields."""
        fields = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(config) - fields)
        if unknown:
            raise ValueError(f"unknown {cls.__name__} fields {unknown}")
        try:
            return cls(**{k: tuple(v) if isinstance(v, list) else v for k, v in config.items()})
        except TypeError as e:
            raise ValueError(f"incomplete {cls.__name__}: {e}") from None

    def derive(self: P, **changes: Any) -> P:
        """This preset with `changes` (fields a flag set), named after them so that no checkpoint claims the
        original preset for another network: `ssdlite320_coco[image_size=160x160]`. Unchanged values are ignored."""
        changes = {k: v for k, v in changes.items() if getattr(self, k) != v}
        if not changes:
            return self
        base, _, listed = self.name.partition("[")
        earlier = dict(item.split("=", 1) for item in listed.rstrip("]").split(",") if "=" in item)
        named = {**earlier, **{k: _text(v) for k, v in changes.items()}}
        label = ",".join(f"{k}={v}" for k, v in named.items())
        return dataclasses.replace(self, name=f"{base}[{label}]", **changes)

    def differences(self, other: Preset, ignore: Iterable[str] = NOT_COMPARED) -> list[str]:
        """`field: ours vs theirs` for every compared field where the two presets differ."""
        skip = set(ignore)
        return [
            f"{f.name}: {_text(getattr(self, f.name))} vs {_text(getattr(other, f.name))}"
            for f in dataclasses.fields(self)
            if f.name not in skip and getattr(self, f.name) != getattr(other, f.name)
        ]


def _text(value: Any) -> str:
    if isinstance(value, tuple) and all(isinstance(v, int) for v in value):
        return "x".join(str(v) for v in value)
    return f"{value:g}" if isinstance(value, float) else str(value)


def preset_table(*presets: P) -> dict[str, P]:
    """A head's PRESETS: name → preset, names unique."""
    table = {p.name: p for p in presets}
    if len(table) != len(presets):
        raise ValueError("two presets share a name")
    return table


def lookup(table: Mapping[str, P], name: str, head: str) -> P:
    """The preset called `name`, or a ValueError listing the known names (for --preset flags)."""
    try:
        return table[name]
    except KeyError:
        raise ValueError(f"unknown {head} preset {name!r}: choose one of {', '.join(table)}") from None


def check_preset(stored: P, expected: P | str | None, table: Mapping[str, P], source: str) -> None:
    """Raise a WeightsError naming `source` when a checkpoint's preset is not the one the caller expects (a preset,
    or a name in `table`): field by field, so a renamed preset with the same fields fits and a flag-changed one
    (same name before the brackets) does not."""
    if expected is None or (isinstance(expected, str) and expected == stored.name):
        return
    if isinstance(expected, str):
        if expected not in table:
            raise WeightsError(
                f"{source}: made with preset {stored.name!r}, not {expected!r}: use --preset "
                f"{stored.name.partition('[')[0]} or another checkpoint"
            )
        expected = table[expected]
    differences = stored.differences(expected)
    if differences:
        raise WeightsError(
            f"{source}: made with preset {stored.name!r}, which differs from {expected.name!r} in "
            f"{'; '.join(differences)} (a preset fixes the network, its input and anchors, so the weights only fit "
            f"their own): use --preset {stored.name.partition('[')[0]} with the same flags, or another checkpoint"
        )


class PresetModel(nn.Module):
    """The base of both heads' models (ssdlite.SSDLite, deeplab_mobile.MobileDeepLabV3): a model owns its preset and
    its class names (background first), so checkpoints, predictors and exporters need nothing else."""

    def __init__(self, preset: Any, class_names: Sequence[str] | None) -> None:
        super().__init__()
        self.preset = preset
        if class_names is None:
            class_names = ["background", *(f"class_{i}" for i in range(1, preset.num_classes))]
        if len(class_names) != preset.num_classes:
            raise ValueError(f"{len(class_names)} class names for a model with {preset.num_classes} classes")
        self.class_names = list(class_names)

    @property
    def num_classes(self) -> int:
        return self.preset.num_classes

    @property
    def config(self) -> dict[str, Any]:
        """The preset's fields, as checkpoints store them (and as messages read the width)."""
        return self.preset.to_config()
