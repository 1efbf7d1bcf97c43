"""Fine-tuning rules (train/transfer.py) and --freeze (train/batchnorm.py) on tiny models: which tensors are kept,
how class rows follow class names, and the errors a wrong source gives."""

from __future__ import annotations

import argparse
import dataclasses

import pytest
import torch
from tolerances import float32_close

from backbone.mobilenetv2 import NUM_BLOCKS
from common.errors import WeightsError
from deeplab_mobile.model import build_deeplab
from deeplab_mobile.presets import get_preset as get_deeplab_preset
from ssdlite.model import SSDLite
from ssdlite.presets import SSDLITE_TF_COCO300
from train.batchnorm import block_count, freeze_backbone
from train.transfer import load_source, preset_like_source, transfer_weights

TINY = dataclasses.replace(SSDLITE_TF_COCO300, image_size=(64, 64), width_mult=0.35)
COCO_LIKE = ["background", "person", "car", "bicycle", "dog"]
NARROW_DEEPLAB = get_deeplab_preset("mnv2_os16").derive(width_mult=0.35)


def _ssdlite(names, seed, **changes) -> SSDLite:
    torch.manual_seed(seed)
    return SSDLite(dataclasses.replace(TINY, num_classes=len(names), **changes)).eval()


def _checkpoint(model, names, arch="ssdlite") -> dict:
    config = model.preset.to_config() if arch == "ssdlite" else dict(model.config)
    return {"arch": arch, "config": config, "model": model.state_dict(), "class_names": names}


@pytest.fixture(scope="module")
def source():
    model = _ssdlite(COCO_LIKE, seed=1)
    with torch.no_grad():  # distinct values everywhere, so a row copied to the wrong place shows
        for p in model.parameters():
            p.copy_(torch.randn_like(p) * 0.1)
    return model, _checkpoint(model, COCO_LIKE)


@pytest.mark.numeric
def test_ssdlite_keeps_everything_that_fits_and_maps_class_rows_by_name(source):
    model, checkpoint = source
    target_names = ["background", "Person", "bicycle", "dog", "kite"]  # case differs; kite is new; car unused
    target = _ssdlite(target_names, seed=2)
    fresh = {k: v.clone() for k, v in target.state_dict().items()}
    report = transfer_weights(target, target_names, checkpoint, "coco.pt")

    assert report.class_rows == ["background ← background", "Person ← person", "bicycle ← bicycle", "dog ← dog"]
    assert report.new_classes == ["kite"] and report.unused_classes == ["car"]
    assert report.row_mapped == 12  # weight and bias of the six maps' class predictors
    assert report.transferred == report.total - 12 and not report.reinitialised
    own = target.state_dict()
    for key, value in model.state_dict().items():
        if ".cls." in key and key.endswith(("conv.weight", "conv.bias")):
            continue
        assert torch.equal(own[key], value), key
    # Same input → the mapped classes score exactly as in the source, anchor by anchor; kite keeps its fresh rows.
    images = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        _, theirs = model(images)
        _, ours = target(images)
    # Everything up to the class predictors is the same computation; their 1×1 convs hold the rows in another order,
    # which kernels may block apart: one layer of float32 summation order.
    terms = max(branch.conv.weight[0].numel() for branch in target.head.cls)
    for t, s in ((0, 0), (1, 1), (2, 3), (3, 4)):
        torch.testing.assert_close(ours[..., t], theirs[..., s], **float32_close(1, terms, theirs.abs().max().item()))
    kite = next(k for k in own if ".cls." in k and k.endswith("conv.bias"))
    rows = own[kite].shape[0] // 5
    assert torch.equal(own[kite].view(rows, 5)[:, 4], fresh[kite].view(rows, 5)[:, 4])
    summary = report.summary()
    assert summary.startswith(f"Transferred {report.transferred}/{report.total} tensors (+12") and "kite" in summary


def test_other_anchors_per_location_reinitialise_box_predictors_and_say_so(source):
    _, checkpoint = source
    target = _ssdlite(COCO_LIKE, seed=2, aspect_ratios=(1.0, 2.0, 0.5))  # 4 boxes per cell instead of 6
    fresh = {k: v.clone() for k, v in target.state_dict().items()}
    report = transfer_weights(target, COCO_LIKE, checkpoint, "coco.pt")
    assert len(report.reinitialised) == 5 and "6 anchors per location in the source, 4 here" in report.reinitialised[0]
    own = target.state_dict()
    assert torch.equal(own["head.box.1.conv.weight"], fresh["head.box.1.conv.weight"])
    assert torch.equal(own["head.box.0.conv.weight"], checkpoint["model"]["head.box.0.conv.weight"])  # 3 both
    assert torch.equal(own["head.box.1.depthwise.conv.weight"], checkpoint["model"]["head.box.1.depthwise.conv.weight"])


def test_a_segmenter_starts_from_a_detectors_backbone_and_says_so(source):
    model, checkpoint = source
    target = build_deeplab(NARROW_DEEPLAB, num_classes=3)
    report = transfer_weights(target, ["background", "person", "dog"], checkpoint, "coco.pt")
    own, theirs = target.state_dict(), model.state_dict()
    backbone = [k for k in own if k.startswith("backbone.") and "num_batches" not in k]
    assert report.transferred == len(backbone) and all(torch.equal(own[k], theirs[k]) for k in backbone)
    assert report.reinitialised == ["head: not in the source"]
    assert any("only its backbone" in note for note in report.notes)
    assert any("padding_mode 'tf_same'" in note for note in report.notes)  # the detector's TF padding


def test_class_rows_follow_coco_voc_aliases_in_a_segmenter():
    voc = ["background", "aeroplane", "motorbike", "tvmonitor", "sofa"]
    source = build_deeplab(NARROW_DEEPLAB, num_classes=5)
    checkpoint = _checkpoint(source, voc, arch="deeplab")
    target_names = ["background", "airplane", "tv", "couch", "Motorcycle", "zebra"]
    target = build_deeplab(NARROW_DEEPLAB, num_classes=6)
    report = transfer_weights(target, target_names, checkpoint, "voc.pt")
    weight = target.state_dict()["head.classifier.weight"]
    for t, s in ((0, 0), (1, 1), (2, 3), (3, 4), (4, 2)):
        assert torch.equal(weight[t], source.state_dict()["head.classifier.weight"][s])
    assert report.new_classes == ["zebra"] and len(report.class_rows) == 5


def test_a_background_matching_alone_starts_fresh_too(source):
    _, checkpoint = source
    shapes = ["background", "circle", "ring"]
    target = _ssdlite(shapes, seed=2)
    fresh = target.state_dict()["head.cls.0.conv.bias"].clone()
    report = transfer_weights(target, shapes, checkpoint, "coco.pt")
    assert report.class_rows == [] and report.new_classes == shapes and report.row_mapped == 0
    assert any("only the background matches" in note for note in report.notes)
    assert torch.equal(target.state_dict()["head.cls.0.conv.bias"], fresh)


def test_a_source_without_class_names_reinitialises_the_class_rows(source):
    _, checkpoint = source
    target = _ssdlite(COCO_LIKE, seed=2)
    fresh = target.state_dict()["head.cls.0.conv.weight"].clone()
    report = transfer_weights(target, COCO_LIKE, {**checkpoint, "class_names": None}, "nameless.pt")
    assert report.class_rows == [] and report.new_classes == COCO_LIKE
    assert any("no class names" in note and "re-initialised" in note for note in report.notes)
    assert torch.equal(target.state_dict()["head.cls.0.conv.weight"], fresh)


def test_another_width_or_architecture_stops_naming_both(source):
    _, checkpoint = source
    both = r"coco.pt: its detector \(SSDLite\) of width 0.35 does not fit the detector \(SSDLite\) of width 0.5"
    with pytest.raises(WeightsError, match=both):
        transfer_weights(_ssdlite(COCO_LIKE, seed=0, width_mult=0.5), COCO_LIKE, checkpoint, "coco.pt")
    with pytest.raises(WeightsError, match="without MobileNetV2 backbone weights"):
        resnet = {"arch": "resnet", "model": {"fc.weight": torch.ones(1)}}
        transfer_weights(_ssdlite(COCO_LIKE, seed=0), COCO_LIKE, resnet, "resnet.pt")


def test_unknown_weights_name_lists_the_known_ones():
    with pytest.raises(WeightsError, match="IMAGENET1K_V1"):
        load_source("no_such_weights")


def test_fine_tuning_keeps_the_sources_conventions():
    from deeplab_mobile.presets import get_preset

    tf_source = {"arch": "ssdlite", "config": TINY.to_config(), "model": {}}
    preset = preset_like_source(get_preset("mnv2_os16"), tf_source)
    assert (preset.padding_mode, preset.normalization, preset.bn_eps) == ("tf_same", "tf", 1e-3)
    assert preset.name == "mnv2_os16[padding_mode=tf_same,normalization=tf,bn_eps=0.001]"  # says what changed
    torchvision = {"features.0.0.weight": torch.ones(1)}  # a bare state dict: torchvision's conventions
    assert preset_like_source(get_preset("mnv2_os16"), torchvision) == get_preset("mnv2_os16")


def test_freeze_fixes_weights_and_batchnorm_statistics_of_the_first_blocks():
    model = _ssdlite(COCO_LIKE, seed=0)
    assert freeze_backbone(model.backbone, 2) == ["stem", "block0", "block1"]
    before = model.backbone.state_dict()
    frozen = {k: v.clone() for k, v in before.items() if k.startswith(("stem.", "blocks.0.", "blocks.1."))}
    trained = model.backbone.blocks[2].project.bn.running_mean.clone()
    model.train()
    boxes, logits = model(torch.randn(2, 3, 64, 64) * 3)
    (boxes.sum() + logits.sum()).backward()
    assert all(p.grad is None for p in model.backbone.blocks[1].parameters())
    assert model.backbone.blocks[2].project.conv.weight.grad is not None
    assert all(torch.equal(model.backbone.state_dict()[k], v) for k, v in frozen.items())
    assert not torch.equal(model.backbone.blocks[2].project.bn.running_mean, trained)


def test_freeze_flag_accepts_the_backbones_blocks_only():
    assert block_count(str(NUM_BLOCKS)) == NUM_BLOCKS
    for bad in (str(NUM_BLOCKS + 1), "-1", "two"):
        with pytest.raises(argparse.ArgumentTypeError):
            block_count(bad)
    from train.ssdlite import build_parser

    with pytest.raises(SystemExit) as exit_info:
        build_parser().parse_args(["--freeze", str(NUM_BLOCKS + 1)])
    assert exit_info.value.code == 2
