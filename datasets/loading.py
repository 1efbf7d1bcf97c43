"""Batching: collate functions for variable box counts, seeded workers, and DataLoader settings."""

from __future__ import annotations

import random
from typing import Callable, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader, Dataset, DistributedSampler

from datasets.transforms import IGNORE_INDEX


def _present(batch: Sequence) -> list:
    """Samples a skip policy turned into None are left out, so a batch may come out smaller (or None)."""
    return [sample for sample in batch if sample is not None]


def _stack_images(images: list[torch.Tensor]) -> torch.Tensor:
    if len({tuple(i.shape) for i in images}) > 1:
        raise ValueError(f"images in a batch differ in size ({sorted({tuple(i.shape) for i in images})}): "
                         "use a transform that resizes them to the model size (detection_train/eval_transform)")
    return torch.stack(images)


def collate_detection(batch: Sequence[tuple[torch.Tensor, dict] | None]) -> tuple[torch.Tensor, list[dict]] | None:
    """`(images [B, 3, H, W], list of B target dicts)`; None when every sample of the batch was skipped.

    For a vectorised loss, `ssdlite.loss.pad_targets` turns the targets' boxes/labels into dense [B, M] tensors.
    """
    batch = _present(batch)
    if not batch:
        return None
    images, targets = zip(*batch)
    return _stack_images(list(images)), list(targets)


def collate_segmentation(batch: Sequence[tuple[torch.Tensor, torch.Tensor] | None],
                         ) -> tuple[torch.Tensor, torch.Tensor] | None:
    """`(images [B, 3, H, W], masks int64 [B, H, W])`, padding bottom/right to the largest sample (images with 0,
    which is the mean pixel after normalisation; masks with 255 = ignore); None when every sample was skipped."""
    batch = _present(batch)
    if not batch:
        return None
    height = max(image.shape[-2] for image, _ in batch)
    width = max(image.shape[-1] for image, _ in batch)

    def pad(t: torch.Tensor, value: int) -> torch.Tensor:
        return F.pad(t, (0, width - t.shape[-1], 0, height - t.shape[-2]), value=value)

    return (torch.stack([pad(image, 0) for image, _ in batch]),
            torch.stack([pad(mask, IGNORE_INDEX) for _, mask in batch]))


def seed_worker(worker_id: int) -> None:
    """worker_init_fn: seed Python's and NumPy's global generators from the worker's torch seed.

    The torch seed of worker k is base_seed + k, drawn from the main process generator, so `torch.manual_seed`
    makes every worker repeatable. Our albumentations pipelines reseed themselves from the same seed.
    """
    seed = torch.initial_seed() % 2**32
    random.seed(seed)
    np.random.seed(seed)


def make_loader(dataset: Dataset, batch_size: int, *, train: bool, workers: int = 2,
                collate_fn: Callable = collate_detection, distributed: bool = False, seed: int = 0,
                prefetch_factor: int = 4) -> DataLoader:
    """A DataLoader that keeps a CPU or GPU step fed.

    Shuffled and dropping the last partial batch when training (BatchNorm dislikes tiny batches); workers stay
    alive between epochs and prefetch `prefetch_factor` batches each; memory is pinned only when CUDA is there.
    With `distributed`, a DistributedSampler shards the data: call `loader.sampler.set_epoch(epoch)` every epoch.
    """
    sampler = DistributedSampler(dataset, shuffle=train, seed=seed, drop_last=train) if distributed else None
    return DataLoader(
        dataset,
        batch_size=batch_size,
        shuffle=train and sampler is None,
        sampler=sampler,
        num_workers=workers,
        collate_fn=collate_fn,
        pin_memory=torch.cuda.is_available(),
        drop_last=train,
        persistent_workers=workers > 0,
        prefetch_factor=prefetch_factor if workers > 0 else None,
        worker_init_fn=seed_worker,
        generator=torch.Generator().manual_seed(seed),
    )
