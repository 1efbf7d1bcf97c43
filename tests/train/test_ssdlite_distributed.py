"""SSDLite under torchrun: two gloo processes train to the same weights as one process on the same global batch.

BatchNorm is frozen (CPU has no SyncBatchNorm, and per-process batch statistics would differ by design) and
augmentation is off (with it, the classification biases differ by up to 6e-3, see docs/training.md); what is
left to check is SSDLite's own part of data parallelism: the loss normalised by the positives of the global
batch, and gradient averaging.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from backbone.checkpoint import load_checkpoint
from datasets.synthetic import generate

pytestmark = pytest.mark.slow  # processes and training runs: not in `make check`'s fast lane

ENTRY = Path(__file__).resolve().parents[2] / "train" / "ssdlite.py"


def train(tmp_path: Path, root: Path, name: str, processes: int) -> Path:
    launcher = (
        [sys.executable, "-m", "torch.distributed.run", f"--nproc_per_node={processes}"]
        if processes > 1
        else [sys.executable]
    )
    flags = [
        "--data",
        "synthetic",
        "--data-root",
        str(root),
        "--image-size",
        "128",
        "--width-mult",
        "0.35",
        "--weights",
        "none",
        "--frozen-bn",
        "--no-augment",
        "--ema-decay",
        "0",
        "--batch-size",
        "8",
        "--epochs",
        "2",
        "--eval-interval",
        "100",
        "--lr",
        "0.05",
        "--workers",
        "0",
        "--device",
        "cpu",
        "--no-progress",
        "--project",
        str(tmp_path),
        "--name",
        name,
    ]
    result = subprocess.run(
        [*launcher, str(ENTRY), *flags],
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, "OMP_NUM_THREADS": "1"},
    )
    assert result.returncode == 0, result.stderr[-3000:]
    return tmp_path / name / "last.pt"


def test_two_processes_match_one_process(tmp_path):
    root = generate(tmp_path / "data", num_train=16, num_val=2, seed=7, size=128, workers=1, progress=False).root
    one, two = load_checkpoint(train(tmp_path, root, "one", 1)), load_checkpoint(train(tmp_path, root, "two", 2))
    assert one["optimizer"]["state"], "no optimiser step was taken"
    a, b = one["model"], two["model"]
    assert a.keys() == b.keys()
    differences = {k: (a[k] - b[k]).abs().max().item() for k in a if a[k].is_floating_point()}
    assert max(differences.values()) < 1e-4, sorted(differences.items(), key=lambda kv: -kv[1])[:5]
