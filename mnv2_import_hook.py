"""Resolve the few top-level names of this suite that something else would take, from the suite's own folder.

A `.pth` line written by the install (see _build/suite_backend.py) calls `install()` at interpreter start. Three
names need it (docs/architecture.md):

- `datasets`: Hugging Face's `datasets`, in many ML environments, sits in site-packages, ahead of us on sys.path;
- `ssdlite`: `python train/ssdlite.py` puts train/ first on sys.path, where ssdlite.py is that entry point;
- `common`: `python bench/run.py` puts bench/ first, where common.py holds the benchmark helpers.

Every other name of ours resolves the ordinary way. A non-editable install keeps the packages in their own folder
of site-packages (`mobilenetv2-suite/`, not importable by itself) so that no other distribution's files and ours
overwrite each other; `install()` puts that folder on sys.path. Standard library only: it runs at every
interpreter start and must stay cheap.
"""

from __future__ import annotations

import importlib.machinery
import sys
from pathlib import Path

CLAIMED = frozenset({"datasets", "ssdlite", "common"})
PACKAGES_FOLDER = "mobilenetv2-suite"  # a non-editable install's home of our packages (a dash: never imported)
_HERE = Path(__file__).resolve().parent
_INSTALLED = _HERE / PACKAGES_FOLDER
ROOT = str(_INSTALLED if _INSTALLED.is_dir() else _HERE)


class SuitePackageFinder:
    """Meta-path finder that resolves only the claimed top-level names, from the suite's root."""

    @classmethod
    def find_spec(cls, name, path=None, target=None):
        if name not in CLAIMED:
            return None
        return importlib.machinery.PathFinder.find_spec(name, [ROOT])


def install() -> None:
    if SuitePackageFinder not in sys.meta_path:
        sys.meta_path.insert(0, SuitePackageFinder)
    if _INSTALLED.is_dir() and ROOT not in sys.path:
        sys.path.append(ROOT)
