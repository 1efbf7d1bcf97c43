"""SSDLite model: shapes at 300 and 320, the paper's size figures, presets through checkpoints, errors for the
wrong checkpoint, inference on any image, and learning on one batch."""

from __future__ import annotations

import dataclasses
import math

import numpy as np
import pytest
import torch
from tolerances import FLOAT32_EPS, float32_close, layer_stats
from torch.utils.flop_counter import FlopCounterMode

from backbone import MobileNetV2, save_checkpoint
from backbone.mobilenet_weights import load_weights_file
from common.errors import WeightsError
from ssdlite import (
    PRESETS,
    SSDLITE320_COCO,
    SSDLITE_TF_COCO300,
    SSDLite,
    SSDLiteLoss,
    build_ssdlite,
    load_ssdlite,
    pad_targets,
    predict,
    save_ssdlite,
)
from ssdlite.presets import SSDLitePreset

# A small, fast variant for tests that only need a working model.
TINY = dataclasses.replace(SSDLITE320_COCO, name="tiny", num_classes=4, image_size=(64, 64), width_mult=0.35)


@pytest.fixture(scope="module")
def tiny_model():
    torch.manual_seed(0)
    return build_ssdlite(TINY, class_names=["bg", "a", "b", "c"]).eval()


@pytest.fixture(scope="module")
def decisive_model():
    """The tiny model with class predictors far from the prior, so its scores do not nearly tie and the order of
    its detections is a property of the model, not of float rounding."""
    torch.manual_seed(1)
    model = build_ssdlite(TINY).eval()
    with torch.no_grad():
        for branch in [*model.head.cls, *model.head.box]:
            branch.conv.weight.normal_(0, 0.5)
    return model


@pytest.mark.parametrize("preset, anchors", [(SSDLITE_TF_COCO300, 1917), (SSDLITE320_COCO, 2034)])
def test_output_shapes_match_anchors(preset, anchors):
    with torch.device("meta"):  # shapes only: no memory, no compute
        model = build_ssdlite(preset).eval()
        features = model.features(torch.zeros(1, 3, *preset.image_size))
        box_regression, class_logits = model.head(features)
    side = 19 if preset.image_size[0] == 300 else 20
    assert [f.shape[-1] for f in features] == [side, 10, 5, 3, 2, 1]
    assert [f.shape[1] for f in features] == [576, 1280, 512, 256, 256, 128]
    assert box_regression.shape == (1, anchors, 4) and class_logits.shape == (1, anchors, 91)
    assert model.anchors(preset.image_size).shape == (anchors, 4)


def test_paper_figures_at_320():
    """Paper Table 6: SSDLite 4.3M parameters, 0.8B multiply-adds (COCO, 91 classes, 320×320)."""
    counter = FlopCounterMode(display=False)
    with torch.device("meta"), counter:
        model = build_ssdlite(SSDLITE320_COCO).eval()
        model(torch.zeros(1, 3, 320, 320))
    params = sum(p.numel() for p in model.parameters())
    # 4,500,543, 4.7% above the paper's 4.3M: the paper does not spell out its SSDLite layer by layer, and 5% is
    # the gap this suite accepts as the same design; "0.8B" has one significant digit: ±0.05B
    assert abs(params / 4.3e6 - 1) <= 0.05, params
    assert abs(counter.get_total_flops() / 2 - 0.8e9) <= 0.05e9


def test_tf_preset_conventions():
    model = build_ssdlite(SSDLITE_TF_COCO300, num_classes=2)
    assert model.num_classes == 2 and model.preset.name == SSDLITE_TF_COCO300.name
    assert hasattr(model.backbone.stem, "pad") and hasattr(model.extras[0].depthwise, "pad")  # TF "SAME"
    assert model.backbone.stem.bn.eps == 1e-3 and model.preset.mean == (0.5, 0.5, 0.5)
    prior_logit = math.log(0.01 / 0.99)  # sigmoid(bias) = 0.01, stored as float32: one rounding
    assert all(b.conv.bias.unique().item() == pytest.approx(prior_logit, rel=FLOAT32_EPS) for b in model.head.cls)


def test_width_multiplier_scales_backbone_and_extras():
    model = build_ssdlite(dataclasses.replace(SSDLITE320_COCO, width_mult=0.5))
    assert model.backbone.stem.conv.out_channels == 16
    assert [e.expand.conv.out_channels for e in model.extras] == [256, 128, 128, 64]
    assert [e.reduce.conv.out_channels for e in model.extras] == [128, 64, 64, 32]


def test_preset_names_and_config_round_trip():
    for name, preset in PRESETS.items():
        assert preset.name == name
        assert SSDLitePreset.from_config(preset.to_config()) == preset
    with pytest.raises(ValueError, match="at least 2"):
        dataclasses.replace(SSDLITE320_COCO, num_classes=1)


# ---------------------------------------------------------------- checkpoints


def test_checkpoint_round_trip_keeps_preset_weights_and_names(tiny_model, tmp_path):
    path = save_ssdlite(tiny_model, tmp_path / "tiny.pt", epoch=3)
    model, checkpoint = load_ssdlite(path, preset="tiny", num_classes=4)
    assert model.preset == TINY and model.class_names == ["bg", "a", "b", "c"] and checkpoint["epoch"] == 3
    assert not model.training
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        for a, b in zip(model.eval()(x), tiny_model(x), strict=True):
            torch.testing.assert_close(a, b)
    # A training checkpoint yields its EMA weights, the ones the engine evaluated.
    ema = {k: v + 1 if v.is_floating_point() else v for k, v in tiny_model.state_dict().items()}
    save_checkpoint({**checkpoint, "ema": ema}, tmp_path / "train.pt")
    averaged, _ = load_ssdlite(tmp_path / "train.pt")
    raw, _ = load_ssdlite(tmp_path / "train.pt", ema=False)
    torch.testing.assert_close(averaged.head.box[0].conv.bias, tiny_model.head.box[0].conv.bias + 1)
    torch.testing.assert_close(raw.head.box[0].conv.bias, tiny_model.head.box[0].conv.bias)
    # The backbone loads from a detection checkpoint through the backbone package's own loader.
    backbone = MobileNetV2(width_mult=0.35, num_classes=None)
    load_weights_file(backbone, path)
    torch.testing.assert_close(backbone.stem.conv.weight, tiny_model.backbone.stem.conv.weight)


def test_checkpoint_errors_name_file_and_mismatch(tiny_model, tmp_path):
    path = save_ssdlite(tiny_model, tmp_path / "tiny.pt")
    before = path.read_bytes()
    with pytest.raises(
        WeightsError,
        match=r"tiny\.pt: made with preset 'tiny', which differs from 'ssdlite320_coco' in image_size: 64x64 vs 320x320",
    ):
        load_ssdlite(path, preset=SSDLITE320_COCO)
    with pytest.raises(WeightsError, match=r"tiny\.pt: has 4 classes .* but 21 were asked for"):
        load_ssdlite(path, num_classes=21)
    deeplab = save_checkpoint({"arch": "deeplab", "config": {}, "model": {}}, tmp_path / "seg.pt")
    with pytest.raises(
        WeightsError, match=r"seg\.pt: holds a Mobile DeepLabv3 segmenter \(Segmenter, .*, not an SSDLite detector"
    ):
        load_ssdlite(deeplab)
    (tmp_path / "broken.pt").write_bytes(before[: len(before) // 2])
    with pytest.raises(WeightsError, match=r"broken\.pt"):
        load_ssdlite(tmp_path / "broken.pt")
    other = build_ssdlite(dataclasses.replace(TINY, width_mult=0.5))
    other_path = save_ssdlite(other, tmp_path / "other.pt")
    checkpoint = torch.load(other_path, weights_only=True)
    checkpoint["config"] = TINY.to_config()  # config claims width 0.35, weights are width 0.5
    save_checkpoint(checkpoint, other_path)
    with pytest.raises(WeightsError, match="shape mismatches"):
        load_ssdlite(other_path)
    with pytest.raises(ValueError, match="3 class names for a model with 4 classes"):
        SSDLite(TINY, ["bg", "a", "b"])
    assert path.read_bytes() == before  # nothing overwritten by any failure


# ---------------------------------------------------------------- inference on any image


@pytest.mark.parametrize("shape", [(37, 501), (480, 640, 1), (64, 64, 3), (300, 200, 4)])
def test_predict_any_size_and_channel_count(tiny_model, shape):
    image = np.random.default_rng(0).integers(0, 256, shape, dtype=np.uint8)
    (det,) = predict(tiny_model, [image], score_threshold=0.0, detections_per_image=5)
    assert det["boxes"].shape == (5, 4) and det["labels"].min() >= 1 and det["labels"].max() < 4
    h, w = shape[:2]
    assert float(det["boxes"][:, 2].max()) <= w and float(det["boxes"][:, 3].max()) <= h


@pytest.mark.numeric
def test_predict_batches_images_of_different_sizes(decisive_model):
    """A batch gives each image the detections it gets alone: the same boxes, labels and scores, in order; the
    model comes back in the mode it was in."""
    rng = np.random.default_rng(1)
    images = [rng.integers(0, 256, s, dtype=np.uint8) for s in [(50, 70, 3), (120, 40), (64, 64, 4)]]
    decisive_model.train()
    batched = predict(decisive_model, images, score_threshold=0.0, detections_per_image=20)
    assert decisive_model.training
    decisive_model.eval()
    alone = [predict(decisive_model, [im], score_threshold=0.0, detections_per_image=20)[0] for im in images]
    # A batch is computed by other kernel blockings than one image: float32 summation order through every layer,
    # plus the box decoding's exp and scaling. Scores are probabilities (scale 1), boxes pixels (scale: the image).
    depth, terms = layer_stats(decisive_model)
    for image, a, b in zip(images, batched, alone, strict=True):
        assert len(a["scores"]) == 20
        torch.testing.assert_close(a["scores"], b["scores"], **float32_close(depth, terms))
        assert torch.equal(a["labels"], b["labels"])
        torch.testing.assert_close(
            a["boxes"], b["boxes"], **float32_close(depth + 4, terms, scale=max(image.shape[:2]))
        )
    assert predict(decisive_model, []) == []


@pytest.mark.parametrize(
    "image, message",
    [
        (np.zeros((10, 10, 2), np.uint8), r"H×W×4 \(gray, RGB, RGBA\), got \[10, 10, 2\]"),
        (np.zeros((10, 10, 3), np.float32), "8-bit image .* got float32"),
        (np.zeros((0, 10, 3), np.uint8), r"got \[0, 10, 3\]"),
        (np.zeros((2, 10, 10, 3), np.uint8), "got shape|got \\["),
        ([[0, 1]], "got list"),
    ],
)
def test_predict_rejects_unusable_images(tiny_model, image, message):
    with pytest.raises(ValueError, match=message):
        predict(tiny_model, [image])


# ---------------------------------------------------------------- learning


@pytest.mark.numeric
def test_loss_decreases_when_overfitting_one_batch():
    torch.manual_seed(0)
    model = build_ssdlite(TINY).train()
    anchors = model.anchors(TINY.image_size)
    loss_fn = SSDLiteLoss(TINY.classification)
    images = torch.randn(2, 3, *TINY.image_size)
    gt_boxes, gt_labels = pad_targets(
        [torch.tensor([[5.0, 5.0, 40.0, 45.0]]), torch.tensor([[3.0, 25.0, 28.0, 60.0], [33.0, 3.0, 60.0, 30.0]])],
        [torch.tensor([1]), torch.tensor([2, 3])],
        TINY.image_size,
    )
    optimizer = torch.optim.Adam(model.parameters(), lr=3e-3)
    losses = []
    for _ in range(12):
        out = loss_fn(*model(images), anchors, gt_boxes, gt_labels)
        optimizer.zero_grad()
        out["loss"].backward()
        optimizer.step()
        losses.append(out["loss"].item())
    # Over seeds 0-5 and ATen's default and avx2 kernels the loss ends at 0.28-0.34 of its start (0.28 for seed 0 on
    # both): 0.5 is far outside that spread, and a model that does not learn stays near 1.
    assert losses[-1] < 0.5 * losses[0], losses
