"""common.allocator: on glibc, a freed large block is reused without page faults after tune_allocator; elsewhere,
or where the user chose their own malloc settings, it does nothing and says so by returning None."""

from __future__ import annotations

import json
import os
import platform
import subprocess
import sys
from pathlib import Path

import pytest

from common import allocator

GLIBC = platform.system() == "Linux" and platform.libc_ver()[0] == "glibc"

# Faults of touching a 64 MiB block malloc'd again after the same block was touched and freed: glibc's default
# maps it afresh (16,384 faults of 4 KiB pages), the tuned heap hands back the pages it already has.
REUSE_FAULTS = """
import ctypes, json, resource, sys
from common.allocator import tune_allocator
done = tune_allocator() if sys.argv[1] == "tuned" else None
libc = ctypes.CDLL(None)
libc.malloc.restype, libc.malloc.argtypes = ctypes.c_void_p, [ctypes.c_size_t]
libc.free.argtypes = [ctypes.c_void_p]
size = 64 << 20
def touch():
    block = libc.malloc(size)
    ctypes.memset(block, 1, size)
    return block
libc.free(touch())
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
block = touch()
faults = resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before
libc.free(block)
print(json.dumps({"done": done, "faults": faults}))
"""


def _reuse_faults(mode: str, env: dict[str, str] | None = None) -> dict:
    result = subprocess.run(
        [sys.executable, "-c", REUSE_FAULTS, mode],
        capture_output=True,
        text=True,
        check=True,
        cwd=Path(__file__).resolve().parents[2],
        env=env,
    )
    return json.loads(result.stdout.strip().splitlines()[-1])


@pytest.mark.skipif(not GLIBC, reason="mallopt is glibc's")
def test_tuned_glibc_reuses_freed_memory_without_page_faults() -> None:
    default, tuned = _reuse_faults("default"), _reuse_faults("tuned")
    assert default["done"] is None and tuned["done"] == allocator.DESCRIPTION
    assert default["faults"] > 8000  # most of the 16,384 pages faulted in again
    assert tuned["faults"] < 500


@pytest.mark.skipif(not GLIBC, reason="mallopt is glibc's")
def test_user_malloc_settings_win(monkeypatch: pytest.MonkeyPatch) -> None:
    env = {**os.environ, "MALLOC_MMAP_MAX_": "4"}
    assert _reuse_faults("tuned", env)["done"] is None
    monkeypatch.setenv("LD_PRELOAD", "/usr/lib/x86_64-linux-gnu/libjemalloc.so.2")
    assert allocator.tune_allocator() is None
    monkeypatch.delenv("LD_PRELOAD")
    monkeypatch.setenv("GLIBC_TUNABLES", "glibc.malloc.mmap_max=0")
    assert allocator.tune_allocator() is None


def test_no_op_without_glibc(monkeypatch: pytest.MonkeyPatch) -> None:
    """Another C library (musl, macOS, Windows): nothing is called."""
    monkeypatch.setattr(platform, "libc_ver", lambda: ("", ""))
    monkeypatch.setattr(allocator.ctypes, "CDLL", lambda *a: pytest.fail("mallopt looked up without glibc"))
    assert allocator.tune_allocator() is None
