"""The one helper test modules share for the real test files of shared/assets (conftest's `assets_dir` fixture)."""

from __future__ import annotations

from pathlib import Path

import pytest


def asset(assets_dir: Path, name: str) -> Path:
    """assets_dir / name, or a skip naming the missing file."""
    path = assets_dir / name
    if not path.exists():
        pytest.skip(f"real test asset {path} not found: put shared/assets beside the repo or set MNV2_ASSETS")
    return path
