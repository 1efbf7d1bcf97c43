"""The training run's loaders: a resumable, keyed sampler and the training, validation and BatchNorm
recalibration loaders built on datasets.loading.Loader.

Every training sample is drawn under a key (stream, epoch, index) that seeds its augmentation, and the data order
depends on (seed, epoch) only; so a run resumed at any step sees the same batches, augmented the same way, as
an uninterrupted run, whatever the worker count and wherever the workers were."""

from __future__ import annotations

import argparse
from typing import Any, Callable, Iterator

import torch
from torch.utils.data import Dataset, DistributedSampler

from common.distributed import DistInfo, shard_dataset
from datasets.loading import Loader

TRAINING_STREAM, RECALIBRATION_STREAM = 0, 1  # keys (stream, epoch, index): recalibration draws apart


class ResumableSampler(DistributedSampler):
    """DistributedSampler yielding (stream, epoch, index) keys, able to start an epoch part-way (`skip` samples
    in)."""

    def __init__(self, dataset: Dataset, dist_info: DistInfo, seed: int) -> None:
        super().__init__(dataset, dist_info.world_size, dist_info.rank, shuffle=True, seed=seed, drop_last=True)
        self.skip = 0

    def __iter__(self) -> Iterator[tuple[int, int, int]]:  # type: ignore[override]
        indices = list(super().__iter__())
        return iter([(TRAINING_STREAM, self.epoch, i) for i in indices[self.skip :]])

    def __len__(self) -> int:
        return self.num_samples - self.skip


class TrainingData:
    """The loaders of one training process; `batch_per_process` samples per batch."""

    def __init__(
        self,
        train_set: Dataset,
        val_set: Dataset | None,
        collate: Callable,
        val_collate: Callable,
        args: argparse.Namespace,
        dist: DistInfo,
        batch_per_process: int,
    ) -> None:
        self.train_set, self.args, self.dist, self.batch = train_set, args, dist, batch_per_process
        self.sampler = ResumableSampler(train_set, dist, args.seed)
        workers = args.workers
        self.loader_kwargs: dict[str, Any] = dict(
            collate_fn=collate,
            num_workers=workers,
            pin_memory=dist.device.type == "cuda",
            prefetch_factor=4 if workers > 0 else None,
            # its own generator: creating an iterator must not draw from the training process's random streams
            generator=torch.Generator().manual_seed(args.seed),
        )
        self.train = Loader(
            train_set,
            batch_per_process,
            sampler=self.sampler,
            seed=args.seed,
            persistent_workers=workers > 0,
            **self.loader_kwargs,
        )
        self.val = None
        if val_set is not None:
            self.val = Loader(
                shard_dataset(val_set, dist),
                batch_per_process,
                persistent_workers=workers > 0,
                **{**self.loader_kwargs, "collate_fn": val_collate},
            )

    def start_epoch(self, epoch: int, batches_done: int) -> None:
        self.sampler.set_epoch(epoch)
        self.sampler.skip = batches_done * self.batch

    def recalibration_batches(self, epoch: int, count: int) -> Loader:
        """`count` shuffled training batches for BatchNorm recalibration before evaluating `epoch`, drawn from a
        generator of their own so they leave the training streams untouched."""
        generator = torch.Generator().manual_seed(self.args.seed * 100_003 + self.dist.rank * 1_009 + epoch)
        order = torch.randperm(len(self.train_set), generator=generator)[: count * self.batch].tolist()  # type: ignore[arg-type]
        keys = [(RECALIBRATION_STREAM, epoch, i) for i in order]
        return Loader(
            self.train_set, self.batch, sampler=keys, seed=self.args.seed, drop_last=True, **self.loader_kwargs
        )
