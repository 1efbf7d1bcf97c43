"""Give this suite's top-level packages priority over same-named installed packages.

Our layout has top-level packages with common names; `datasets` collides with Hugging Face's `datasets`,
which many ML environments have. A `.pth` line written by the install (see _build/suite_backend.py) calls
`install()` at interpreter start, so `import datasets` means this suite's package in every way the suite is
run: `python train/x.py`, `python -m train.x`, pytest, or a notebook. Standard library only: it runs at every
interpreter start and must stay cheap.
"""

from __future__ import annotations

import importlib.machinery
import sys
from pathlib import Path

ROOT = str(Path(__file__).resolve().parent)
PACKAGES = frozenset({"backbone", "ssdlite", "deeplab_mobile", "datasets", "train", "eval", "demo", "tools", "bench"})


class SuitePackageFinder:
    """Meta-path finder that resolves only our top-level package names, from the suite's root."""

    @classmethod
    def find_spec(cls, name, path=None, target=None):
        if name not in PACKAGES:
            return None
        return importlib.machinery.PathFinder.find_spec(name, [ROOT])


def install() -> None:
    if SuitePackageFinder not in sys.meta_path:
        sys.meta_path.insert(0, SuitePackageFinder)
