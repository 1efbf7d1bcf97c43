"""SIGINT/SIGTERM during training: finish the step, checkpoint, exit 0.

Schedulers (systemd, Slurm, Kubernetes) signal the whole process group; DataLoader workers ignore the signal
(datasets.loading.init_worker), so only the main process acts on it."""

from __future__ import annotations

import signal
from dataclasses import dataclass, field
from typing import Any


@dataclass
class StopRequest:
    """SIGINT/SIGTERM set a flag; the loop checkpoints at the next step boundary and exits."""

    signal_name: str | None = None
    previous: dict[int, Any] = field(default_factory=dict)

    def install(self) -> None:
        for sig in (signal.SIGINT, signal.SIGTERM):
            self.previous[sig] = signal.signal(sig, self._handle)

    def _handle(self, signum: int, frame: Any) -> None:
        if self.signal_name is not None:  # a second Ctrl-C stops at once
            raise KeyboardInterrupt
        self.signal_name = signal.Signals(signum).name

    @property
    def requested(self) -> bool:
        return self.signal_name is not None

    def restore(self) -> None:
        for sig, handler in self.previous.items():
            signal.signal(sig, handler)
