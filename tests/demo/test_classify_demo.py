"""demo/classify.py: preprocessing, and the CLI on a real photo with a checkpoint imported from TFLite."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
import torch
from PIL import Image

from common.images import normalization_stats
from demo.classify import load_classifier, main, tf_preprocess, torchvision_preprocess
from tools.import_tflite import main as import_main

ROOT = Path(__file__).resolve().parents[2]
ASSETS = Path(os.environ.get("MNV2_ASSETS", ROOT.parent / "shared" / "assets"))


def coral(name: str) -> Path:
    path = ASSETS / "coral" / name
    if not path.is_file():
        pytest.skip(f"real test asset {path} not found: put shared/assets beside the repo or set MNV2_ASSETS")
    return path


@pytest.fixture(scope="module")
def imported_checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("weights") / "mnv2_quant.pt"
    assert import_main([str(coral("mobilenet_v2_1.0_224_quant.tflite")), "--out", str(out)]) == 0
    return out


def test_tf_preprocess_crops_the_centre_square_to_minus_one_one() -> None:
    image = Image.new("RGB", (300, 200), (255, 255, 255))
    image.paste((0, 0, 0), (0, 0, 50, 200))  # a black band left of the centre square is cropped away
    x = tf_preprocess(image)
    assert x.shape == (3, 224, 224) and x.dtype == torch.float32
    assert torch.all(x == 1.0)


def test_torchvision_preprocess_uses_imagenet_statistics() -> None:
    x = torchvision_preprocess()(Image.new("RGB", (320, 240), (124, 116, 104)))  # the ImageNet mean, to whole levels
    _, std = normalization_stats("imagenet")
    assert x.shape == (3, 224, 224) and x.abs().max() <= 0.5 / 255 / min(std)  # half a level, normalised


def test_imported_checkpoint_remembers_tf_preprocessing(imported_checkpoint) -> None:
    _, preprocess = load_classifier(str(imported_checkpoint))
    assert preprocess is tf_preprocess


@pytest.mark.numeric
def test_cli_on_a_photo_with_imported_checkpoint(imported_checkpoint, tmp_path, capsys) -> None:
    photo, out = coral("parrot.jpg"), tmp_path / "top5.json"
    assert main(["--weights", str(imported_checkpoint), str(photo), "--json", str(out)]) == 0
    printed = capsys.readouterr().out
    assert str(photo) in printed and "macaw" in printed
    top = json.loads(out.read_text())["results"][0]["top"]
    # the file says macaw with 0.998; float32 summation order moves a probability by < 0.002 (half its logits'
    # float32_close bound: 53 layers, 1280 terms, logits up to 16)
    assert len(top) == 5 and top[0]["index"] == 88 and top[0]["name"] == "macaw" and top[0]["probability"] > 0.9


def test_cli_bad_weights_and_bad_image_exit_2(tmp_path, capsys) -> None:
    not_a_model = tmp_path / "noise.tflite"
    not_a_model.write_bytes(b"\x00" * 64)
    for argv in (
        ["--weights", str(not_a_model), str(coral("cat.bmp"))],
        ["--weights", str(not_a_model), str(not_a_model)],
    ):
        with pytest.raises(SystemExit) as stop:
            main(argv)
        assert stop.value.code == 2
        if argv[-1] != str(not_a_model):
            assert capsys.readouterr().err.startswith(f"error: {not_a_model}: not a TFLite model")
    err = capsys.readouterr().err
    assert err.startswith(f"error: {not_a_model}: cannot read image") and err.count("\n") == 1
