"""`make demo`'s job (demo/showcase.py) end to end on the small synthetic set and, where present, the real assets."""

from __future__ import annotations

import re

import numpy as np
from PIL import Image

from demo.showcase import main


def test_showcase_writes_a_report_with_real_numbers(tmp_path, synthetic_root, assets_dir):
    out = tmp_path / "demo"
    assert main(["--out", str(out), "--data-root", str(synthetic_root)]) == 0
    report = (out / "REPORT.md").read_text()
    assert "| MobileNetV2 1.0 | 224×224 | 3,504,872 |" in report
    sheet = np.asarray(Image.open(out / "synthetic_sheet.png"))
    assert sheet.shape == (2 * 128, 4 * 128, 3)  # 4 val images: boxes above, masks below
    # The imported official models must still get the real images right.
    assert "| cat.bmp | 285 Egyptian cat |" in report and "| grace_hopper.bmp | 667 mortarboard |" in report
    ious = [float(v) for v in re.findall(r"\| vainf_\d+ \| ([0-9.]+) \|", report)]
    assert len(ious) == 3 and min(ious) >= 0.95
    assert all((out / f"deeplab_vainf_{i}.png").is_file() for i in (1, 23, 114))
