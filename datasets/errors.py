"""Bad-data errors, the opt-in skip policy, and the cheap check of a dataset's files before they are used.

Every reader raises `DatasetError` naming the file and the problem. A training run that prefers to go on passes a
`SkipCounter`: the bad sample is then dropped with a warning and counted, and the run prints `summary()` at the
end. The counts live in shared memory so that samples skipped inside DataLoader worker processes are counted too.
"""

from __future__ import annotations

import multiprocessing
import warnings
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Iterable

from common.errors import SKIP_KINDS, DatasetError
from common.images import check_image_file


class SkippedSampleWarning(UserWarning):
    """Issued (up to a limit) for each sample a `SkipCounter` drops."""


class SkipCounter:
    """Opt-in skip policy: drop bad samples with a warning and count them by kind, across worker processes.

    Only per-sample problems are skippable (see `SKIP_KINDS`); a wrong root or an empty dataset always raises.
    A sample that fails while loading is counted each time it is met, so over E epochs it counts E times.
    """

    def __init__(self, max_warnings: int = 20):
        self.max_warnings = max_warnings
        self._counts = multiprocessing.Array("q", len(SKIP_KINDS))

    def skip(self, error: DatasetError) -> None:
        """Record a skippable error, or re-raise it when its kind is not one a run may skip."""
        if error.kind not in SKIP_KINDS:
            raise error
        with self._counts.get_lock():
            self._counts[SKIP_KINDS.index(error.kind)] += 1
            total = sum(self._counts)
        if total <= self.max_warnings:
            more = " (further skips are counted without a warning)" if total == self.max_warnings else ""
            warnings.warn(f"skipped sample: {error}{more}", SkippedSampleWarning, stacklevel=3)

    def counts(self) -> dict[str, int]:
        """Skipped samples per kind, only the kinds that occurred."""
        with self._counts.get_lock():
            return {kind: n for kind, n in zip(SKIP_KINDS, self._counts, strict=True) if n}

    @property
    def total(self) -> int:
        return sum(self.counts().values())

    def summary(self) -> str:
        """One line for a run summary, e.g. "skipped 3 samples (2 corrupt image, 1 bad box)"."""
        counts = self.counts()
        if not counts:
            return "skipped 0 samples"
        reasons = ", ".join(f"{n} {kind}" for kind, n in counts.items())
        return f"skipped {sum(counts.values())} samples ({reasons})"


def handle(error: DatasetError, skip: SkipCounter | None) -> None:
    """Raise `error` unless a skip policy is given, in which case count it (the caller then drops the sample)."""
    if skip is None:
        raise error
    skip.skip(error)


def check_files(images: Iterable[Path], masks: Iterable[Path] = ()) -> int:
    """Raise the first DatasetError of `images` (header and end marker, `check_image_file`) and `masks` (present),
    in a few threads (the work is waiting on the disk); the number of files checked. Training runs it on the
    validation set before the first epoch, so a bad file stops the run before anything is trained for it."""
    images, masks = list(images), list(masks)
    with ThreadPoolExecutor(max_workers=8) as pool:
        for _ in pool.map(check_image_file, images):
            pass
    for mask in masks:
        if not mask.is_file():
            raise DatasetError(mask, "mask file not found", kind="bad mask")
    return len(images) + len(masks)
