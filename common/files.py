"""Files the suite writes: atomic writes, so that every file appears whole or not at all, and run folders.

A temporary name beside the target (same folder, so the rename is atomic; same suffix, so writers that choose a
format by extension — OpenCV, torch.onnx — still do), renamed over the target only when the writer succeeded, and
removed when it failed. The name carries the writer's process id, `.NAME.<pid>-<random>.tmp<suffix>`: a process
killed mid-write (kill -9, the OOM killer) leaves its temporary behind, and the next write of the same file removes
every temporary of it whose writer is gone. An OSError while writing names the file, not its temporary.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import os
import re
import uuid
from pathlib import Path
from typing import BinaryIO, Callable, Iterator

from common.errors import UserError


def temporary_name(path: Path) -> Path:
    """A fresh hidden name beside `path`: `.NAME.<pid>-<random>.tmp<suffix>`."""
    return path.with_name(f".{path.name}.{os.getpid()}-{uuid.uuid4().hex[:8]}.tmp{path.suffix}")


def stale_temporaries(folder: str | os.PathLike, name: str) -> list[Path]:
    """Temporaries of `name` in `folder` whose writer is no longer running (killed mid-write); temporaries of
    earlier versions, which did not record their writer, count as stale too."""
    found = []
    for path in sorted(Path(folder).glob(f".{glob_escape(name)}.*.tmp*")):
        owner = re.match(r"(\d+)-", path.name[len(name) + 2 :])
        if owner is None or not _running(int(owner[1])):
            found.append(path)
    return found


def glob_escape(name: str) -> str:
    return re.sub(r"([*?\[])", r"[\1]", name)


def _running(pid: int) -> bool:
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's live process
        return True
    return True


def remove_stale_temporaries(path: str | os.PathLike) -> None:
    """Delete what killed writers of `path` left beside it (see the module docstring)."""
    path = Path(path)
    for stale in stale_temporaries(path.parent, path.name):
        stale.unlink(missing_ok=True)


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path for a writer that wants a file name (OpenCV, exporters); on success it replaces
    `path`, on any failure it is deleted and `path` is left as it was."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    if not os.access(path.parent, os.W_OK):  # before the writer (OpenCV) fails without saying why
        code = errno.EROFS if os.statvfs(path.parent).f_flag & os.ST_RDONLY else errno.EACCES
        raise OSError(code, os.strerror(code), str(path))
    remove_stale_temporaries(path)
    tmp = temporary_name(path)
    try:
        yield tmp
        if not tmp.exists():
            raise OSError(errno.EIO, "the writer produced no file", str(path))
        os.replace(tmp, path)
    except OSError as e:
        if e.errno is not None and e.filename in (None, str(tmp), tmp):  # name the file, not its temporary
            raise OSError(e.errno, e.strerror, str(path)) from e
        raise
    finally:
        if tmp.exists():
            tmp.unlink()


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


def write_atomic(path: str | os.PathLike, data: str | bytes | memoryview) -> Path:
    """Write text (UTF-8) or bytes to `path` atomically."""
    payload = data.encode() if isinstance(data, str) else data
    return write_atomic_with(path, lambda f: f.write(payload))


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
            raise UserError(
                f"{self.path.parent} is in use by a running training run (pid {owner}): wait for it to "
                "finish, or choose another --name"
            ) from None
        os.ftruncate(fd, 0)
        os.write(fd, f"{os.getpid()}\n".encode())
        self.fd = fd

    def release(self) -> None:
        if self.fd is not None:
            os.close(self.fd)
            self.fd = None
