"""Shared helpers for the side-by-side benchmarks: medians of repeated runs and machine facts."""

from __future__ import annotations

import os
import platform
import statistics
import time
from dataclasses import dataclass
from typing import Callable


@dataclass
class Section:
    """One benchmark's contribution to BENCHMARKS.md: a title, a Markdown body and the command that made it."""

    title: str
    body: str
    command: str


def median_seconds(fn: Callable[[], object], repeats: int = 10, warmup: int = 2) -> float:
    """Median wall time of `fn()` over `repeats` runs after `warmup` untimed runs."""
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def machine_summary() -> str:
    """Markdown lines naming the machine and library versions, so numbers are never read out of context."""
    import numpy
    import torch
    import torchvision

    lines = [
        f"- machine: {platform.machine()}, {os.cpu_count()} logical CPUs, {platform.processor() or 'unknown CPU'}",
        f"- python {platform.python_version()}, torch {torch.__version__}, torchvision {torchvision.__version__}, "
        f"numpy {numpy.__version__}",
        f"- torch threads: {torch.get_num_threads()}",
    ]
    if torch.cuda.is_available():
        lines.append(f"- GPU: {torch.cuda.get_device_name(0)}")
    return "\n".join(lines)
