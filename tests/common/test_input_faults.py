"""Bad input outside the training loop that could mislead or pass silently: an importer's --out that is a folder,
COCO files with no annotations or duplicate image ids, a truncated video."""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import cv2
import numpy as np
import pytest

from common.errors import DatasetError
from datasets.coco import CocoDetection


@pytest.mark.parametrize("module", ["tools.import_tflite", "tools.import_tf_detection", "tools.import_tf_segmentation"])
def test_an_importers_out_that_is_a_folder_is_one_line(module, tmp_path, capsys):
    import importlib

    with pytest.raises(SystemExit) as stop:
        importlib.import_module(module).main([str(tmp_path / "model.tflite"), "--out", str(tmp_path)])
    err = capsys.readouterr().err.strip().splitlines()
    assert stop.value.code == 2
    assert err == [f"error: --out {tmp_path}: is a folder; give the file to write, e.g. {tmp_path / 'model.pt'}"]


def coco_file(synthetic_root: Path, tmp_path: Path, edit) -> Path:
    ann = json.loads((synthetic_root / "coco" / "annotations" / "instances_train.json").read_text())
    path = tmp_path / "instances.json"
    path.write_text(json.dumps(edit(ann)))
    return path


def test_coco_images_without_annotations_say_so(synthetic_root, tmp_path):
    ann = coco_file(synthetic_root, tmp_path, lambda a: {**a, "annotations": []})
    with pytest.raises(DatasetError, match=r"contains no usable images: its 12 images have no annotations"):
        CocoDetection(synthetic_root / "coco" / "train", ann, None, drop_empty=True)


def test_duplicate_coco_image_ids_are_named(synthetic_root, tmp_path):
    def duplicate(a):
        images = [dict(im) for im in a["images"]]
        images[1]["id"] = images[0]["id"]
        return {**a, "images": images}

    ann = coco_file(synthetic_root, tmp_path, duplicate)
    with pytest.raises(DatasetError, match=r"image id \d+ is given to 2 images .*Give every image its own id"):
        CocoDetection(synthetic_root / "coco" / "train", ann, None)


def test_a_truncated_video_warns_that_the_output_is_partial(tmp_path):
    from demo.sources import VideoSource

    path = tmp_path / "clip.avi"
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"MJPG"), 10, (64, 48))
    rng = np.random.default_rng(0)
    for _ in range(20):
        writer.write(rng.integers(0, 255, (48, 64, 3), dtype=np.uint8))
    writer.release()
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        frames = list(VideoSource(cv2.VideoCapture(str(path)), str(path), live=False, stride=1))
    assert 0 < len(frames) < 20
    assert [str(w.message) for w in caught] == [
        (
            f"--source {path}: only {len(frames)} of the 20 frames its header announces could be decoded (a truncated "
            "or damaged file?); the output covers those"
        )
    ]


def test_coco_map_of_a_file_without_annotations_is_undefined_not_zero(synthetic_root, tmp_path, capsys):
    from eval import coco_map
    from ssdlite.checkpoint import save_ssdlite
    from ssdlite.model import build_ssdlite
    from ssdlite.presets import get_preset

    weights = save_ssdlite(build_ssdlite(get_preset("ssdlite320_coco"), num_classes=6), tmp_path / "m.pt")
    ann = coco_file(synthetic_root, tmp_path, lambda a: {**a, "annotations": []})
    with pytest.raises(SystemExit) as stop:
        coco_map.main(
            [
                "--weights",
                str(weights),
                "--ann",
                str(ann),
                "--images",
                str(synthetic_root / "coco" / "train"),
                "--workers",
                "0",
                "--device",
                "cpu",
                "--project",
                str(tmp_path),
                "--quiet",
            ]
        )
    err = capsys.readouterr().err.strip().splitlines()
    assert stop.value.code == 2 and err == [
        (
            f"error: {ann}: has no annotations, so mAP is undefined (nothing to "
            "find): evaluate on a file with ground-truth boxes"
        )
    ]
