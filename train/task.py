"""What the engine needs to know about a task (the `Task` protocol), and the loss-normaliser helper tasks share."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Protocol

import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset

from common.distributed import DistInfo, all_reduce_sum


class Task(Protocol):
    """What the engine needs to know about a task, and nothing more. A batch is `(images, ...)` or None (every
    sample skipped), as the suite's collate functions make it."""

    name: str  # results go to runs/<name>/...

    def build_model(self) -> nn.Module: ...

    def build_datasets(self) -> tuple[Dataset, Dataset | None]: ...

    def collate(self, samples: list[Any]) -> Any: ...

    def compute_loss(self, model: nn.Module, batch: Any, device: torch.device) -> tuple[torch.Tensor, dict[str, float]]:
        """Loss of one batch (normalisers already averaged over processes) and scalars to log."""
        ...

    def evaluate(self, model: nn.Module, loader: DataLoader, run_dir: Path, dist_info: DistInfo) -> dict[str, float] | None:
        """Metrics on the validation set on rank 0 (None elsewhere), with the selection metric under "score"."""
        ...

    def checkpoint_meta(self) -> dict[str, Any]:
        """What a checkpoint needs to rebuild the model alone: arch, preset, config, class names."""
        ...


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
