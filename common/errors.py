"""The error types library code raises and the exit statuses entry points turn them into.

Library code raises; only entry points (`common.cli.run_cli`) print one `error:` line and exit. Every error a
user can cause is a `UserError` (or a subclass that says which kind of input is at fault).
"""

from __future__ import annotations

from os import PathLike
from typing import Literal

EXIT_OK = 0
EXIT_CHECK_FAILED = 1  # a check the command exists to make refused its result (tools.export's verification)
EXIT_USER_ERROR = 2  # bad flags, data, checkpoints, files the OS refused: argparse's own status for bad usage
EXIT_DIVERGED = 3  # training stopped on a NaN/inf loss; last.pt holds the last good state
EXIT_INTERRUPTED = 130  # Ctrl-C (128 + SIGINT), as shells report it


class UserError(ValueError):
    """A problem the user can fix (flags, data, checkpoint): the message names it and says what to do.
    `details` (a table, say) is printed on stdout before the one `error:` line; `exit_status` is what the entry
    point exits with."""

    exit_status = EXIT_USER_ERROR
    details: str | None = None


class Interrupted(Exception):
    """Ctrl-C, after the entry point has put its files in order: the message says what was kept and how to go on
    (printed as it is, one line, exit status EXIT_INTERRUPTED)."""


class TrainingDiverged(RuntimeError):
    """The loss became NaN or infinite; the last good checkpoint is left as it was (exit status EXIT_DIVERGED)."""


class WeightsError(UserError):
    """A weights or checkpoint file (or weights name) that cannot be used; the message names it and what to do."""


SkipKind = Literal[
    "missing image", "corrupt image", "size mismatch", "bad annotation", "bad box", "unknown category", "bad mask"
]
SKIP_KINDS: tuple[SkipKind, ...] = (
    "missing image",
    "corrupt image",
    "size mismatch",
    "bad annotation",
    "bad box",
    "unknown category",
    "bad mask",
)


class DatasetError(UserError):
    """A problem with a dataset file: the message names the file, the problem and what to do about it."""

    def __init__(self, path: str | PathLike[str], problem: str, fix: str = "", kind: SkipKind | None = None):
        self.path = str(path)
        self.problem = problem
        self.fix = fix
        self.kind = kind
        super().__init__(f"{self.path}: {problem}" + (f". {fix}" if fix else ""))

    def __reduce__(self):
        """Rebuild from the fields, so the error crosses from a DataLoader worker to the main process intact."""
        return type(self), (self.path, self.problem, self.fix, self.kind)
