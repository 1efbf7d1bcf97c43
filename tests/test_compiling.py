"""--compile auto|on|off (train/compiling.py): auto compiles only long runs and only where a compiler exists."""

from __future__ import annotations

import pytest
import torch

from common.errors import UserError
from train import compiling

CPU = torch.device("cpu")


def test_auto_stays_eager_on_the_cpu_and_compiles_long_cuda_runs(monkeypatch) -> None:
    monkeypatch.setattr(compiling.shutil, "which", lambda name: f"/usr/bin/{name}")
    monkeypatch.setattr(compiling.importlib.util, "find_spec", lambda name: object())  # triton "installed"
    on, why = compiling.decide("auto", CPU, 10**9)
    assert not on and "measured slower than eager" in why
    threshold = compiling.AUTO_MIN_IMAGES["cuda"]
    assert compiling.decide("auto", torch.device("cuda"), threshold - 1)[0] is False
    on, why = compiling.decide("auto", torch.device("cuda"), threshold)
    assert on and why.startswith("auto → on")
    assert compiling.decide("on", CPU, 10) == (True, "on (--compile on)")
    assert compiling.decide("off", CPU, 10**9) == (False, "off (--compile off)")


def test_without_a_compiler_on_is_refused(monkeypatch) -> None:
    monkeypatch.setattr(compiling.shutil, "which", lambda name: None)
    monkeypatch.setenv("CXX", "clang++")
    with pytest.raises(UserError, match=r"--compile on: no C\+\+ compiler \(clang\+\+\)"):
        compiling.decide("on", CPU, 10)


def test_cuda_needs_triton(monkeypatch) -> None:
    monkeypatch.setattr(compiling.importlib.util, "find_spec", lambda name: None)
    assert compiling.decide("auto", torch.device("cuda"), 10**9) == (False, "auto → off (triton is not installed)")
