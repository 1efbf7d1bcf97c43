"""`--compile auto|on|off`: whether the training forward runs under torch.compile.

Compiling costs a fixed time up front (inductor generates and builds C++ on the CPU, Triton kernels on CUDA) and
pays only if each step then runs faster, over enough steps. `auto` (the default) follows the measurements in
BENCHMARKS.md ("`--compile` on the CPU", `python -m bench.run --only ssdlite`): with torch 2.14 on the CPU a
compiled SSDLite training step ran at 0.74-1.00× the eager step's speed (two runs), after 85-91 s of compiling,
so it never pays and `auto` stays eager there. On CUDA (not measured yet: no GPU has been lent) `auto` compiles runs of at
least AUTO_MIN_IMAGES["cuda"] images (epochs × training images), where a compile of a minute is small beside the
run. `on` compiles anyway (and says so if no compiler is here).
"""

from __future__ import annotations

import importlib.util
import os
import shutil

import torch

from common.errors import UserError

CHOICES = ("auto", "on", "off")
AUTO_MIN_IMAGES = {"cuda": 100_000}  # one COCO epoch (118k images) and longer; CPU: never, see the docstring


def backend_missing(device: torch.device) -> str | None:
    """Why inductor cannot compile for `device` here, or None when it can."""
    if device.type == "cuda":
        return None if importlib.util.find_spec("triton") else "triton is not installed"
    compiler = os.environ.get("CXX", "g++")
    return None if shutil.which(compiler) else f"no C++ compiler ({compiler}) on PATH"


def decide(choice: str, device: torch.device, planned_images: int) -> tuple[bool, str]:
    """(compile?, the reason, for the run's log)."""
    if choice == "off":
        return False, "off (--compile off)"
    missing = backend_missing(device)
    if choice == "on":
        if missing:
            raise UserError(f"--compile on: {missing}, so torch.compile cannot build kernels for {device.type}; "
                            "install one, or pass --compile auto or off")  # fmt: skip
        return True, "on (--compile on)"
    threshold = AUTO_MIN_IMAGES.get(device.type)
    if threshold is None:
        return False, f"auto → off (compiled {device.type} training steps measured slower than eager; BENCHMARKS.md)"
    if missing:
        return False, f"auto → off ({missing})"
    if planned_images < threshold:
        return False, f"auto → off ({planned_images:,} images planned, below the {threshold:,} where compiling pays)"
    return True, f"auto → on ({planned_images:,} images planned ≥ {threshold:,})"
