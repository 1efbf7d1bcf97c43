"""What the SSDLite and DeepLab training tasks share: the skip policy, the start from trained weights
(train/transfer.py) and --freeze, the dataset pair, and checkpoint metadata (everything a checkpoint needs except
the weights the engine adds)."""

from __future__ import annotations

import argparse
from typing import Any

from torch import nn

from datasets.errors import SkipCounter
from datasets.sources import DataSplits
from train.freeze import freeze_backbone
from train.transfer import TransferReport, load_source, transfer_weights


class HeadTask:
    """Base of the two head tasks; subclasses set `data` and implement `new_model` and `head_checkpoint`."""

    name: str
    data: DataSplits

    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        if args.weights is None:  # ImageNet backbone weights for real data; the synthetic shapes train from scratch
            args.weights = "none" if args.data == "synthetic" else "IMAGENET1K_V1"
        self.skip = SkipCounter() if args.skip_bad_samples else None
        self.model: nn.Module | None = None
        # The checkpoint --weights names, loaded before the subclass picks its preset: a fine-tuned model keeps
        # the source's conventions (padding, normalisation; an SSDLite source's whole preset) unless --preset says.
        self.source = None if args.weights == "none" else load_source(args.weights)
        self.transfer: TransferReport | None = None

    def new_model(self) -> nn.Module:
        raise NotImplementedError

    def head_checkpoint(self) -> dict[str, Any]:
        """The head's own checkpoint layout for `self.model` (weights included; the engine replaces them)."""
        raise NotImplementedError

    def build_model(self) -> nn.Module:
        self.model = self.new_model()
        if self.source is not None:
            self.transfer = transfer_weights(self.model, self.data.class_names, self.source, self.args.weights)
            if not self.args.resume:  # a resumed run loads its own weights over these
                print(self.transfer.summary())
            self.args.transfer = self.transfer.to_dict()  # lands in args.json and every checkpoint's "args"
        if self.args.freeze:
            self.args.frozen = freeze_backbone(self.model.backbone, self.args.freeze)
        return self.model

    def build_datasets(self):
        return self.data.train, self.data.val

    def checkpoint_meta(self) -> dict[str, Any]:
        meta = {k: v for k, v in self.head_checkpoint().items() if k != "model"}
        if self.skip is not None:
            meta["skipped_samples"] = self.skip.counts()
        if self.transfer is not None:
            meta["transfer"] = self.transfer.to_dict()
        return meta
