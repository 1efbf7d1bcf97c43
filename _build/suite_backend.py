"""setuptools' PEP 517 backend plus one `.pth` line that gives the suite's top-level packages import priority.

An editable install normally appends the repository to the *end* of sys.path, so a same-named package in
site-packages (Hugging Face's `datasets`, a stray `tools`) would shadow ours. The added `.pth` line runs
`mnv2_import_hook.install()`, which puts a finder for our package names first in `sys.meta_path`.
"""

from __future__ import annotations

import base64
import hashlib
import os
import zipfile

from setuptools import build_meta as _setuptools
from setuptools.build_meta import *  # noqa: F401,F403  (re-export every hook we do not wrap)

PTH_NAME = "mnv2_suite_import_priority.pth"
PTH_TEXT = b"import mnv2_import_hook; mnv2_import_hook.install()\n"


def _record_line(name: str, data: bytes) -> str:
    digest = base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=").decode()
    return f"{name},sha256={digest},{len(data)}\n"


def _add_pth(wheel_directory: str, wheel_name: str) -> str:
    """Rewrite the wheel with the `.pth` file added and listed in RECORD."""
    path = os.path.join(wheel_directory, wheel_name)
    tmp = path + ".tmp"
    with zipfile.ZipFile(path) as src, zipfile.ZipFile(tmp, "w", zipfile.ZIP_DEFLATED) as dst:
        for item in src.infolist():
            data = src.read(item.filename)
            if item.filename.endswith(".dist-info/RECORD"):
                data += _record_line(PTH_NAME, PTH_TEXT).encode()
            dst.writestr(item, data)
        dst.writestr(PTH_NAME, PTH_TEXT)
    os.replace(tmp, path)
    return wheel_name


def build_wheel(wheel_directory, config_settings=None, metadata_directory=None):
    name = _setuptools.build_wheel(wheel_directory, config_settings, metadata_directory)
    return _add_pth(wheel_directory, name)


def build_editable(wheel_directory, config_settings=None, metadata_directory=None):
    name = _setuptools.build_editable(wheel_directory, config_settings, metadata_directory)
    return _add_pth(wheel_directory, name)
