"""A tiny task for exercising the training engine quickly (also runnable under torchrun).

    python tests/toy_task.py --project DIR --name N [--kill-at-step K] [--nan-at-step K] [--kill9-at-step K]
        [--kill9-in-save K] [--term-group-at-step K] [--ctrl-c-at-step K] [--ctrl-c-twice-at-step K]
        [--delete-run-at-step K] [--corrupt-at-index I]

Its samples are augmented (random flip and noise drawn from torch's generator in the loading process), so exact
resume covers the augmentation streams as the real tasks need it. The fault options count steps (and saves) of
this process only.
"""

from __future__ import annotations

import argparse
import os
import shutil
import signal
import sys
from pathlib import Path

import torch
from torch import nn
from torch.utils.data import Dataset

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # runs from a checkout without installing too

import common.files  # noqa: E402
from common.cli import new_parser  # noqa: E402
from common.distributed import DistInfo, all_reduce_sum, gather_objects  # noqa: E402
from common.errors import DatasetError  # noqa: E402
from train.engine import train_main  # noqa: E402
from train.flags import add_engine_arguments  # noqa: E402
from train.task import Task  # noqa: E402

BATCH_SIZE = 8


def trained_close(steps: int, expected: torch.Tensor) -> dict[str, float]:
    """rtol/atol between two runs of `steps` toy steps whose float32 sums may go in other orders (other processes,
    compiled kernels, an all-reduce): 2 layers (3×3 conv, linear), so a step is 2·2 + 1 operations deep, and a weight
    gradient adds batch × 6×6 positions (tolerances.float32_close)."""
    from tolerances import float32_close

    return float32_close(steps * (2 * 2 + 1), BATCH_SIZE * 6 * 6, scale=expected.abs().max().item())


class ToySet(Dataset):
    def __init__(self, x: torch.Tensor, y: torch.Tensor, augment: bool, corrupt_at: int | None) -> None:
        self.x, self.y, self.augment, self.corrupt_at = x, y, augment, corrupt_at

    def __len__(self) -> int:
        return len(self.x)

    def __getitem__(self, i: int):
        if i == self.corrupt_at:
            raise DatasetError(
                f"toy/{i}.jpg", "cannot decode image", "Replace or remove the file", kind="corrupt image"
            )
        x = self.x[i]
        if self.augment:
            if torch.rand(()) < 0.5:
                x = x.flip(-1)
            x = x + 0.1 * torch.randn_like(x)
        return x, self.y[i]


class ToyTask(Task):
    name = "toy"

    def __init__(self, faults: argparse.Namespace) -> None:
        super().__init__()
        self.faults = faults  # faults come from this command line, never from a resumed run
        self.steps = 0

    def new_model(self) -> nn.Module:
        torch.manual_seed(0)
        return nn.Sequential(nn.Conv2d(3, 8, 3), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, 2))

    def build_datasets(self):
        g = torch.Generator().manual_seed(1)
        x = torch.randn(64, 3, 8, 8, generator=g)
        y = (x.mean(dim=(1, 2, 3)) > 0).long()
        return ToySet(x, y, True, self.faults.corrupt_at_index), ToySet(x[:16], y[:16], False, None)

    def collate(self, samples):
        xs, ys = zip(*samples, strict=True)
        return torch.stack(xs), torch.stack(ys)

    def compute_loss(self, model, batch, device):
        self.steps += 1
        if self.steps == self.faults.kill_at_step:
            os.kill(os.getpid(), signal.SIGTERM)
        if self.steps == self.faults.term_group_at_step:  # as systemd/Slurm/Kubernetes do: workers get it too
            os.killpg(os.getpgid(0), signal.SIGTERM)
        if self.steps == self.faults.kill9_at_step:
            os.kill(os.getpid(), signal.SIGKILL)
        if self.steps == self.faults.ctrl_c_at_step:  # a press of Ctrl-C
            os.kill(os.getpid(), signal.SIGINT)
        if self.steps == self.faults.ctrl_c_twice_at_step:  # an impatient second press before the step ends
            os.kill(os.getpid(), signal.SIGINT)
            os.kill(os.getpid(), signal.SIGINT)
        if self.steps == self.faults.delete_run_at_step:
            shutil.rmtree(self.faults.project / self.faults.name)
        x, y = (t.to(device) for t in batch)
        loss = nn.functional.cross_entropy(model(x), y)
        if self.steps == self.faults.nan_at_step:
            loss = loss * float("nan")
        return loss, {"ce": loss.item()}

    def evaluate(self, model, loader, run_dir: Path, dist_info: DistInfo):
        correct = torch.zeros(2)
        for x, y in loader:
            correct += torch.tensor([(model(x).argmax(1) == y).sum().item(), len(y)])
        correct = all_reduce_sum(correct)
        gather_objects(None)
        return {"score": float(correct[0] / correct[1])} if dist_info.is_main else None

    def head_checkpoint_of(self, model):
        return {"arch": "toy", "config": {}}


def kill_during_save(nth: int) -> None:
    """SIGKILL this process half-way through writing its nth checkpoint (a kill during a save): the temporary file
    holds half the bytes and is never renamed."""
    write, count = common.files.os.fsync, [0]

    def half_then_die(fd):
        count[0] += os.readlink(f"/proc/self/fd/{fd}").endswith(".tmp.pt")  # checkpoints, not args.json
        if count[0] == nth:
            os.ftruncate(fd, os.fstat(fd).st_size // 2)
            os.kill(os.getpid(), signal.SIGKILL)
        return write(fd)

    common.files.os.fsync = half_then_die


def main(argv=None):
    parser = new_parser("toy_task.py", __doc__)
    fault_flags = (
        "kill_at_step",
        "nan_at_step",
        "kill9_at_step",
        "kill9_in_save",
        "term_group_at_step",
        "ctrl_c_at_step",
        "ctrl_c_twice_at_step",
        "delete_run_at_step",
    )
    for dest in fault_flags:
        parser.add_argument("--" + dest.replace("_", "-"), type=int, default=0)
    parser.add_argument("--corrupt-at-index", type=int, default=None)
    add_engine_arguments(
        parser, lr=0.1, epochs=3, batch_size=BATCH_SIZE, weight_decay=1e-4, optimizer="sgd", schedule="cosine"
    )
    faults = parser.parse_known_args(argv)[0]
    if faults.kill9_in_save:
        kill_during_save(faults.kill9_in_save)
    return train_main(
        parser, lambda args: ToyTask(faults), "toy", argv, runtime_flags=(*fault_flags, "corrupt_at_index")
    )


if __name__ == "__main__":
    main()
