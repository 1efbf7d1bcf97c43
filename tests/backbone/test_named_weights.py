"""Weights in: torchvision's checkpoints (download path and files), suite checkpoints, and the errors a
user gets for files that do not fit."""

from __future__ import annotations

import json
import urllib.error

import pytest
import torch
import torchvision

from backbone import MobileNetV2, load_checkpoint, load_pretrained, save_checkpoint
from backbone.mobilenet_weights import checkpoint_dict, mobilenet_v2_from_checkpoint
from common.errors import WeightsError


@pytest.fixture(scope="module")
def torchvision_model():
    torch.manual_seed(0)
    model = torchvision.models.mobilenet_v2().eval()
    for m in model.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.uniform_(-0.2, 0.2)
            m.running_var.uniform_(0.5, 1.5)
    return model


def test_torchvision_state_dict_file_gives_identical_outputs(tmp_path, torchvision_model):
    path = tmp_path / "mobilenet_v2-tv.pth"
    torch.save(torchvision_model.state_dict(), path)
    ours = MobileNetV2().eval()
    load_pretrained(ours, str(path))
    x = torch.randn(1, 3, 160, 160)
    with torch.no_grad():
        assert (ours(x) - torchvision_model(x)).abs().max() < 1e-5


def test_backbone_only_model_takes_classifier_weights_silently(tmp_path, torchvision_model):
    path = tmp_path / "tv.pth"
    torch.save(torchvision_model.state_dict(), path)
    features = MobileNetV2(num_classes=None, output_stride=16).eval()
    load_pretrained(features, str(path))
    assert torch.equal(features.stem.conv.weight, torchvision_model.features[0][0].weight)


def test_suite_checkpoint_round_trip(tmp_path):
    model = MobileNetV2(width_mult=0.5, num_classes=7, padding_mode="tf_same", bn_eps=1e-3)
    path = save_checkpoint(checkpoint_dict(model, source="test"), tmp_path / "runs" / "m.pt")
    rebuilt = mobilenet_v2_from_checkpoint(path)
    assert rebuilt.config == model.config
    for key, value in model.state_dict().items():
        assert torch.equal(value, rebuilt.state_dict()[key])
    assert not list(path.parent.glob("*.tmp")), "the temporary file must be renamed away"


def test_atomic_writes_are_readable_by_others(tmp_path):
    """mkstemp's temporary files are 0600; a checkpoint or report must end up 0644 like any other output."""
    from eval.segmentation_report import write_atomic

    checkpoint = save_checkpoint({"model": {}}, tmp_path / "m.pt")
    write_atomic(tmp_path / "report.md", "# report\n")
    assert oct(checkpoint.stat().st_mode & 0o777) == oct(0o644)
    assert oct((tmp_path / "report.md").stat().st_mode & 0o777) == oct(0o644)


def test_interrupted_save_leaves_no_file(tmp_path):
    class Unpicklable:
        def __reduce__(self):
            raise RuntimeError("interrupted")

    target = tmp_path / "last.pt"
    with pytest.raises(RuntimeError, match="interrupted"):
        save_checkpoint({"model": Unpicklable()}, target)
    assert not target.exists() and not list(tmp_path.iterdir())


def test_truncated_file_is_named(tmp_path, torchvision_model):
    good = tmp_path / "good.pth"
    torch.save(torchvision_model.state_dict(), good)
    truncated = tmp_path / "truncated.pth"
    truncated.write_bytes(good.read_bytes()[: good.stat().st_size // 3])
    with pytest.raises(
        WeightsError, match=r"truncated\.pth: a damaged zip archive \(a truncated copy\?\), not a PyTorch"
    ):
        load_pretrained(MobileNetV2(), str(truncated))


def test_missing_file_is_named(tmp_path):
    with pytest.raises(WeightsError, match=r"nowhere\.pt: no such file"):
        load_pretrained(MobileNetV2(), str(tmp_path / "nowhere.pt"))


def test_other_architecture_is_named(tmp_path):
    path = tmp_path / "resnet18.pth"
    torch.save(torchvision.models.resnet18().state_dict(), path)
    with pytest.raises(WeightsError, match=r"resnet18\.pth: weights do not fit MobileNetV2.*missing keys"):
        load_pretrained(MobileNetV2(), str(path))


def test_other_width_is_named(tmp_path):
    path = tmp_path / "w05.pt"
    save_checkpoint(checkpoint_dict(MobileNetV2(width_mult=0.5)), path)
    with pytest.raises(WeightsError, match=r"w05\.pt: .*\(width 1\.0\).*shape mismatches.*file \[16, 3, 3, 3\]"):
        load_pretrained(MobileNetV2(width_mult=1.0), str(path))


def test_checkpoint_of_another_head_is_named(tmp_path):
    path = tmp_path / "det.pt"
    save_checkpoint({"arch": "ssdlite", "config": {}, "model": {"head.weight": torch.zeros(1)}}, path)
    with pytest.raises(WeightsError, match=r"det\.pt: holds an SSDLite detector \(Detector, eval/coco_map\.py"):
        mobilenet_v2_from_checkpoint(path)
    with pytest.raises(WeightsError, match=r"det\.pt: a 'ssdlite' checkpoint without backbone weights"):
        load_pretrained(MobileNetV2(), str(path))


def test_pickled_code_is_refused(tmp_path):
    path = tmp_path / "evil.pt"
    torch.save({"model": {"x": torch.zeros(1)}, "callback": print}, path)
    with pytest.raises(WeightsError, match=r"evil\.pt"):
        load_checkpoint(path)


def test_tflite_files_point_to_the_converter(tmp_path):
    with pytest.raises(WeightsError, match=r"python -m tools\.import_tflite .*m\.tflite --out"):
        load_pretrained(MobileNetV2(), str(tmp_path / "m.tflite"))


def test_unknown_name_lists_the_known_ones():
    import ssdlite  # noqa: F401  (registers its named weights, as any caller holding a detector has)

    with pytest.raises(
        WeightsError,
        match=r"IMAGENET1K_V3: neither an existing file nor a known weights name "
        r"\(IMAGENET1K_V1, IMAGENET1K_V2, .*ssdlite_pedestrian",
    ):
        load_pretrained(MobileNetV2(), "IMAGENET1K_V3")


def test_a_detector_name_gives_its_backbone(tmp_path, monkeypatch):
    """A head's weights name initialises a backbone from that head's checkpoint, converted once into the cache."""
    from backbone.named_weights import file_digest
    from ssdlite import SSDLITE320_VOC, build_ssdlite, save_ssdlite
    from ssdlite.named_weights import SSDLITE_PEDESTRIAN

    monkeypatch.setenv("MNV2_CACHE", str(tmp_path))
    detector = build_ssdlite(SSDLITE320_VOC)
    save_ssdlite(detector, SSDLITE_PEDESTRIAN.checkpoint_path)  # stands in for the converted graph, with its digests
    SSDLITE_PEDESTRIAN.digests_path.write_text(
        json.dumps(
            {"checkpoint": file_digest(SSDLITE_PEDESTRIAN.checkpoint_path), "source": SSDLITE_PEDESTRIAN.source.digest}
        )
    )
    backbone = MobileNetV2(num_classes=None)
    load_pretrained(backbone, "ssdlite_pedestrian")
    assert torch.equal(backbone.stem.conv.weight, detector.backbone.stem.conv.weight)


def test_offline_download_fails_with_one_clear_message(tmp_path, monkeypatch, capsys):
    """torchvision's own download path is used; without network it must say what to do, in one line."""

    def offline(*args, **kwargs):
        raise urllib.error.URLError("[Errno -3] Temporary failure in name resolution")

    monkeypatch.setenv("TORCH_HOME", str(tmp_path))  # an empty cache forces the download path
    monkeypatch.setattr(torch.hub, "urlopen", offline)
    with pytest.raises(WeightsError) as info:
        load_pretrained(MobileNetV2(), "IMAGENET1K_V1")
    message = str(info.value)
    assert "\n" not in message
    assert "MobileNet_V2_Weights.IMAGENET1K_V1" in message and "download.pytorch.org" in message
    assert "Without internet" in message
    assert capsys.readouterr().err == "", "torch.hub's 'Downloading:' chatter must not precede the error"


def test_offline_cli_prints_one_line(tmp_path):
    """End to end through a CLI: an unreachable proxy stands in for a machine without internet."""
    import subprocess
    import sys

    from PIL import Image

    image = tmp_path / "grey.png"
    Image.new("RGB", (64, 48), (128, 128, 128)).save(image)
    env = {
        "PATH": "/usr/bin:/bin",
        "TORCH_HOME": str(tmp_path / "cache"),
        "https_proxy": "http://127.0.0.1:9",
        "HTTPS_PROXY": "http://127.0.0.1:9",
    }
    result = subprocess.run(
        [sys.executable, "-m", "demo.classify", "--weights", "IMAGENET1K_V1", str(image)],
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
    )
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: could not download torchvision"), result.stderr
