"""The one task interface the engine trains: `Task`, which a head's task (train/ssdlite.py, train/deeplab.py) or a
test's toy task subclasses, and the loss-normaliser helper the tasks share.

The engine calls `build_model`, `build_datasets`, `collate`, `eval_collate`, `compute_loss`, `evaluate`,
`checkpoint_meta` and `run_record`; everything else here is what the heads share: the start from trained weights
(--weights, with the transfer report of train/transfer.py), --freeze, the skip policy for bad samples and
checkpoint metadata.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset

from common.distributed import DistInfo, all_reduce_sum
from datasets.errors import SkipCounter
from datasets.sources import DataSplits
from train.batchnorm import freeze_backbone
from train.transfer import TransferReport, load_source, transfer_weights


class Task:
    """A training task. Subclasses set `name` and `data` (or override `build_datasets`) and implement `new_model`,
    `collate`, `compute_loss`, `evaluate` and `head_checkpoint_of`. A batch is `(images, ...)` or None (every sample
    skipped), as the suite's collate functions make it."""

    name: str  # results go to runs/<name>/...
    data: DataSplits
    input_size: tuple[int, int] | None = None  # (h, w) of a training input, for the engine's memory check ...
    size_flags: str = ""  # ... and the flags that set it, for its message

    def __init__(self, weights: str = "none", freeze: int = 0, skip_bad_samples: bool = False) -> None:
        """`weights`: what to start from (a weights name, a checkpoint file or "none"); `freeze`: backbone blocks
        to keep as trained (--freeze); `skip_bad_samples`: count and drop unreadable samples instead of stopping."""
        self.weights, self.freeze = weights, freeze
        self.skip = SkipCounter() if skip_bad_samples else None
        # Loaded before the subclass picks its preset: a fine-tuned model keeps the source's conventions (padding,
        # normalisation; an SSDLite source's whole preset) unless --preset says otherwise.
        self.source = None if weights == "none" else load_source(weights)
        self.transfer: TransferReport | None = None
        self.frozen: list[str] = []
        self.model: nn.Module | None = None

    # ---- what the engine calls

    def build_model(self, announce: bool = True) -> nn.Module:
        """The model to train: `new_model()`, with what fits of --weights transferred (the report printed when
        `announce`; a resumed run loads its own weights over these) and --freeze applied."""
        model = self.new_model()
        if self.source is not None:
            self.transfer = transfer_weights(model, self.data.class_names, self.source, self.weights)
            if announce:
                print(self.transfer.summary())
        if self.freeze:
            self.frozen = freeze_backbone(model.backbone, self.freeze)
        self.model = model
        return model

    def build_datasets(self) -> tuple[Dataset, Dataset | None]:
        return self.data.train, self.data.val

    def collate(self, samples: list[Any]) -> Any:
        """A training batch of dataset samples."""
        raise NotImplementedError

    def eval_collate(self, samples: list[Any]) -> Any:
        """A validation batch of dataset samples (as `collate`, unless evaluation samples differ)."""
        return self.collate(samples)

    def compute_loss(self, model: nn.Module, batch: Any, device: torch.device) -> tuple[torch.Tensor, dict[str, float]]:
        """Loss of one batch (normalisers already averaged over processes) and scalars to log."""
        raise NotImplementedError

    def evaluate(
        self, model: nn.Module, loader: DataLoader, run_dir: Path, dist_info: DistInfo
    ) -> dict[str, float] | None:
        """Metrics on the validation set on rank 0 (None elsewhere), with the selection metric under "score"."""
        raise NotImplementedError

    def checkpoint_meta(self) -> dict[str, Any]:
        """What a checkpoint needs besides the weights the engine adds: the head's layout (arch, preset, config,
        class names), the skipped samples and the transfer report."""
        meta = {k: v for k, v in self.head_checkpoint_of(self.model).items() if k != "model"}
        if self.skip is not None:
            meta["skipped_samples"] = self.skip.counts()
        if self.transfer is not None:
            meta["transfer"] = self.transfer.to_dict()
        return meta

    def run_record(self) -> dict[str, Any]:
        """What the run folder's args.json adds to the flags: what the run started from and kept frozen."""
        record: dict[str, Any] = {"weights_used": self.weights}
        if self.transfer is not None:
            record["transfer"] = self.transfer.to_dict()
        if self.frozen:
            record["frozen"] = self.frozen
        return record

    # ---- what a subclass provides

    def new_model(self) -> nn.Module:
        raise NotImplementedError

    def head_checkpoint_of(self, model: nn.Module) -> dict[str, Any]:
        """The head's own checkpoint layout for `model` (weights included; the engine replaces them)."""
        raise NotImplementedError


def global_batch_share(local_count: torch.Tensor) -> torch.Tensor:
    """local / mean-over-processes of a loss normaliser (positives, labelled pixels); 1 in one process.

    A loss averaged over its own process's count, times this factor, is averaged over the global batch once DDP
    averages the gradients, so N processes train exactly like one process on the same global batch.
    """
    if not (torch.distributed.is_available() and torch.distributed.is_initialized()):
        return torch.ones((), device=local_count.device)
    local = local_count.detach().float().clamp(min=1)
    mean = all_reduce_sum(local_count.detach().float().clone()) / torch.distributed.get_world_size()
    return local / mean.clamp(min=1)
