"""The run folder `runs/<task>/<name>/`: claimed and locked for one live run, cleaned of a killed run's leftovers,
and its logs (metrics.jsonl, TensorBoard) kept in step with the checkpoint a run resumes from."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

from tqdm import tqdm

from common.files import RunLock, next_run_dir, stale_temporaries, write_atomic

CHECKPOINTS = ("last.pt", "best.pt")


class RunFolder:
    """Rank 0's handle on the run folder: lock, clean-up, metrics.jsonl and TensorBoard."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.lock = RunLock(path)
        self.writer = None

    @classmethod
    def open(cls, project: Path, name: str, exist_ok: bool, resume: str | None) -> RunFolder:
        """Claim a new folder (or the resumed / --exist-ok one) and lock it; a live run holding it is an error."""
        path = Path(resume).parent if resume else next_run_dir(project, name, exist_ok)
        folder = cls(path)
        folder.lock.acquire()
        for checkpoint in CHECKPOINTS:  # a kill during a save leaves its temporary behind (checkpoints are MBs)
            for stale in stale_temporaries(path, checkpoint):
                stale.unlink(missing_ok=True)
        return folder

    def start_logs(self, position: int, args: dict[str, Any], evaluation_pending: bool = False) -> None:
        """Write args.json and open the logs at global step `position` (0 for a new run): records of later steps,
        which a killed run wrote after its last checkpoint and the resumed run will write again, are dropped, and
        so is the evaluation at `position` when the resumed run is to evaluate it again."""
        from torch.utils.tensorboard import SummaryWriter

        write_atomic(self.path / "args.json", json.dumps(args, indent=2))
        metrics = self.path / "metrics.jsonl"
        if metrics.exists():
            kept = [
                line
                for line in metrics.read_text().splitlines()
                if _step(line) is not None
                and (_step(line) < position or _step(line) == position and not (evaluation_pending and '"val/' in line))
            ]
            write_atomic(metrics, "".join(f"{line}\n" for line in kept))
        self.writer = SummaryWriter(self.path, purge_step=position + 1 if position else None)

    def record(self, record: dict[str, Any], step: int) -> None:
        with open(self.path / "metrics.jsonl", "a") as f:
            f.write(json.dumps(record) + "\n")
        for key, value in record.items():
            if isinstance(value, (int, float)) and key not in ("epoch", "step"):
                self.writer.add_scalar(key, value, step)

    @staticmethod
    def log(message: str) -> None:
        tqdm.write(message, file=sys.stderr)

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
        self.lock.release()


def _step(line: str) -> int | None:
    """The global step of a metrics.jsonl line; None for a line a kill cut short."""
    try:
        return int(json.loads(line)["step"])
    except (ValueError, KeyError, TypeError):
        return None
