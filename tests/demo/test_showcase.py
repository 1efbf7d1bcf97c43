"""`make demo`'s job (demo/showcase.py) end to end: the session's demo run (conftest.demo_run) on the synthetic
learning set and, where present, the real assets."""

from __future__ import annotations

import re

import cv2
import numpy as np
import pytest
from PIL import Image


@pytest.mark.slow
def test_showcase_trains_evaluates_and_renders_a_report(demo_run, assets_dir):
    out = demo_run
    report = (out / "REPORT.md").read_text()
    assert "| MobileNetV2 1.0 | 224×224 | 3,504,872 |" in report
    sheet = np.asarray(Image.open(out / "synthetic_sheet.png"))
    assert sheet.shape == (2 * 128, 8 * 128, 3)  # 8 val images: boxes above, masks below

    # Both heads were trained and evaluated: the reached figures are stated and their reports linked.
    ap50 = re.search(r"COCO mAP@0.5 ([0-9.]+)", report)
    miou = re.search(r"mIoU ([0-9.]+), pixel accuracy ([0-9.]+)", report)
    assert ap50 and miou and 0 <= float(ap50.group(1)) <= 1 and 0 < float(miou.group(2)) <= 1
    for link in (
        "eval/coco_map/report.md",
        "eval/coco_map/pr_curve.png",
        "eval/voc_miou/report.md",
        "eval/voc_miou/confusion_matrix.png",
    ):
        assert f"({link})" in report and (out / link).is_file()
    assert (out / "train" / "ssdlite" / "last.pt").is_file() and (out / "train" / "deeplab" / "last.pt").is_file()

    # The annotated synthetic clip: 6 s at 10 fps, frames as large as --resize 256 makes them.
    video = cv2.VideoCapture(str(out / "annotated_clip.mp4"))
    assert int(video.get(cv2.CAP_PROP_FRAME_COUNT)) == 60 and int(video.get(cv2.CAP_PROP_FRAME_WIDTH)) == 256
    assert "(annotated_clip.mp4)" in report and (out / "annotated_frames.png").is_file()

    # The imported official models must still get the real images right.
    assert "| cat.bmp | 285 Egyptian cat |" in report and "| grace_hopper.bmp | 667 mortarboard |" in report
    ious = [float(v) for v in re.findall(r"\| vainf_\d+ \| ([0-9.]+) \|", report)]
    assert len(ious) == 3 and min(ious) >= 0.95
    assert all((out / f"deeplab_vainf_{i}.png").is_file() for i in (1, 23, 114))
    assert "(photos_sheet.png)" in report and len(list((out / "photos").iterdir())) >= 5
