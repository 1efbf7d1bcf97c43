"""The install: our top-level packages win over same-named installed ones (Hugging Face `datasets`), and
entry points run both as scripts and as modules from the repository root."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent


@pytest.fixture
def fake_hf_datasets(tmp_path) -> dict[str, str]:
    """An environment where a package named `datasets` comes first on sys.path, like HF's would."""
    package = tmp_path / "site" / "datasets"
    package.mkdir(parents=True)
    (package / "__init__.py").write_text("raise ImportError('this is the Hugging Face datasets stand-in')\n")
    return {"PYTHONPATH": str(package.parent), "PATH": "/usr/bin:/bin"}


def run(args: list[str], cwd: Path, env: dict[str, str]) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=120)


def test_suite_datasets_wins_over_a_same_named_package(fake_hf_datasets, tmp_path):
    probe = "import datasets, backbone, tools; print(datasets.__file__); print(backbone.__file__)"
    result = run(["-c", probe], cwd=tmp_path, env=fake_hf_datasets)
    assert result.returncode == 0, result.stderr
    datasets_file, backbone_file = result.stdout.split()
    assert Path(datasets_file) == REPO / "datasets" / "__init__.py"
    assert Path(backbone_file) == REPO / "backbone" / "__init__.py"


def test_without_the_hook_the_other_package_would_win(fake_hf_datasets, tmp_path):
    """Guards the test above: `-S` skips .pth processing, and then the stand-in shadows our package."""
    result = run(["-S", "-c", f"import sys; sys.path.append({str(REPO)!r}); import datasets"], tmp_path, fake_hf_datasets)
    assert "Hugging Face datasets stand-in" in result.stderr


@pytest.mark.parametrize("invocation", [["tools/complexity.py"], ["-m", "tools.complexity"]])
def test_entry_points_run_as_script_and_as_module(invocation, fake_hf_datasets):
    result = run([*invocation, "--width", "0.35", "--size", "96"], cwd=REPO, env=fake_hf_datasets)
    assert result.returncode == 0, result.stderr
    assert "| MobileNetV2 0.35 OS32 | 96×96 | 1,677,128 |" in result.stdout


@pytest.mark.parametrize("invocation", [["train/ssdlite.py"], ["-m", "train.deeplab"], ["eval/voc_miou.py"]])
def test_training_and_evaluation_entry_points_start_both_ways(invocation, fake_hf_datasets):
    """Run as a script, `train/ssdlite.py` would shadow the `ssdlite` package without the import hook."""
    result = run([*invocation, "--help"], cwd=REPO, env=fake_hf_datasets)
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("usage:") and "--data" in result.stdout
