"""On-device export (issue 13): int8 LiteRT files of Google's imported models meet the accuracy bounds against fp32
and against Google's own int8 file, a file that misses them is never written, the video demo runs the file, and
bad input (no extra, no calibration images, a foreign .tflite, flags without --format tflite) is one clear line."""

from __future__ import annotations

import importlib.util
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from asset_files import asset
from PIL import Image

from common.errors import UserError
from common.images import read_image
from datasets.segmentation import read_label_mask
from demo import video
from eval.segmentation import image_mean_iou
from ssdlite.detector import predict as torch_detect
from tools import export as export_tool
from tools.export_formats import VerificationError, format_table
from tools.export_graphs import load_graph
from tools import export_litert
from tools.calibration import calibration_images, resolve_source, training_folder
from tools.export_metadata import ExportError
from tools.litert_metadata import embed_metadata, read_tflite_metadata
from tools.litert_runtime import LiteRTModel

REPO = Path(__file__).resolve().parent.parent
VOC_SAMPLES = ("vainf_1", "vainf_23", "vainf_114")
GOOGLE_DEEPLAB = "coral/deeplabv3_mnv2_pascal_quant.tflite"
needs_converter = pytest.mark.skipif(
    importlib.util.find_spec("litert_torch") is None,
    reason="litert-torch is not installed: pip install -e '.[mobile]'",
)


@pytest.fixture(scope="module")
def calibration_folder(tmp_path_factory, assets_dir: Path) -> Path:
    """coco8's 8 photos and the coral folder's 4 JPEGs: not the VOC samples the DeepLab is scored on, nor astronaut
    and grace_hopper, whose people the detector must keep (its other checks run on every asset photo)."""
    folder = tmp_path_factory.mktemp("calibration")
    for photo in [*asset(assets_dir, "coco8/images").rglob("*.jpg"), *asset(assets_dir, "coral").glob("*.jpg")]:
        shutil.copy(photo, folder / photo.name)
    return folder


def export_in_subprocess(*args: str) -> None:
    """The CLI in its own process: the converter imports JAX, whose threads would make every later fork of this
    pytest process (DataLoader workers in the training tests) risk a deadlock."""
    result = subprocess.run([sys.executable, "-m", "tools.export", *args], cwd=REPO, capture_output=True, text=True)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]


@pytest.fixture(scope="module")
def deeplab_int8(tmp_path_factory, assets_dir, calibration_folder) -> Path:
    out = tmp_path_factory.mktemp("deeplab")
    images = [str(asset(assets_dir, f"voc_samples/JPEGImages/{name}.png")) for name in VOC_SAMPLES]
    export_in_subprocess("deeplab_coral_voc", "--format", "tflite", "--int8", "--calib-data", str(calibration_folder),
                         "--out", str(out), "--images", *images)  # fmt: skip
    return out / "deeplab_coral_voc_int8.tflite"


@needs_converter
@pytest.mark.slow
def test_int8_deeplab_keeps_fp32_accuracy_and_agrees_with_googles_int8_file(deeplab_int8, assets_dir) -> None:
    from ai_edge_litert.interpreter import Interpreter

    ours = LiteRTModel(deeplab_int8)
    assert ours.is_int8 and ours.metadata["int8"] and "12 images" in ours.metadata["calibration"]
    graph = load_graph("deeplab_coral_voc")
    google = Interpreter(str(asset(assets_dir, GOOGLE_DEEPLAB)), num_threads=1)
    google.allocate_tensors()
    for name in VOC_SAMPLES:
        image = read_image(assets_dir / "voc_samples" / "JPEGImages" / f"{name}.png")
        truth = read_label_mask(assets_dir / "voc_samples" / "SegmentationClass" / f"{name}.png")
        x, _ = graph.prepare([image])
        with torch.no_grad():
            fp32 = graph(x)[1][0].numpy()
        (int8,) = ours.run(x.numpy())[0]
        google.set_tensor(google.get_input_details()[0]["index"], _uint8_513(image)[None])
        google.invoke()
        theirs = google.get_tensor(google.get_output_details()[0]["index"])[0]
        assert abs(image_mean_iou(int8, truth, 21) - image_mean_iou(fp32, truth, 21)) <= 0.01, name
        assert (int8 == theirs).mean() >= 0.98, name
        assert ours.segment([image])[0].shape == image.shape[:2]


def _uint8_513(image: np.ndarray) -> np.ndarray:
    from common.images import resize_batch

    pixels = resize_batch([image], (513, 513), "tf_bilinear_aligned")[0][0]
    return np.clip(np.round(pixels), 0, 255).astype(np.uint8)


@pytest.fixture(scope="module")
def pedestrian_int8(tmp_path_factory, calibration_folder) -> Path:
    out = tmp_path_factory.mktemp("pedestrian")
    export_in_subprocess("ssdlite_pedestrian", "--format", "tflite", "--int8", "--calib-data", str(calibration_folder),
                         "--out", str(out))  # fmt: skip
    return out / "ssdlite_pedestrian_int8.tflite"


@needs_converter
@pytest.mark.slow
def test_int8_pedestrian_detector_keeps_the_people_and_every_confident_detection(pedestrian_int8, assets_dir) -> None:
    from skimage import data

    ours = LiteRTModel(pedestrian_int8)
    graph = load_graph("ssdlite_pedestrian")
    photos = {"astronaut": data.astronaut(), "grace_hopper": read_image(asset(assets_dir, "coral/grace_hopper.bmp"))}
    for name in ("coral", "coco8/images", "voc_samples/JPEGImages"):
        photos.update({p.name: read_image(p) for p in sorted((assets_dir / name).rglob("*"))
                       if p.suffix in (".jpg", ".png", ".bmp")})  # fmt: skip
    for name, image in photos.items():
        (fp32,) = torch_detect(graph.model, [image], score_threshold=0.45)
        (int8,) = ours.detect([image], 0.45)
        agrees, summary = export_litert._detections_agree(fp32, int8)
        assert agrees, f"{name}: {summary}"  # no detection above 0.5 gained or lost
        if name in ("astronaut", "grace_hopper"):  # the person is kept: box within 5 px, score within 0.05
            assert len(int8["scores"]) and int8["labels"][0] == 1, name
            assert (int8["boxes"][0] - fp32["boxes"][0]).abs().max() <= 5.0
            assert abs(float(int8["scores"][0] - fp32["scores"][0])) <= 0.05


@needs_converter
@pytest.mark.slow
def test_video_demo_runs_the_int8_files(pedestrian_int8, deeplab_int8, tmp_path, capsys) -> None:
    import cv2
    from skimage import data

    photo = tmp_path / "astronaut.png"
    cv2.imwrite(str(photo), cv2.cvtColor(data.astronaut(), cv2.COLOR_RGB2BGR))
    boxes = video.run(["--source", str(photo), "--det", str(pedestrian_int8), "--save-images", str(tmp_path / "det"),
                       "--quiet"])  # fmt: skip
    assert boxes.frames == 1 and boxes.classes == {"person": 1}  # the box's legend entry: the int8 file found her
    assert "(--det LiteRT int8, CPU; --batch-size 1" in capsys.readouterr().out  # the summary says what ran
    masks = video.run(["--source", str(photo), "--seg", str(deeplab_int8), "--save-images", str(tmp_path / "seg"),
                       "--quiet"])  # fmt: skip
    assert "person" in masks.classes  # the int8 DeepLab's mask marks her too
    capsys.readouterr()
    with pytest.raises(SystemExit) as exit_info:  # a detector passed as the segmenter: one line, exit 2
        video.run(["--source", str(photo), "--seg", str(pedestrian_int8), "--save-images", str(tmp_path / "bad"),
                   "--quiet"])  # fmt: skip
    assert exit_info.value.code == 2 and "an SSDLite (boxes): pass it as --det" in capsys.readouterr().err


@needs_converter
@pytest.mark.slow
def test_a_collapsed_quantisation_is_refused_and_nothing_is_written(deeplab_int8, tmp_path, monkeypatch,
                                                                    assets_dir) -> None:  # fmt: skip
    """The file is right, the model it is checked against is not: as if quantisation had broken the network."""
    graph = load_graph("deeplab_coral_voc")
    with torch.no_grad():
        for parameter in list(graph.model.parameters())[-2:]:  # the last layer's weight and bias, negated
            parameter.mul_(-1.0)
    monkeypatch.setattr(export_litert, "convert", lambda graph, calibration: deeplab_int8.read_bytes())
    target = tmp_path / "coral_int8.tflite"
    target.write_bytes(b"previous export")
    image = read_image(asset(assets_dir, f"voc_samples/JPEGImages/{VOC_SAMPLES[0]}.png"))
    with pytest.raises(VerificationError) as error:
        export_litert.export_tflite(graph, target, [image], "test", [image])
    assert "FAIL" in format_table(error.value.checks)
    assert target.read_bytes() == b"previous export" and sorted(p.name for p in tmp_path.iterdir()) == [target.name]


def test_metadata_round_trip_keeps_the_file_runnable(assets_dir, tmp_path) -> None:
    Interpreter = pytest.importorskip("ai_edge_litert.interpreter", reason="pip install -e '.[mobile]'").Interpreter

    content = asset(assets_dir, GOOGLE_DEEPLAB).read_bytes()
    anchors = np.arange(12, dtype=np.float32).reshape(3, 4)
    tagged = embed_metadata(content, {"arch": "deeplab", "class_names": ["background", "cat"]}, anchors)
    path = tmp_path / "tagged.tflite"
    path.write_bytes(tagged)
    metadata, read_anchors = read_tflite_metadata(path)
    assert metadata["class_names"] == ["background", "cat"] and np.array_equal(read_anchors, anchors)
    outputs = []
    for model in (asset(assets_dir, GOOGLE_DEEPLAB), path):
        interpreter = Interpreter(str(model), num_threads=1)
        interpreter.allocate_tensors()
        detail = interpreter.get_input_details()[0]
        interpreter.set_tensor(detail["index"], np.full(detail["shape"], 100, detail["dtype"]))
        interpreter.invoke()
        outputs.append(interpreter.get_tensor(interpreter.get_output_details()[0]["index"]))
    assert np.array_equal(*outputs)


def test_a_tflite_without_our_metadata_is_named(assets_dir, tmp_path) -> None:
    pytest.importorskip("ai_edge_litert", reason="pip install -e '.[mobile]'")
    with pytest.raises(ExportError, match="without the suite's metadata.*--format tflite"):
        LiteRTModel(asset(assets_dir, GOOGLE_DEEPLAB))
    (tmp_path / "junk.tflite").write_bytes(b"not a flatbuffer at all")
    with pytest.raises(ExportError, match=r"junk.tflite: not a readable \.tflite"):
        LiteRTModel(tmp_path / "junk.tflite")


def test_the_missing_extra_is_one_line_naming_the_install(monkeypatch) -> None:
    monkeypatch.setitem(sys.modules, "litert_torch", None)  # import now raises ImportError
    with pytest.raises(ExportError, match=r"litert_torch is not installed: pip install -e '\.\[mobile\]'"):
        export_litert.convert(None, None)


@pytest.mark.parametrize(("flags", "message"), [
    (["--int8", "--calib-data", "photos/"], "--int8 and --calib-data apply to the on-device file: add --format tflite"),
    (["--format", "tflite", "--calib-data", "photos/"], "--calib-data calibrate int8 quantisation: add --int8"),
    (["--format", "tflite", "--int8", "--calib-data", "photos/", "--calib-root", "x"],
     "--calib-root is the folder of a --calib-data kind"),
    (["--format", "tflite", "--int8", "--calib-images", "0"], "--calib-images 0: give at least 1"),
])  # fmt: skip
def test_on_device_flags_are_checked(flags, message, capsys) -> None:
    with pytest.raises(SystemExit) as exit_info:
        export_tool.main(["x.pt", *flags])
    assert exit_info.value.code == 2 and message in capsys.readouterr().err


def test_calibration_sources(tmp_path) -> None:
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(UserError, match=f"--calib-data {empty}: no images"):
        calibration_images(empty)
    with pytest.raises(UserError, match="not a folder of images"):
        resolve_source(str(tmp_path / "absent"), None, None)
    with pytest.raises(UserError, match="--calib-data coco needs --calib-root"):
        resolve_source("coco", None, None)
    folder = tmp_path / "photos"
    (folder / "sub").mkdir(parents=True)
    for i in range(10):
        Image.fromarray(np.full((8, 8, 3), i * 20, np.uint8)).save(folder / ("sub" if i % 2 else ".") / f"{i}.png")
    picked = calibration_images(folder, 4)
    assert len(picked) == 4 and len({int(p[0, 0, 0]) for p in picked}) == 4  # spread, not the first four twice
    trained = {"data": "custom", "train_images": str(folder)}
    assert resolve_source(None, None, trained) == (folder, "the checkpoint's training data")
    coco = tmp_path / "coco"
    (coco / "train2017").mkdir(parents=True)
    assert training_folder({"data": "coco", "data_root": str(coco)}) == coco / "train2017"
    assert training_folder({"data": "voc", "data_root": str(coco)}) is None  # not here: the default takes over
    drawn = tmp_path / "synthetic"
    (drawn / "coco" / "train").mkdir(parents=True)
    assert training_folder({"data": "synthetic", "data_root": str(drawn)}) == drawn / "coco" / "train"
    assert training_folder({"data": "synthetic", "data_root": str(tmp_path / "gone")}) is None
    assert training_folder(None) is None
    (folder / "broken.jpg").write_bytes(b"\xff\xd8 truncated")
    with pytest.raises(UserError, match="broken.jpg"):
        calibration_images(folder, 100)
