"""--compile auto|on|off (train/engine.py): auto compiles only long runs and only where a compiler exists."""

from __future__ import annotations

import pytest
import torch

from common.errors import UserError
from train import engine

CPU = torch.device("cpu")


def test_auto_stays_eager_on_the_cpu_and_compiles_long_cuda_runs(monkeypatch) -> None:
    monkeypatch.setattr(engine.shutil, "which", lambda name: f"/usr/bin/{name}")
    monkeypatch.setattr(engine.importlib.util, "find_spec", lambda name: object())  # triton "installed"
    on, why = engine.compile_decision("auto", CPU, 10**9)
    assert not on and "measured slower than eager" in why
    threshold = engine.AUTO_MIN_IMAGES["cuda"]
    assert engine.compile_decision("auto", torch.device("cuda"), threshold - 1)[0] is False
    on, why = engine.compile_decision("auto", torch.device("cuda"), threshold)
    assert on and why.startswith("auto → on")
    assert engine.compile_decision("on", CPU, 10) == (True, "on (--compile on)")
    assert engine.compile_decision("off", CPU, 10**9) == (False, "off (--compile off)")


def test_without_a_compiler_on_is_refused(monkeypatch) -> None:
    monkeypatch.setattr(engine.shutil, "which", lambda name: None)
    monkeypatch.setenv("CXX", "clang++")
    with pytest.raises(UserError, match=r"--compile on: no C\+\+ compiler \(clang\+\+\)"):
        engine.compile_decision("on", CPU, 10)


def test_cuda_needs_triton(monkeypatch) -> None:
    monkeypatch.setattr(engine.importlib.util, "find_spec", lambda name: None)
    assert engine.compile_decision("auto", torch.device("cuda"), 10**9) == (
        False,
        "auto → off (triton is not installed)",
    )
