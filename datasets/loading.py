"""Batching: collate functions for variable box counts, the suite's DataLoader (seeded, signal-proof workers that
hand dataset errors back intact, per-sample random streams for exact resume) and its settings."""

from __future__ import annotations

import atexit
import contextlib
import ctypes
import random
import signal
import sys
import weakref
from typing import Any, Callable, Iterator, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader, Dataset, DistributedSampler, get_worker_info

from common.errors import DatasetError
from common.labels import IGNORE_INDEX


def _present(batch: Sequence) -> list:
    """Samples a skip policy turned into None are left out, so a batch may come out smaller (or None)."""
    return [sample for sample in batch if sample is not None]


def _stack_images(images: list[torch.Tensor]) -> torch.Tensor:
    if len({tuple(i.shape) for i in images}) > 1:
        raise ValueError(
            f"images in a batch differ in size ({sorted({tuple(i.shape) for i in images})}): "
            "use a transform that resizes them to the model size (detection_train_transform, DetectionEvalTransform)"
        )
    return torch.stack(images)


def collate_detection(batch: Sequence[tuple[torch.Tensor, dict] | None]) -> tuple[torch.Tensor, list[dict]] | None:
    """`(images [B, 3, H, W], list of B target dicts)`; None when every sample of the batch was skipped.

    For a vectorised loss, `ssdlite.loss.pad_targets` turns the targets' boxes/labels into dense [B, M] tensors.
    """
    batch = _present(batch)
    if not batch:
        return None
    images, targets = zip(*batch, strict=True)
    return _stack_images(list(images)), list(targets)


def collate_segmentation(
    batch: Sequence[tuple[torch.Tensor, torch.Tensor] | None],
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

    return (
        torch.stack([pad(image, 0) for image, _ in batch]),
        torch.stack([pad(mask, IGNORE_INDEX) for _, mask in batch]),
    )


def collate_segmentation_eval(
    batch: Sequence[tuple[torch.Tensor, torch.Tensor, tuple[int, int]] | None],
) -> tuple[list[torch.Tensor], list[torch.Tensor], list[tuple[int, int]]] | None:
    """For `SegmentationEvalTransform` samples: (network inputs, masks at each image's size, image regions) as
    lists, nothing padded, so that every image is scored exactly as the segmenter sees it alone (padding a batch
    to its largest input would change what the image pooling averages); None when every sample was skipped."""
    batch = _present(batch)
    if not batch:
        return None
    inputs, masks, regions = zip(*batch, strict=True)
    return list(inputs), list(masks), list(regions)


def init_worker(worker_id: int) -> None:
    """worker_init_fn: ignore SIGINT/SIGTERM, and seed Python's and NumPy's global generators from the worker's
    torch seed.

    systemd, Slurm and Kubernetes signal the whole process group: the main process decides how to stop (a
    training run checkpoints first), and a worker killed under it would turn that into a crash. Workers still end
    with the main process. The torch seed of worker k is base_seed + k, drawn from the loader's generator, so
    seeding that generator makes every worker repeatable; our albumentations pipelines reseed from the same seed.
    """
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    _die_with_parent()
    seed = torch.initial_seed() % 2**32
    random.seed(seed)
    np.random.seed(seed)


PR_SET_PDEATHSIG = 1  # linux/prctl.h


def _die_with_parent() -> None:
    """Linux: have the kernel SIGKILL this worker when the main process dies, even by kill -9 or the OOM killer.
    Otherwise an orphaned worker lives on until torch's watchdog notices, holding the run's memory and the
    pipes of whoever started it (a test or a job script waiting for the output to close)."""
    if not sys.platform.startswith("linux"):
        return
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGKILL)


@contextlib.contextmanager
def sample_random_state(seed: int, key: Sequence[int]) -> Iterator[None]:
    """Seed torch, NumPy and Python from (seed, *key) for one sample, and restore the process's own streams after.

    A sample's augmentation then depends on the run seed, the epoch and its index only, not on which worker drew
    it or on what that worker drew before, so a resumed run augments exactly as an uninterrupted one."""
    sample_seed = int(np.random.SeedSequence([seed % 2**63, *key]).generate_state(1, np.uint64)[0]) >> 1
    saved = random.getstate(), np.random.get_state(), torch.get_rng_state()
    random.seed(sample_seed)
    np.random.seed(sample_seed % 2**32)
    torch.default_generator.manual_seed(sample_seed)  # the CPU generator only: CUDA streams are the model's
    try:
        yield
    finally:
        random.setstate(saved[0])
        np.random.set_state(saved[1])
        torch.set_rng_state(saved[2])


class WorkerFailure:
    """A DatasetError raised in a DataLoader worker, sent to the main process as the batch (it pickles intact)."""

    def __init__(self, error: DatasetError) -> None:
        self.error = error


class Samples(Dataset):
    """The dataset a `Loader` reads: a DatasetError in a worker comes back as a `WorkerFailure`; with `seed`, keys
    are (*stream, index) tuples whose randomness is seeded per sample (`sample_random_state`)."""

    def __init__(self, dataset: Dataset, seed: int | None = None) -> None:
        self.dataset, self.seed = dataset, seed

    def __len__(self) -> int:
        return len(self.dataset)  # type: ignore[arg-type]

    def __getitem__(self, key: Any) -> Any:
        try:
            if self.seed is None:
                return self.dataset[key]
            with sample_random_state(self.seed, key):
                return self.dataset[key[-1]]
        except DatasetError as e:
            if get_worker_info() is None:
                raise
            return WorkerFailure(e)


class _CarryFailures:
    """collate_fn wrapper: a batch holding a WorkerFailure becomes that failure."""

    def __init__(self, collate: Callable) -> None:
        self.collate = collate

    def __call__(self, samples: list[Any]) -> Any:
        failure = next((s for s in samples if isinstance(s, WorkerFailure)), None)
        return failure if failure is not None else self.collate(samples)


class Loader(DataLoader):
    """The suite's DataLoader: workers ignore SIGINT/SIGTERM (`init_worker`), and a DatasetError raised in a worker
    is raised again, intact, in the main process, so a bad sample gives the same one-line error with workers as
    with `workers=0` (torch would turn it into a RuntimeError holding the worker's traceback). With `seed`, the
    sampler yields (*stream, index) keys and each sample's augmentation is seeded from them (`Samples`)."""

    def __init__(
        self, dataset: Dataset, batch_size: int, *, collate_fn: Callable, seed: int | None = None, **kwargs: Any
    ) -> None:
        super().__init__(
            Samples(dataset, seed),
            batch_size,
            collate_fn=_CarryFailures(collate_fn),
            worker_init_fn=init_worker,
            **kwargs,
        )

    def __iter__(self) -> Iterator[Any]:  # type: ignore[override]
        iterator = super().__iter__()
        _ITERATORS.add(iterator)
        for batch in iterator:
            if isinstance(batch, WorkerFailure):
                raise batch.error
            yield batch


_ITERATORS: weakref.WeakSet = weakref.WeakSet()


@atexit.register  # runs before multiprocessing's own exit hook (atexit is last-in, first-out)
def _stop_workers() -> None:
    """Stop the workers of loaders still alive at exit (an error left them running, or persistent workers).

    Multiprocessing would end them with SIGTERM, which they ignore (`init_worker`), and then wait for ever; the
    loader's own shutdown asks them to finish instead."""
    for iterator in list(_ITERATORS):
        shutdown = getattr(iterator, "_shutdown_workers", None)
        if shutdown is not None:
            shutdown()


def make_loader(
    dataset: Dataset,
    batch_size: int,
    *,
    train: bool,
    workers: int = 2,
    collate_fn: Callable = collate_detection,
    distributed: bool = False,
    seed: int = 0,
    prefetch_factor: int = 4,
) -> Loader:
    """A Loader that keeps a CPU or GPU step fed.

    Shuffled and dropping the last partial batch when training (BatchNorm dislikes tiny batches); workers stay
    alive between epochs and prefetch `prefetch_factor` batches each; memory is pinned only when CUDA is there.
    With `distributed`, a DistributedSampler shards the data: call `loader.sampler.set_epoch(epoch)` every epoch.
    """
    sampler = DistributedSampler(dataset, shuffle=train, seed=seed, drop_last=train) if distributed else None
    return Loader(
        dataset,
        batch_size,
        shuffle=train and sampler is None,
        sampler=sampler,
        num_workers=workers,
        collate_fn=collate_fn,
        pin_memory=torch.cuda.is_available(),
        drop_last=train,
        persistent_workers=workers > 0,
        prefetch_factor=prefetch_factor if workers > 0 else None,
        generator=torch.Generator().manual_seed(seed),
    )
