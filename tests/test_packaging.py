"""The install: our top-level packages win over same-named installed ones (Hugging Face `datasets`), and
entry points run both as scripts and as modules from the repository root."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow  # processes and training runs: not in `make check`'s fast lane

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
    probe = f"import sys; sys.path.append({str(REPO)!r}); import datasets"
    result = run(["-S", "-c", probe], tmp_path, fake_hf_datasets)
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


def test_the_hook_claims_only_the_names_something_else_would_take():
    """`python <folder>/<script>.py` puts <folder> first on sys.path, so a module there named like one of our
    packages would shadow it: those names, plus Hugging Face's `datasets`, are exactly what the hook claims."""
    import mnv2_import_hook

    packages = {p.parent.name for p in REPO.glob("*/__init__.py")} - {"tests"}
    shadowing = {p.stem for package in packages for p in (REPO / package).glob("*.py")} & packages
    assert mnv2_import_hook.CLAIMED == shadowing | {"datasets"}
    assert shadowing == {"ssdlite", "common"}  # train/ssdlite.py, bench/common.py


def _stand_in_wheel(folder: Path) -> Path:
    """A wheel of a distribution named `datasets` owning a top-level `datasets/` folder, as Hugging Face's does."""
    import zipfile

    files = {
        "datasets/__init__.py": "FROM = 'the Hugging Face stand-in'\n",
        "datasets/arrow_dataset.py": "",
        "datasets-9.9.9.dist-info/METADATA": "Metadata-Version: 2.1\nName: datasets\nVersion: 9.9.9\n",
        "datasets-9.9.9.dist-info/WHEEL": "Wheel-Version: 1.0\nGenerator: test\nRoot-Is-Purelib: true\n"
        "Tag: py3-none-any\n",
    }
    record = "".join(f"{name},,\n" for name in files) + "datasets-9.9.9.dist-info/RECORD,,\n"
    path = folder / "datasets-9.9.9-py3-none-any.whl"
    with zipfile.ZipFile(path, "w") as wheel:
        for name, text in {**files, "datasets-9.9.9.dist-info/RECORD": record}.items():
            wheel.writestr(name, text)
    return path


@pytest.mark.slow
def test_a_regular_install_beside_hugging_face_datasets(tmp_path):
    """`pip install .` (not editable) into a fresh environment that holds a distribution named `datasets`: both
    keep their files, the suite imports its own `datasets` and runs, and uninstalling it leaves the other whole."""
    import shutil
    import sysconfig

    source = tmp_path / "source"
    source.mkdir()
    for name in ("pyproject.toml", "README.md", "mnv2_import_hook.py"):
        shutil.copy2(REPO / name, source / name)
    for name in (
        "_build",
        "common",
        "backbone",
        "ssdlite",
        "deeplab_mobile",
        "datasets",
        "train",
        "eval",
        "demo",
        "tools",
        "bench",
    ):
        shutil.copytree(REPO / name, source / name, ignore=shutil.ignore_patterns("__pycache__"))
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True, timeout=60)
    python = venv / "bin" / "python"
    site = Path(
        subprocess.run(
            [python, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
    )
    (site / "zz_dependencies.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")  # torch & co., not the suite
    pip = [sys.executable, "-m", "pip", "--python", str(python), "--disable-pip-version-check"]
    offline = ["--no-deps", "--no-index", "--no-build-isolation"]
    for target in (_stand_in_wheel(tmp_path), source):
        done = subprocess.run([*pip, "install", *offline, str(target)], capture_output=True, text=True, timeout=300)
        assert done.returncode == 0, done.stderr
    stand_in = (site / "datasets" / "__init__.py").read_text()
    assert stand_in == "FROM = 'the Hugging Face stand-in'\n" and not (site / "backbone").exists()

    probe = (
        "import datasets, datasets.sources, eval.voc_miou; print(datasets.__file__); "
        "print(eval.voc_miou.build_parser().prog)"
    )
    done = subprocess.run([python, "-c", probe], cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    assert done.stdout.split("\n")[:2] == [
        str(site / "mobilenetv2-suite" / "datasets" / "__init__.py"),
        "python eval/voc_miou.py",
    ]

    done = subprocess.run([*pip, "uninstall", "--yes", "mobilenetv2-suite"], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    after = subprocess.run(
        [python, "-c", "import datasets; print(datasets.FROM)"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert after.stdout.strip() == "the Hugging Face stand-in", after.stderr
    assert not (site / "mobilenetv2-suite").exists()
