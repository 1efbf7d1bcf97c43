"""What the SSDLite and DeepLab training tasks share: the skip policy, backbone initialisation, the
dataset pair, and checkpoint metadata (everything a checkpoint needs except the weights the engine adds)."""

from __future__ import annotations

import argparse
from typing import Any

from torch import nn

from backbone.weights import load_pretrained
from datasets.errors import SkipCounter
from datasets.sources import DataSplits


class HeadTask:
    """Base of the two head tasks; subclasses set `data` and implement `new_model` and `head_checkpoint`."""

    name: str
    data: DataSplits

    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.skip = SkipCounter() if args.skip_bad_samples else None
        self.model: nn.Module | None = None

    def new_model(self) -> nn.Module:
        raise NotImplementedError

    def head_checkpoint(self) -> dict[str, Any]:
        """The head's own checkpoint layout for `self.model` (weights included; the engine replaces them)."""
        raise NotImplementedError

    def build_model(self) -> nn.Module:
        self.model = self.new_model()
        if self.args.weights != "none":
            load_pretrained(self.model.backbone, self.args.weights)
        return self.model

    def build_datasets(self):
        return self.data.train, self.data.val

    def checkpoint_meta(self) -> dict[str, Any]:
        meta = {k: v for k, v in self.head_checkpoint().items() if k != "model"}
        if self.skip is not None:
            meta["skipped_samples"] = self.skip.counts()
        return meta
