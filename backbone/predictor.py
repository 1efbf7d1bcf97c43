"""What the public objects of both heads (ssdlite.Detector, deeplab_mobile.Segmenter) share: a model that owns its
preset and class names, built from a weights name or a checkpoint, saved as one, moved between devices."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Callable, ClassVar

import torch
from torch import nn


class Predictor:
    """Subclasses name their head's checkpoint functions (`load_ssdlite` / `save_ssdlite`, ...) and add `__call__`."""

    load_model: ClassVar[Callable[..., tuple[nn.Module, dict[str, Any]]]]
    save_model: ClassVar[Callable[..., Path]]

    def __init__(self, model: nn.Module) -> None:
        self.model = model.eval()

    @classmethod
    def from_pretrained(cls, name_or_path: str | os.PathLike, device: str | torch.device = "cpu"):
        """A weights name (README: Model zoo) or a checkpoint file, on `device`."""
        model, _ = cls.load_model(name_or_path)
        return cls(model).to(device)

    load = from_pretrained  # a checkpoint path is one kind of `name_or_path`

    def save(self, path: str | os.PathLike, **extra: Any) -> Path:
        """A checkpoint that `load`, the head's loader and every `--weights` flag read."""
        return type(self).save_model(self.model, path, **extra)

    def to(self, device: str | torch.device):
        self.model.to(device)
        return self

    @property
    def preset(self) -> Any:
        return self.model.preset

    @property
    def class_names(self) -> list[str]:
        return self.model.class_names
