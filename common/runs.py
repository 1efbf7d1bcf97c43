"""Run folders: `runs/<task>/<name>`, or `<name>2`, `<name>3`… when taken, claimed atomically so two runs started
at once never share one, and a lock that keeps a second live run out of a folder it reuses (`--exist-ok`,
`--resume`)."""

from __future__ import annotations

import fcntl
import os
from pathlib import Path

from common.errors import UserError


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
