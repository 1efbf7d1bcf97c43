"""The phone file: int8 LiteRT files that MediaPipe Tasks runs as it runs Google's (uint8 image
in, labels and box decoding in the file), checked against our PyTorch `Detector` and `Segmenter` through
`mediapipe.tasks.python.vision` on the CPU, for Google's imported models and for models fine-tuned here; the
verification judges what int8 can keep (Google's own int8 DeepLab passes it, a broken file does not); calibration
never silently uses other data; the export says only its own lines; the video demo runs the files; bad input is
one clear line."""

from __future__ import annotations

import importlib.util
import re
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import torch
from asset_files import asset
from PIL import Image

from backbone.tf.tflite import read_tflite
from common.errors import UserError
from common.images import read_image
from datasets.synthetic import SYNTHETIC_CLASSES, synthetic_detection
from deeplab_mobile import Segmenter
from demo import video
from ssdlite import Detector
from tools import export as export_tool
from tools import export_litert, mediapipe_tasks
from tools.export_formats import VerificationError, format_table
from tools.export_graphs import ExportError, load_graph
from tools.litert_metadata import read_labels, read_tflite_metadata
from tools.litert_runtime import LiteRTModel, phone_input

REPO = Path(__file__).resolve().parents[2]
VOC_SAMPLES = ("vainf_1", "vainf_23", "vainf_114")
GOOGLE_DEEPLAB = "coral/deeplabv3_mnv2_pascal_quant.tflite"
needs_phone_tools = pytest.mark.skipif(
    importlib.util.find_spec("litert_torch") is None or not mediapipe_tasks.available(),
    reason="the phone toolchain is not installed: pip install -e '.[mobile]' and pip install --no-deps mediapipe",
)
# What the converter's libraries print unless silenced: absl/glog lines, the absl preamble, deprecation warnings.
NOISE = re.compile(r"^[IWEF]\d{4} |WARNING: All log messages|[Dd]eprecat|absl::")


def export_in_subprocess(*args: str) -> subprocess.CompletedProcess:
    """The CLI in its own process: the converter imports JAX, whose threads would make every later fork of this
    pytest process (DataLoader workers in the training tests) risk a deadlock."""
    result = subprocess.run([sys.executable, "-m", "tools.export", *args], cwd=REPO, capture_output=True, text=True)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    return result


@pytest.fixture(scope="module")
def calibration_folder(tmp_path_factory, assets_dir: Path) -> Path:
    """coco8's 8 photos and the coral folder's 4 JPEGs: not the VOC samples the DeepLab is scored on, nor astronaut
    and grace_hopper, whose people the detector must keep (its other checks run on every asset photo)."""
    folder = tmp_path_factory.mktemp("calibration")
    for photo in [*asset(assets_dir, "coco8/images").rglob("*.jpg"), *asset(assets_dir, "coral").glob("*.jpg")]:
        shutil.copy(photo, folder / photo.name)
    return folder


def voc_sample(assets_dir: Path, name: str) -> np.ndarray:
    return read_image(asset(assets_dir, f"voc_samples/JPEGImages/{name}.png"))


@pytest.fixture(scope="module")
def deeplab_int8(tmp_path_factory, assets_dir, calibration_folder) -> tuple[Path, str]:
    """Google's VOC DeepLab as an int8 phone file, verified on the VOC samples: (the file, what the export said)."""
    out = tmp_path_factory.mktemp("deeplab")
    images = [str(asset(assets_dir, f"voc_samples/JPEGImages/{name}.png")) for name in VOC_SAMPLES]
    said = export_in_subprocess(
        "deeplab_coral_voc",
        "--format",
        "tflite",
        "--int8",
        "--calib-data",
        str(calibration_folder),
        "--out",
        str(out),
        "--images",
        *images,
    )
    return out / "deeplab_coral_voc_int8.tflite", said.stdout + said.stderr


@pytest.fixture(scope="module")
def pedestrian_int8(tmp_path_factory, calibration_folder) -> Path:
    """Google's pedestrian SSDLite as an int8 phone file, verified on the default photos."""
    out = tmp_path_factory.mktemp("pedestrian")
    export_in_subprocess(
        "ssdlite_pedestrian", "--format", "tflite", "--int8", "--calib-data", str(calibration_folder), "--out", str(out)
    )
    return out / "ssdlite_pedestrian_int8.tflite"


def photos_of_the_assets(assets_dir: Path) -> dict[str, np.ndarray]:
    from skimage import data

    photos = {"astronaut": data.astronaut(), "grace_hopper": read_image(asset(assets_dir, "coral/grace_hopper.bmp"))}
    for name in ("coral", "coco8/images", "voc_samples/JPEGImages"):
        photos.update(
            {
                p.name: read_image(p)
                for p in sorted((assets_dir / name).rglob("*"))
                if p.suffix in (".jpg", ".png", ".bmp")
            }
        )
    return photos


@dataclass(frozen=True)
class PredictionNoise:
    """How far an int8 SSDLite file's outputs may sit from fp32's, from the file's own quantisation.

    The file computes every layer in int8 except the box and class predictors (1×1 convolutions kept in float), which
    read a dequantised int8 activation of step s (its scale, stored in the file). The noise model: each of the
    `depth` int8 layers on the way rounds to its step, an error uniform over ±step/2 (standard deviation
    step/√12), and these independent errors add in variance through BatchNorm-normalised layers, so the
    predictors' input carries a standard deviation of √depth · s/√12 per channel; a predictor row w turns it into
    ‖w‖₂ times that. Bounds are 3 standard deviations (99.7% of a normal error), with the largest s and row of the
    file (the anchor a detection comes from is not known)."""

    location: tuple[float, float]  # std of the (centre, size) codes, the largest over x and y
    logit: float  # std of a class logit

    @classmethod
    def of(cls, path: Path) -> PredictionNoise:
        model = read_tflite(path)
        consumers: dict[int, list] = {}
        for op in model.operators:
            for tensor in op.inputs:
                if tensor is not None:
                    consumers.setdefault(tensor.index, []).append(op)
        outputs = {tensor.index: name for tensor, name in zip(model.outputs, ("location", "score"), strict=True)}
        depth = sum(op.outputs[0].type_name == "INT8" for op in model.operators if "CONV" in op.name)
        rows: dict[str, list[np.ndarray]] = {"location": [], "score": []}
        for op in model.operators:
            source = model.producer(op.inputs[0]) if op.name == "CONV_2D" else None
            if source is None or source.name != "DEQUANTIZE":
                continue
            step = float(source.inputs[0].scale.max())
            weight = model.constant_source(op.inputs[1]).dequantize()
            norms = np.linalg.norm(weight.reshape(weight.shape[0], -1), axis=1)
            rows[_reached_output(op, consumers, outputs)].append(np.sqrt(depth) * step / np.sqrt(12) * norms)
        location = np.concatenate(rows["location"]).reshape(-1, 4)  # rows per anchor: (x, y, w, h) codes
        return cls(
            (float(location[:, :2].max()), float(location[:, 2:].max())), float(np.max(np.concatenate(rows["score"])))
        )

    def box_px(self, box: np.ndarray, scale_in: float, coder: tuple[float, float] = (10.0, 5.0)) -> float:
        """The most an edge of `box` (x0, y0, x1, y1 in image pixels) may move: the centre moves by δt/10 of the
        anchor, the size by δt/5 of the box, half of it at each edge; plus 1 px for MediaPipe's integer pixel
        coordinates and half an input pixel (`scale_in` image pixels) for the resize's pixel-centre convention,
        which MediaPipe and TensorFlow's bilinear place differently. Training matches a box to anchors overlapping
        it by IoU >= 0.5, so an anchor is at most twice the box's size along a side: the centre term takes 2×."""
        size = float(np.max(box[2:] - box[:2]))
        centre, extent = 2.0 * self.location[0] / coder[0], self.location[1] / coder[1] / 2
        return 3.0 * size * float(np.hypot(centre, extent)) + 1.0 + 0.5 * scale_in

    def score(self, classification: str) -> float:
        """The most a score may move: a sigmoid's slope is at most 1/4; a softmax probability moves at most 1/2 of
        the largest logit change (its Jacobian's rows sum to 2·p·(1-p) in absolute value)."""
        return 3.0 * self.logit * (0.25 if classification == "sigmoid" else 0.5)


def _reached_output(op, consumers: dict[int, list], outputs: dict[int, str]) -> str:
    """The graph output ("location" or "score") that `op`'s result flows into."""
    frontier = [op]
    while frontier:
        current = frontier.pop()
        for tensor in current.outputs:
            if tensor.index in outputs:
                return outputs[tensor.index]
            frontier += consumers.get(tensor.index, [])
    raise AssertionError(f"operator {op.index} reaches no output")


def assert_detector_agrees(
    path: Path, checkpoint: str | Path, photos: dict[str, np.ndarray], targets: list[str]
) -> None:
    """ObjectDetector on the file against eager PyTorch decoded as MediaPipe decodes (the export's own reference):
    every clear detection kept and none gained on any photo (the export's rule), class names read from the file;
    and on the `targets` photos where the PyTorch `Detector`'s best scores >= 0.5, MediaPipe's best detection within
    the box and score bounds of the file's own quantisation (PredictionNoise)."""
    images, detector = list(photos.values()), Detector.from_pretrained(checkpoint)
    found = mediapipe_tasks.detect(path, images, score_threshold=0.01)
    reference = export_litert.mediapipe_reference(load_graph(checkpoint), images, 0.01)
    verdicts = export_litert.detections_agree(
        reference, [export_litert.as_detections(f, detector.class_names) for f in found]
    )
    noise, confident = PredictionNoise.of(path), 0
    for name, ours, theirs, (agrees, summary) in zip(
        photos, detector(images, score_threshold=0.3), found, verdicts, strict=True
    ):
        assert agrees, f"{name}: {summary}"
        assert set(theirs["names"]) <= set(detector.class_names[1:]), theirs["names"]
        if name in targets and len(ours.scores) and ours.scores[0] >= export_litert.SCORE_THRESHOLD:
            confident += 1
            assert len(theirs["scores"]) and theirs["names"][0] == ours.names[0], name
            scale_in = max(photos[name].shape[:2]) / min(detector.preset.image_size)
            box_bound, score_bound = noise.box_px(ours.boxes[0], scale_in), noise.score(detector.preset.classification)
            box_gap, score_gap = (
                np.abs(theirs["boxes"][0] - ours.boxes[0]).max(),
                abs(theirs["scores"][0] - ours.scores[0]),
            )
            assert box_gap <= box_bound, (name, theirs["boxes"][0], ours.boxes[0], box_bound)
            assert score_gap <= score_bound, (name, theirs["scores"][0], ours.scores[0], score_bound)
    assert confident or not targets, (
        f"no confident detection on any of {targets}: the close comparison compared nothing"
    )


def assert_segmenter_agrees(path: Path, segmenter: Segmenter, images: list[np.ndarray]) -> None:
    """ImageSegmenter's category mask on the file equals the PyTorch `Segmenter`'s on >= 98% of each image."""
    for i, (theirs, ours) in enumerate(zip(mediapipe_tasks.segment(path, images), segmenter(images), strict=True)):
        assert theirs.shape == ours.shape
        assert (theirs == ours).mean() >= 0.98, f"image {i}: {100 * (theirs == ours).mean():.2f}% of pixels agree"


@needs_phone_tools
@pytest.mark.slow
@pytest.mark.numeric
def test_mediapipe_object_detector_runs_the_int8_pedestrian_file(pedestrian_int8, pedestrian, assets_dir) -> None:
    assert read_labels(pedestrian_int8) == ["person"]  # the label file MediaPipe and Android Studio read
    assert_detector_agrees(
        pedestrian_int8,
        pedestrian,
        photos_of_the_assets(assets_dir),
        targets=["astronaut", "grace_hopper"],
    )


@needs_phone_tools
@pytest.mark.slow
@pytest.mark.numeric
def test_mediapipe_image_segmenter_runs_the_int8_coral_file(deeplab_int8, assets_dir) -> None:
    path, _ = deeplab_int8
    segmenter = Segmenter.from_pretrained("deeplab_coral_voc")
    assert read_labels(path) == segmenter.class_names
    assert_segmenter_agrees(path, segmenter, [voc_sample(assets_dir, name) for name in VOC_SAMPLES])


@needs_phone_tools
@pytest.mark.slow
@pytest.mark.numeric
def test_models_fine_tuned_here_ship_to_mediapipe(demo_run, learning_set) -> None:
    """The two checks above for the 5-class models the session's demo run fine-tuned and shipped (calibrated on
    their own training images, which the export found from the checkpoint), on 8 val images."""
    val = synthetic_detection(learning_set, "val").records[:8]
    images = {record.path.name: read_image(record.path) for record in val}
    detector_file, segmenter_file = (demo_run / "phone" / f"{name}_int8.tflite" for name in ("ssdlite", "deeplab"))
    assert read_labels(detector_file) == list(SYNTHETIC_CLASSES)
    # no close comparison: the session's 2-epoch detector scores below 0.5 on these images (the rule still runs)
    assert_detector_agrees(detector_file, demo_run / "train" / "ssdlite" / "best.pt", images, targets=[])
    assert read_labels(segmenter_file) == ["background", *SYNTHETIC_CLASSES]
    assert "the checkpoint's training data" in read_tflite_metadata(segmenter_file)[0]["calibration"]
    # the export's rule (decided pixels), not 98% of all: a briefly trained model has many near-tied pixels
    graph = load_graph(demo_run / "train" / "deeplab" / "best.pt")
    probabilities = export_litert.fp32_probabilities(graph, list(images.values()), stretched=True)
    for name, p, mask in zip(
        images, probabilities, mediapipe_tasks.segment(segmenter_file, list(images.values())), strict=True
    ):
        agrees, summary = export_litert.masks_agree(p, mask)
        assert agrees, f"{name}: {summary}"


@needs_phone_tools
@pytest.mark.slow
def test_the_export_prints_only_its_own_lines(deeplab_int8) -> None:
    _, said = deeplab_int8
    assert not [line for line in said.splitlines() if NOISE.search(line)], said
    assert "calibrating on 12 images" in said and "tflite int8 MediaPipe" in said  # both runtimes' checks in the table


@pytest.mark.numeric
def test_googles_int8_deeplab_passes_the_verification_against_our_fp32(assets_dir) -> None:
    """The bound judges what int8 can keep: Google's own quantised file (quantisation-aware trained) agrees with
    our fp32 import where fp32 is decided, on the default photos and the VOC samples."""
    interpreter_module = pytest.importorskip("ai_edge_litert.interpreter", reason="pip install -e '.[mobile]'")
    from skimage import data

    graph = load_graph("deeplab_coral_voc")
    google = interpreter_module.Interpreter(str(asset(assets_dir, GOOGLE_DEEPLAB)), num_threads=2)
    google.allocate_tensors()
    images = [data.astronaut(), data.coffee(), data.chelsea(), *[voc_sample(assets_dir, n) for n in VOC_SAMPLES]]
    metadata = {**graph.metadata(), "input": "uint8 NHWC"}
    for image, probabilities in zip(
        images, export_litert.fp32_probabilities(graph, images, stretched=False), strict=True
    ):
        pixels, (h, w) = phone_input(image, metadata)  # Google's input: resized, padded with the mean colour
        google.set_tensor(google.get_input_details()[0]["index"], pixels[None])
        google.invoke()
        labels = google.get_tensor(google.get_output_details()[0]["index"])[0][:h, :w]
        mask = np.asarray(Image.fromarray(labels.astype(np.uint8)).resize(image.shape[1::-1], Image.NEAREST))
        agrees, summary = export_litert.masks_agree(probabilities, mask)
        assert agrees, summary


@needs_phone_tools
@pytest.mark.slow
def test_a_collapsed_quantisation_is_refused_and_nothing_is_written(
    deeplab_int8, tmp_path, monkeypatch, assets_dir
) -> None:
    """The file is right, the model it is checked against is not: as if quantisation had broken the network."""
    graph = load_graph("deeplab_coral_voc")
    with torch.no_grad():
        for parameter in list(graph.model.parameters())[-2:]:  # the last layer's weight and bias, negated
            parameter.mul_(-1.0)
    monkeypatch.setattr(export_litert, "convert", lambda graph, calibration: deeplab_int8[0].read_bytes())
    monkeypatch.setattr(export_litert, "phone_file", lambda content, *metadata: content)  # it has its metadata
    target = tmp_path / "coral_int8.tflite"
    target.write_bytes(b"previous export")
    image = voc_sample(assets_dir, VOC_SAMPLES[0])
    with pytest.raises(VerificationError) as error:
        export_litert.export_tflite(graph, target, [image], "test", [image])
    assert "FAIL" in format_table(error.value.checks)
    assert target.read_bytes() == b"previous export" and sorted(p.name for p in tmp_path.iterdir()) == [target.name]


@needs_phone_tools
@pytest.mark.slow
def test_video_demo_runs_the_int8_files(pedestrian_int8, deeplab_int8, tmp_path, capsys) -> None:
    import cv2
    from skimage import data

    photo = tmp_path / "astronaut.png"
    cv2.imwrite(str(photo), cv2.cvtColor(data.astronaut(), cv2.COLOR_RGB2BGR))
    boxes = video.run(
        ["--source", str(photo), "--det", str(pedestrian_int8), "--save-images", str(tmp_path / "det"), "--quiet"]
    )
    assert boxes.frames == 1 and boxes.classes == {"person": 1}  # the box's legend entry: the int8 file found her
    assert "(--det LiteRT int8, CPU; --batch-size 1" in capsys.readouterr().out  # the summary says what ran
    masks = video.run(
        ["--source", str(photo), "--seg", str(deeplab_int8[0]), "--save-images", str(tmp_path / "seg"), "--quiet"]
    )
    assert "person" in masks.classes  # the int8 DeepLab's mask marks her too
    capsys.readouterr()
    with pytest.raises(SystemExit) as exit_info:  # a detector passed as the segmenter: one line, exit 2
        video.run(
            ["--source", str(photo), "--seg", str(pedestrian_int8), "--save-images", str(tmp_path / "bad"), "--quiet"]
        )
    assert exit_info.value.code == 2 and "an SSDLite (boxes): pass it as --det" in capsys.readouterr().err


def test_an_imported_model_without_calibration_data_stops_at_once_naming_the_flag(tmp_path) -> None:
    """The README's phone command, as a new user types it without --calib-data: one line, exit 2, nothing written
    (no minutes of conversion first)."""
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "tools.export",
            "deeplab_coral_voc",
            "--format",
            "tflite",
            "--int8",
            "--out",
            str(tmp_path),
        ],
        cwd=REPO,
        capture_output=True,
        text=True,
    )
    assert result.returncode == 2 and "--calib-data" in result.stderr, result.stderr
    assert len(result.stderr.strip().splitlines()) == 1 and not list(tmp_path.iterdir())


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


@pytest.mark.parametrize(
    ("flags", "message"),
    [
        (
            ["--int8", "--calib-data", "photos/"],
            "--int8 and --calib-data apply to the on-device file: add --format tflite",
        ),
        (["--format", "tflite", "--calib-data", "photos/"], "--calib-data calibrate int8 quantisation: add --int8"),
        (
            ["--format", "tflite", "--int8", "--calib-data", "photos/", "--calib-root", "x"],
            "--calib-root is the folder of a --calib-data kind",
        ),
        (["--format", "tflite", "--int8", "--calib-images", "0"], "--calib-images 0: give at least 1"),
    ],
)
def test_on_device_flags_are_checked(flags, message, capsys) -> None:
    with pytest.raises(SystemExit) as exit_info:
        export_tool.main(["x.pt", *flags])
    assert exit_info.value.code == 2 and message in capsys.readouterr().err


def test_calibration_sources(tmp_path) -> None:
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(UserError, match=f"--calib-data {empty}: no images"):
        export_litert.calibration_images(empty)
    with pytest.raises(UserError, match="not a folder of images"):
        export_litert.calibration_set(str(tmp_path / "absent"), None, {})
    with pytest.raises(UserError, match="--calib-data coco needs --calib-root"):
        export_litert.calibration_set("coco", None, {})
    with pytest.raises(UserError, match="an imported model records no training data.*--calib-data"):
        export_litert.calibration_set(None, None, {"args": None})
    folder = tmp_path / "photos"
    (folder / "sub").mkdir(parents=True)
    for i in range(10):
        Image.fromarray(np.full((8, 8, 3), i * 20, np.uint8)).save(folder / ("sub" if i % 2 else ".") / f"{i}.png")
    picked = export_litert.calibration_images(folder, 4)
    assert len(picked) == 4 and len({int(p[0, 0, 0]) for p in picked}) == 4  # spread, not the first four twice
    trained = {"data": "custom", "train_images": str(folder)}
    images, source = export_litert.calibration_set(None, None, {"args": trained}, 3)
    assert len(images) == 3 and source == f"{folder}, the checkpoint's training data"
    with pytest.raises(UserError, match="is not here: pass --calib-data"):
        export_litert.calibration_set(None, None, {"args": {"data": "custom", "train_images": str(tmp_path / "gone")}})
    coco = tmp_path / "coco"
    (coco / "train2017").mkdir(parents=True)
    assert export_litert.training_folder({"data": "coco", "data_root": str(coco)}) == coco / "train2017"
    assert export_litert.training_folder({"data": "voc", "data_root": str(coco)}) is None  # not here
    drawn = tmp_path / "synthetic"
    (drawn / "coco" / "train").mkdir(parents=True)
    assert export_litert.training_folder({"data": "synthetic", "data_root": str(drawn)}) == drawn / "coco" / "train"
    assert export_litert.training_folder({"data": "synthetic", "data_root": str(tmp_path / "gone")}) is None
    (folder / "broken.jpg").write_bytes(b"\xff\xd8 truncated")
    with pytest.raises(UserError, match="broken.jpg"):
        export_litert.calibration_images(folder, 100)
