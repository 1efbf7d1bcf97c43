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

    return generate(tmp_path_factory.mktemp("synthetic") / "data", num_train=12, num_val=4, seed=3, size=128,
                    workers=1, progress=False).root
