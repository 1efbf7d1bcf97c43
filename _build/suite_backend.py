"""setuptools' PEP 517 backend plus one `.pth` line that runs `mnv2_import_hook.install()` at interpreter start.

The hook resolves the top-level names something else would take (Hugging Face's `datasets`; `ssdlite` and `common`
beside the entry-point scripts) from the suite's own folder. A regular (non-editable) wheel also moves our packages
into their own folder of site-packages, `mobilenetv2-suite/`: installed beside Hugging Face's `datasets`, the two
`datasets/` folders would otherwise be one, each install overwriting the other's files.
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
PACKAGES_FOLDER = "mobilenetv2-suite"  # mnv2_import_hook.PACKAGES_FOLDER
# A file of the folder itself, so that pip's uninstall, which removes the folders all of whose files it installed,
# removes this one too.
FOLDER_NOTE = (f"{PACKAGES_FOLDER}/README.txt", b"The packages of mobilenetv2-suite; mnv2_import_hook.py puts this "
               b"folder on sys.path.\n")


def _record_line(name: str, data: bytes) -> str:
    digest = base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=").decode()
    return f"{name},sha256={digest},{len(data)}\n"


def _relocated(name: str) -> str:
    """Where a wheel entry goes: files inside our package folders move under PACKAGES_FOLDER; the metadata and
    the top-level hook module stay."""
    top = name.split("/", 1)[0]
    if "/" not in name or top.endswith((".dist-info", ".data")):
        return name
    return f"{PACKAGES_FOLDER}/{name}"


def _rewrite(wheel_directory: str, wheel_name: str, relocate: bool) -> str:
    """Rewrite the wheel with the `.pth` file added (and, with `relocate`, the packages moved), RECORD to match."""
    path = os.path.join(wheel_directory, wheel_name)
    tmp = path + ".tmp"
    move = _relocated if relocate else (lambda name: name)
    added = dict([(PTH_NAME, PTH_TEXT), *([FOLDER_NOTE] if relocate else [])])
    with zipfile.ZipFile(path) as src, zipfile.ZipFile(tmp, "w", zipfile.ZIP_DEFLATED) as dst:
        for item in src.infolist():
            data = src.read(item.filename)
            if item.filename.endswith(".dist-info/RECORD"):
                lines = data.decode().splitlines(keepends=True)
                data = "".join(move(line.split(",", 1)[0]) + "," + line.split(",", 1)[1] for line in lines).encode()
                data += "".join(_record_line(name, text) for name, text in added.items()).encode()
            item.filename = move(item.filename)
            dst.writestr(item, data)
        for name, text in added.items():
            dst.writestr(name, text)
    os.replace(tmp, path)
    return wheel_name


def build_wheel(wheel_directory, config_settings=None, metadata_directory=None):
    name = _setuptools.build_wheel(wheel_directory, config_settings, metadata_directory)
    return _rewrite(wheel_directory, name, relocate=True)


def build_editable(wheel_directory, config_settings=None, metadata_directory=None):
    name = _setuptools.build_editable(wheel_directory, config_settings, metadata_directory)
    return _rewrite(wheel_directory, name, relocate=False)
