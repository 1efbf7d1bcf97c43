"""Files the suite writes: atomic writes, so that every file appears whole or not at all, and run folders.

A temporary name beside the target (same folder, so the rename is atomic; same suffix, so writers that choose a
format by extension — OpenCV, torch.onnx — still do), renamed over the target only when the writer succeeded, and
removed when it failed. Stale temporaries of a killed process carry the `.NAME.*.tmp` pattern `stale_temporaries`
finds.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import uuid
from pathlib import Path
from typing import BinaryIO, Callable, Iterator

from common.errors import UserError


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


# ---- Run folders: `runs/<task>/<name>`, or `<name>2`, `<name>3`… when taken, claimed atomically so two runs started
# at once never share one, and a lock that keeps a second live run out of a folder it reuses (`--exist-ok`,
# `--resume`).


def next_run_dir(project: Path, name: str, exist_ok: bool) -> Path:
    """Create and return runs/<task>/<name>, or <name>2, <name>3… if taken (never writes into someone else's run).

    `mkdir` is the claim: it fails for all but one of several processes racing for a name, so checking for the
    folder and creating it later (two runs both seeing it free) cannot happen."""
    project.mkdir(parents=True, exist_ok=True)
    path, n = project / name, 2
    while True:
        try:
            path.mkdir(exist_ok=exist_ok and path == project / name)
            return path
        except FileExistsError:
            path, n = project / f"{name}{n}", n + 1


class RunLock:
    """An exclusive lock on `<run>/.lock`, held while a run writes into the folder.

    A POSIX record lock (`lockf`): the kernel drops it when its process dies, kill -9 included, so a stale lock
    never blocks a resume, and forked DataLoader workers do not inherit it. The file holds the owner's pid for
    the message a second run gets."""

    def __init__(self, folder: Path) -> None:
        self.path = folder / ".lock"
        self.fd: int | None = None

    def acquire(self) -> None:
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.lockf(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            owner = os.read(fd, 32).decode(errors="replace").strip() or "unknown"
            os.close(fd)
            raise UserError(f"{self.path.parent} is in use by a running training run (pid {owner}): wait for it to "
                            "finish, or choose another --name") from None
        os.ftruncate(fd, 0)
        os.write(fd, f"{os.getpid()}\n".encode())
        self.fd = fd

    def release(self) -> None:
        if self.fd is not None:
            os.close(self.fd)
            self.fd = None
