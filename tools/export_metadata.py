"""The metadata an exported file carries (preset, image size, mean/std, class names, SSDLite's NMS settings), as JSON
values: ONNX `metadata_props`, TorchScript extra file config.txt. Also the error type and the optional-import check
every export module shares, since this is the lowest of them.

`read_metadata` never runs the file: a TorchScript archive is a zip, and loading it with torch.jit.load would run
the TorchScript code inside (a module's `__setstate__`, for one), so the config.txt entry is read with zipfile.
"""

from __future__ import annotations

import importlib
import json
import os
import zipfile
from collections.abc import Mapping
from pathlib import Path
from types import ModuleType
from typing import Any

from common.errors import UserError

SUFFIXES = {"onnx": ".onnx", "torchscript": ".torchscript"}  # yolov5's names
TORCHSCRIPT_METADATA = "config.txt"


class ExportError(UserError):
    """An export that cannot be done as asked; the message says what to do."""


def require(module: str, extra: str = "export") -> ModuleType:
    """Import an optional dependency, or say in one line which extra installs it."""
    try:
        return importlib.import_module(module)
    except ImportError:
        raise ExportError(f"{module} is not installed: pip install -e '.[{extra}]'") from None


def add_onnx_metadata(proto: Any, metadata: Mapping[str, Any]) -> None:
    """Store each entry of `metadata` as a JSON value in the ONNX model's metadata_props."""
    for key, value in metadata.items():
        proto.metadata_props.add(key=key, value=json.dumps(value))


def torchscript_extra_files(metadata: Mapping[str, Any]) -> dict[str, str]:
    """The `_extra_files` argument of torch.jit.save that carries `metadata`."""
    return {TORCHSCRIPT_METADATA: json.dumps(metadata)}


def read_metadata(path: str | os.PathLike) -> dict[str, Any]:
    """The metadata of an exported .onnx or .torchscript file, read without running anything in it."""
    path = Path(path)
    if path.suffix == SUFFIXES["onnx"]:
        proto = require("onnx").load(str(path), load_external_data=False)
        return {entry.key: json.loads(entry.value) for entry in proto.metadata_props}
    return json.loads(_torchscript_entry(path))


def _torchscript_entry(path: Path) -> bytes:
    """The bytes of `<archive>/extra/config.txt` (torch.jit.save names the top folder after the file it wrote)."""
    try:
        with zipfile.ZipFile(path) as archive:
            names = [n for n in archive.namelist() if n.split("/")[1:] == ["extra", TORCHSCRIPT_METADATA]]
            if len(names) != 1:
                raise ExportError(
                    f"{path}: a TorchScript file without one extra/{TORCHSCRIPT_METADATA} entry: "
                    "not written by tools.export; export the checkpoint again"
                )
            return archive.read(names[0])
    except (zipfile.BadZipFile, OSError) as e:
        raise ExportError(f"{path}: not a readable TorchScript file ({e})") from e
