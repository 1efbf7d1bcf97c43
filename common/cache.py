"""Where converted pretrained weights and their downloads live: `$MNV2_CACHE`, by default ~/.cache/mnv2-suite.

Named weights (backbone/pretrained.py) are converted once into `<cache>/<name>.pt`; the files they are converted
from are downloaded into `<cache>/downloads/`, where a user without internet may also put them by hand. The real
test assets (`$MNV2_ASSETS`, by default ../shared/assets beside the repository) stand in for downloads they hold.
"""

from __future__ import annotations

import os
from pathlib import Path

CACHE_ENV = "MNV2_CACHE"
ASSETS_ENV = "MNV2_ASSETS"


def cache_dir() -> Path:
    """$MNV2_CACHE, else ~/.cache/mnv2-suite (created by whoever writes into it)."""
    return Path(os.environ.get(CACHE_ENV) or Path.home() / ".cache" / "mnv2-suite").expanduser()


def downloads_dir() -> Path:
    return cache_dir() / "downloads"


def assets_dir() -> Path:
    """$MNV2_ASSETS, else the shared/assets folder beside this repository (may not exist)."""
    default = Path(__file__).resolve().parents[2] / "shared" / "assets"
    return Path(os.environ.get(ASSETS_ENV) or default).expanduser()
