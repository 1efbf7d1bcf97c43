"""One preprocessing per head: the pixels evaluation scores are the pixels `Detector` / `Segmenter` give the
network, and Google's models see the resize they were trained with (TF1 bilinear, no low-pass filter)."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from common.errors import WeightsError
from common.images import read_image, resize_pixels
from ssdlite import SSDLitePreset
from ssdlite import checkpoint_dict as checkpoint_of
from tests.asset_files import asset
from tests.tolerances import float32_close, layer_stats

REFERENCES = Path(__file__).parent / "references" / "tf_pedestrian_raw_photos.json"
OLD_DEEPLAB = Path(__file__).parent / "references" / "deeplab_layout_2026_11.pt"


def test_tf_bilinear_is_tf1s_resize_bilinear():
    """TF1 ResizeBilinear (align_corners=False): source = destination × (in / out), no pixel-centre shift; with
    align_corners=True the corners map onto each other. Worked by hand on a 1×4 ramp."""
    ramp = np.array([[0, 40, 80, 120]], np.uint8)[..., None].repeat(3, axis=2)
    half = resize_pixels(ramp, (1, 2), "tf_bilinear")[0, :, 0]
    assert half.tolist() == [0.0, 80.0]  # sources 0 and 2 exactly: no filtering, no half-pixel shift
    up = resize_pixels(ramp, (1, 8), "tf_bilinear")[0, :, 0]
    assert up.tolist() == [0, 20, 40, 60, 80, 100, 120, 120]  # the last sources clamp at the edge
    aligned = resize_pixels(ramp, (1, 7), "tf_bilinear_aligned")[0, :, 0]
    assert aligned.tolist() == [0, 20, 40, 60, 80, 100, 120]
    opencv = resize_pixels(ramp, (1, 2), "opencv_linear")[0, :, 0]
    assert opencv.tolist() == [20.0, 100.0]  # half-pixel centres: the mean of each pair
    with pytest.raises(ValueError, match="unknown resize method 'pil'"):
        resize_pixels(ramp, (1, 2), "pil")  # type: ignore[arg-type]


def _photo(assets_dir: Path, name: str) -> np.ndarray:
    if name == "astronaut":
        return pytest.importorskip("skimage.data").astronaut()
    return np.asarray(Image.open(asset(assets_dir, name)).convert("RGB"))


def test_raw_photos_match_tensorflow_running_the_same_graph(assets_dir):
    """Every detection ≥ 0.3 that TensorFlow's graph makes on the raw photo (it resizes inside), within 1 px and
    0.01, and none it does not make (references: tests/references/make_tf_pedestrian_references.py)."""
    from ssdlite import Detector

    reference = json.loads(REFERENCES.read_text())
    detector = Detector.from_pretrained("ssdlite_pedestrian")
    assert any(r["detections"] for r in reference["photos"].values())
    for name, expected in reference["photos"].items():
        image = _photo(assets_dir, name)
        assert list(image.shape[:2]) == expected["size"], name
        found = detector([image], score_threshold=reference["min_score"] - 0.01)[0]
        kept = found.scores >= reference["min_score"] + 0.01
        assert kept.sum() <= len(expected["detections"]), (name, found.scores)
        for tf_detection in expected["detections"]:
            gaps = np.abs(found.boxes - np.asarray(tf_detection["box"])).max(axis=1)
            closest = int(np.argmin(gaps))
            assert gaps[closest] <= 1.0, (name, found.boxes, tf_detection)
            assert abs(found.scores[closest] - tf_detection["score"]) <= 0.01, (name, found.scores, tf_detection)
            assert found.names[closest] == "person"


def test_coco_map_scores_exactly_what_the_detector_returns(assets_dir, tmp_path):
    """eval/coco_map.py on the real coco8 val images gives the boxes `Detector` gives on the same files."""
    from eval import coco_map
    from ssdlite import Detector

    coco8 = asset(assets_dir, "coco8")
    out = coco_map.main(
        [
            "--weights",
            "ssdlite_pedestrian",
            "--ann",
            str(coco8 / "instances_val.json"),
            "--images",
            str(coco8 / "images" / "val"),
            "--project",
            str(tmp_path),
            "--workers",
            "0",
            "--quiet",
            "--device",
            "cpu",
        ]
    )
    evaluated = json.loads((out / "detections.json").read_text())
    files = {
        image["id"]: image["file_name"] for image in json.loads((coco8 / "instances_val.json").read_text())["images"]
    }
    detector = Detector.from_pretrained("ssdlite_pedestrian")
    compared = 0
    for image_id, file_name in files.items():
        found = detector([read_image(coco8 / "images" / "val" / file_name)], detector.preset.score_threshold)[0]
        ours = sorted((d for d in evaluated if d["image_id"] == image_id), key=lambda d: -d["score"])
        assert len(ours) == len(found.scores), file_name
        for row, score, box in zip(ours, found.scores, found.boxes, strict=True):
            x, y, w, h = row["bbox"]
            assert abs(row["score"] - float(score)) <= 1e-5, file_name
            np.testing.assert_allclose([x, y, x + w, y + h], box, atol=1e-3, err_msg=file_name)
        compared += len(ours)
    assert compared > 0


def test_voc_miou_scores_exactly_what_the_segmenter_returns(assets_dir, tmp_path):
    """eval/voc_miou.py on the 3 real VOC samples: its confusion matrix is the one of `Segmenter`'s masks on the same
    files, pixel for pixel, so their mIoU are equal (imported TF model, "pad" input mode)."""
    from datasets.segmentation import read_label_mask
    from deeplab_mobile import Segmenter
    from eval import voc_miou
    from eval.segmentation import ConfusionMatrix

    samples, root = asset(assets_dir, "voc_samples"), tmp_path / "voc"  # a VOC-layout folder of the 3 samples
    for folder in ("JPEGImages", "SegmentationClass"):
        (root / folder).mkdir(parents=True)
        for file in (samples / folder).iterdir():
            (root / folder / file.name).symlink_to(file)
    names = sorted(file.stem for file in (samples / "JPEGImages").iterdir())
    (root / "ImageSets" / "Segmentation").mkdir(parents=True)
    (root / "ImageSets" / "Segmentation" / "val.txt").write_text("\n".join(names) + "\n")
    out = voc_miou.main(
        [
            "--weights",
            "deeplab_coral_voc",
            "--data",
            "custom",
            "--data-root",
            str(root),
            "--project",
            str(tmp_path),
            "--workers",
            "0",
            "--quiet",
            "--device",
            "cpu",
            "--batch-size",
            "2",
            "--overlays",
            "0",
        ]
    )
    evaluated = json.loads((out / "metrics.json").read_text())
    segmenter = Segmenter.from_pretrained("deeplab_coral_voc")
    matrix = ConfusionMatrix(21)
    for name in names:
        image = read_image(next((samples / "JPEGImages").glob(f"{name}.*")))
        truth = read_label_mask(next((samples / "SegmentationClass").glob(f"{name}.*")))
        matrix.update(
            torch.from_numpy(segmenter([image])[0].astype(np.int64)), torch.from_numpy(truth.astype(np.int64))
        )
    assert len(names) == 3 and evaluated["confusion_matrix"] == matrix.matrix.tolist()


def test_a_checkpoint_of_the_previous_layout_loads_with_the_same_outputs():
    """tests/references/deeplab_layout_2026_11.pt was written by the code before presets held the whole network
    (commit 6857ca7: "preset_config" + model "config", TF fixed-window pooling, BN eps beside the preset); it is
    converted on read and computes what it computed then."""
    from deeplab_mobile import load_deeplab

    model, checkpoint = load_deeplab(OLD_DEEPLAB)
    assert (
        "preset_config" in checkpoint and model.preset.bn_eps == 1e-3 and model.preset.resize == "tf_bilinear_aligned"
    )
    assert model.preset.input_mode == "resize" and model.class_names == ["background", "cat", "dog"]
    reference = checkpoint["reference_logits"]
    with torch.no_grad():
        logits = model(checkpoint["reference_input"])
    # The stored logits were computed on another machine, whose kernels may add in another order: the same network
    # in float32, bounded by its depth and widest fan-in (tolerances.float32_close); a wrong conversion (another
    # pooling, BN eps or resize) moves them by orders of magnitude more.
    torch.testing.assert_close(
        logits, reference, **float32_close(*layer_stats(model), scale=reference.abs().max().item())
    )


def test_new_checkpoints_hold_one_config_and_say_how_flags_changed_a_preset(tmp_path):
    from deeplab_mobile import build_deeplab, save_deeplab
    from ssdlite import SSDLITE320_COCO, build_ssdlite, load_ssdlite, save_ssdlite

    preset = SSDLITE320_COCO.derive(image_size=(160, 160), width_mult=0.5)
    assert preset.name == "ssdlite320_coco[image_size=160x160,width_mult=0.5]"
    path = save_ssdlite(build_ssdlite(preset, num_classes=3), tmp_path / "s.pt")
    with pytest.raises(
        WeightsError,
        match=r"differs from 'ssdlite320_coco' in image_size: 160x160 vs 320x320; "
        r"width_mult: 0.5 vs 1",
    ):
        load_ssdlite(path, preset="ssdlite320_coco")
    assert load_ssdlite(path, preset=preset)[0].preset == dataclasses.replace(preset, num_classes=3)
    deeplab = build_deeplab("mnv2_os16", num_classes=2)
    checkpoint = torch.load(save_deeplab(deeplab, tmp_path / "d.pt"), weights_only=True)
    assert "preset_config" not in checkpoint and checkpoint["config"] == deeplab.preset.to_config()
    old_ssdlite = {k: v for k, v in checkpoint_of(build_ssdlite(SSDLITE320_COCO, num_classes=2)).items()}
    for fields, resize in (({"padding_mode": "tf_same"}, "tf_bilinear"), ({}, "opencv_linear")):
        config = {**{k: v for k, v in old_ssdlite["config"].items() if k not in ("resize", "description")}, **fields}
        assert SSDLitePreset.from_config(config).resize == resize  # written before presets recorded the resize
