"""Both training entry points end to end on a tiny synthetic set: a run folder whose checkpoints the
evaluation loaders accept, and one-line errors for bad flags."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from deeplab_mobile.checkpoint import load_deeplab
from ssdlite.checkpoint import load_ssdlite
from train import deeplab, ssdlite

COMMON = ["--epochs", "1", "--batch-size", "4", "--workers", "0", "--no-progress", "--device", "cpu", "--exist-ok"]


def test_ssdlite_trains_and_its_checkpoint_loads(tmp_path, synthetic_root):
    run = ssdlite.main(["--data-root", str(synthetic_root), "--project", str(tmp_path), "--name", "s", *COMMON])
    model, ckpt = load_ssdlite(run / "best.pt")
    assert ckpt["class_names"] == ["background", "circle", "square", "triangle", "star", "ring"]
    assert model.num_classes == 6 and ckpt["epoch"] == 1
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert any("val/AP50" in r for r in records) and any("train/box_loss" in r for r in records)
    assert (run / "val" / "report.md").is_file()


def test_deeplab_trains_and_its_checkpoint_loads(tmp_path, synthetic_root):
    run = deeplab.main(["--data-root", str(synthetic_root), "--project", str(tmp_path), "--name", "d",
                        "--crop-size", "96", "--width-mult", "0.35", *COMMON])  # fmt: skip
    model, preset, names = load_deeplab(run / "best.pt")
    assert names[0] == "background" and model.num_classes == 6 and preset.width_mult == 0.35
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert 0.0 <= next(r["val/mIoU"] for r in records if "val/mIoU" in r) <= 1.0


@pytest.mark.parametrize("script", ["train/ssdlite.py", "train/deeplab.py"])
def test_missing_data_root_is_one_line(script, tmp_path):
    repo = Path(__file__).resolve().parent.parent
    result = subprocess.run([sys.executable, script, "--data", "coco", "--project", str(tmp_path)], cwd=repo,
                            capture_output=True, text=True, timeout=120)  # fmt: skip
    assert result.returncode != 0
    assert result.stderr.strip().splitlines() == ["error: --data coco needs --data-root (the dataset folder)"]
