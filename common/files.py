"""Atomic writes: every file the suite produces appears whole or not at all.

A temporary name beside the target (same folder, so the rename is atomic; same suffix, so writers that choose a
format by extension — OpenCV, torch.onnx — still do), renamed over the target only when the writer succeeded, and
removed when it failed. Stale temporaries of a killed process carry the `.NAME.*.tmp` pattern `stale_temporaries`
finds.
"""

from __future__ import annotations

import contextlib
import os
import uuid
from pathlib import Path
from typing import BinaryIO, Callable, Iterator


def temporary_name(path: Path) -> Path:
    """A fresh hidden name beside `path`: `.NAME.<random>.tmp<suffix>`."""
    return path.with_name(f".{path.name}.{uuid.uuid4().hex[:8]}.tmp{path.suffix}")


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path for a writer that wants a file name (OpenCV, exporters); on success it replaces
    `path`, on any failure it is deleted and `path` is left as it was."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = temporary_name(path)
    try:
        yield tmp
        if not tmp.exists():
            raise OSError(f"{path}: the writer produced no file")
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def write_atomic_with(path: str | os.PathLike, write: Callable[[BinaryIO], None]) -> Path:
    """Call `write(file)` on a temporary file, flush it to disk, then rename it over `path` (mode 0644)."""
    path = Path(path)
    with atomic_path(path) as tmp:
        with open(tmp, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o644)
    return path


def write_atomic(path: str | os.PathLike, data: str | bytes) -> Path:
    """Write text (UTF-8) or bytes to `path` atomically."""
    payload = data.encode() if isinstance(data, str) else data
    return write_atomic_with(path, lambda f: f.write(payload))


def stale_temporaries(folder: str | os.PathLike, name: str) -> list[Path]:
    """Temporaries of `name` in `folder` that a killed writer left behind."""
    return sorted(Path(folder).glob(f".{name}.*.tmp*"))
