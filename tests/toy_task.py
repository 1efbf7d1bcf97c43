"""A tiny task for exercising the training engine quickly (also runnable under torchrun).

    python tests/toy_task.py --project DIR --name N [--kill-at-step K] [--nan-at-step K]
"""

from __future__ import annotations

import argparse
import os
import signal
import sys
from pathlib import Path

import torch
from torch import nn
from torch.utils.data import TensorDataset

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # runs from a checkout without installing too

from train.distributed import DistInfo, all_reduce_sum, gather_objects  # noqa: E402
from train.engine import add_engine_arguments, parse_training_args, run_training  # noqa: E402


class ToyTask:
    name = "toy"

    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.steps = 0

    def build_model(self) -> nn.Module:
        torch.manual_seed(0)
        return nn.Sequential(nn.Conv2d(3, 8, 3), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, 2))

    def build_datasets(self):
        g = torch.Generator().manual_seed(1)
        x = torch.randn(64, 3, 8, 8, generator=g)
        y = (x.mean(dim=(1, 2, 3)) > 0).long()
        return TensorDataset(x, y), TensorDataset(x[:16], y[:16])

    def collate(self, samples):
        xs, ys = zip(*samples)
        return torch.stack(xs), torch.stack(ys)

    def compute_loss(self, model, batch, device):
        self.steps += 1
        if self.steps == self.args.kill_at_step and not self.args.resume:  # once, not again after resuming
            os.kill(os.getpid(), signal.SIGTERM)
        x, y = (t.to(device) for t in batch)
        loss = nn.functional.cross_entropy(model(x), y)
        if self.steps == self.args.nan_at_step:
            loss = loss * float("nan")
        return loss, {"ce": loss.item()}

    def evaluate(self, model, loader, run_dir: Path, dist_info: DistInfo):
        correct = torch.zeros(2)
        for x, y in loader:
            correct += torch.tensor([(model(x).argmax(1) == y).sum().item(), len(y)])
        correct = all_reduce_sum(correct)
        gather_objects(None)
        return {"score": float(correct[0] / correct[1])} if dist_info.is_main else None

    def checkpoint_meta(self):
        return {"arch": "toy", "config": {}}


def main(argv=None):
    parser = argparse.ArgumentParser()
    parser.add_argument("--kill-at-step", type=int, default=0)
    parser.add_argument("--nan-at-step", type=int, default=0)
    add_engine_arguments(parser, lr=0.1, epochs=3, batch_size=8, weight_decay=1e-4, optimizer="sgd", schedule="cosine")
    args = parse_training_args(parser, argv, "toy")
    run_training(ToyTask(args), args)


if __name__ == "__main__":
    main()
