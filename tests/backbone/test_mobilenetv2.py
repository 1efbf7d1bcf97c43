"""MobileNetV2 structure: Table 2 shapes, width rounding, output stride, taps, padding, BN options,
and numerical identity with torchvision given the same weights."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
import torchvision
from tolerances import float32_close, layer_stats
from torch import nn

from backbone import MobileNetV2, TFSamePad2d, dilation_schedule, make_divisible
from backbone.checkpoint import load_state_dict_checked
from backbone.mobilenet_weights import from_torchvision


def randomise_bn_stats(model: nn.Module, seed: int = 0) -> None:
    """Fresh models have mean 0 / var 1 BN stats, which would hide a wrongly mapped BN; scramble them."""
    g = torch.Generator().manual_seed(seed)
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.copy_(torch.randn(m.num_features, generator=g) * 0.1)
            m.running_var.copy_(torch.rand(m.num_features, generator=g) + 0.5)
            m.weight.data.copy_(torch.rand(m.num_features, generator=g) + 0.5)
            m.bias.data.copy_(torch.randn(m.num_features, generator=g) * 0.1)


@pytest.fixture(scope="module")
def torchvision_pair():
    torch.manual_seed(0)
    reference = torchvision.models.mobilenet_v2().eval()
    randomise_bn_stats(reference)
    ours = MobileNetV2().eval()
    load_state_dict_checked(ours, from_torchvision(reference.state_dict()), "torchvision")
    return reference, ours


def test_parameter_count_matches_torchvision():
    assert sum(p.numel() for p in MobileNetV2().parameters()) == 3_504_872


def test_table2_channels_and_strides():
    model = MobileNetV2()
    assert model.stem.conv.out_channels == 32 and model.stem.conv.stride == (2, 2)
    outs = [b.out_channels for b in model.blocks]
    assert outs == [16, 24, 24, 32, 32, 32, 64, 64, 64, 64, 96, 96, 96, 160, 160, 160, 320]
    strides = [b.depthwise.conv.stride[0] for b in model.blocks]
    assert strides == [1, 2, 1, 2, 1, 1, 2, 1, 1, 1, 1, 1, 1, 2, 1, 1, 1]
    assert [b.use_residual for b in model.blocks].count(True) == 10
    assert model.blocks[13].expanded_channels == 576
    assert model.last_conv.conv.out_channels == 1280
    # Linear bottleneck: no activation after the projection.
    assert all(not hasattr(b.project, "act") for b in model.blocks)


@pytest.mark.parametrize(
    "width, stem, last_block, last_conv",
    [(0.35, 16, 112, 1280), (0.5, 16, 160, 1280), (0.75, 24, 240, 1280), (1.0, 32, 320, 1280), (1.4, 48, 448, 1792)],
)
def test_width_multiplier_rounding(width, stem, last_block, last_conv):
    model = MobileNetV2(width_mult=width)
    assert model.stem.conv.out_channels == stem
    assert model.blocks[-1].out_channels == last_block
    assert model.last_conv.conv.out_channels == last_conv
    assert all(b.out_channels % 8 == 0 for b in model.blocks)


def test_make_divisible_never_drops_more_than_ten_percent():
    for value in range(1, 2000):
        rounded = make_divisible(value * 0.35)
        assert rounded % 8 == 0 and rounded >= 0.9 * value * 0.35


@pytest.mark.parametrize("output_stride", [8, 16, 32])
@pytest.mark.parametrize("size", [224, 300, 320, 513])
@pytest.mark.parametrize("padding_mode", ["symmetric", "tf_same"])
def test_output_stride_map_sizes(output_stride, size, padding_mode):
    model = MobileNetV2(output_stride=output_stride, num_classes=None, padding_mode=padding_mode).eval()
    with torch.no_grad():
        feats = model.forward_features(torch.zeros(1, 3, size, size), ["block13.expansion", "last_conv"])
    expected_final = math.ceil(size / output_stride)
    expected_b13 = math.ceil(size / min(output_stride, 16))
    assert feats["last_conv"].shape == (1, 1280, expected_final, expected_final)
    assert feats["block13.expansion"].shape == (1, 576, expected_b13, expected_b13)


def test_dilation_follows_tf_slim_rule():
    os16 = MobileNetV2(output_stride=16)
    got = [(b.depthwise.conv.stride[0], b.depthwise.conv.dilation[0]) for b in os16.blocks]
    assert got[13] == (1, 1)  # the de-strided layer keeps the old rate
    assert got[14:] == [(1, 2)] * 3
    assert all(d == 1 for _, d in got[:13])
    os8 = MobileNetV2(output_stride=8)
    got8 = [(b.depthwise.conv.stride[0], b.depthwise.conv.dilation[0]) for b in os8.blocks]
    assert got8[6] == (1, 1) and got8[7:13] == [(1, 2)] * 6
    assert got8[13] == (1, 2) and got8[14:] == [(1, 4)] * 3
    # Dilated 3×3 depthwise convs keep the map size: padding equals the rate.
    assert all(b.depthwise.conv.padding[0] == b.depthwise.conv.dilation[0] for b in os8.blocks)
    assert dilation_schedule([2, 2, 2], 2) == [(2, 1), (1, 1), (1, 2)]


def test_bad_arguments_are_named():
    with pytest.raises(ValueError, match="output_stride"):
        MobileNetV2(output_stride=4)
    with pytest.raises(ValueError, match="width_mult"):
        MobileNetV2(width_mult=0)
    with pytest.raises(ValueError, match="padding_mode"):
        MobileNetV2(padding_mode="same")
    with pytest.raises(ValueError, match="include_last_conv"):
        MobileNetV2(include_last_conv=False)
    with pytest.raises(ValueError, match="unknown feature tap 'block17'"):
        MobileNetV2().forward_features(torch.zeros(1, 3, 64, 64), ["block17"])


def close_to(model: nn.Module, expected: torch.Tensor) -> dict[str, float]:
    """The same layers with the same weights, computed by other kernels (explicit padding, other module order):
    float32 summation order through every layer of `model`."""
    return float32_close(*layer_stats(model), scale=expected.abs().max().item())


@pytest.mark.numeric
def test_same_outputs_as_torchvision(torchvision_pair):
    reference, ours = torchvision_pair
    x = torch.randn(2, 3, 224, 224, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        expected = reference(x)
        torch.testing.assert_close(ours(x), expected, **close_to(ours, expected))


@pytest.mark.numeric
def test_taps_equal_torchvision_intermediates(torchvision_pair):
    reference, ours = torchvision_pair
    x = torch.randn(1, 3, 320, 320, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        feats = ours.forward_features(x, ["block6", "block13.expansion", "last_conv"])
        ref_b6 = reference.features[:8](x)
        ref_b13_expansion = reference.features[14].conv[0](reference.features[:14](x))
        ref_last = reference.features(x)
    assert list(feats) == ["block6", "block13.expansion", "last_conv"]
    for name, expected in (("block6", ref_b6), ("block13.expansion", ref_b13_expansion), ("last_conv", ref_last)):
        torch.testing.assert_close(feats[name], expected, **close_to(ours, expected))
    assert ours.tap_channels("block13.expansion") == 576 and ours.tap_channels("last_conv") == 1280


def test_deeplab_style_extractor_stops_at_320_channels():
    model = MobileNetV2(output_stride=16, num_classes=None, include_last_conv=False)
    with torch.no_grad():
        out = model(torch.zeros(1, 3, 513, 513))
    assert out.shape == (1, 320, 33, 33) and model.out_channels == 320
    with pytest.raises(ValueError, match="last_conv"):
        model.forward_features(torch.zeros(1, 3, 64, 64), ["last_conv"])


@pytest.mark.parametrize("size, before, after", [(224, 0, 1), (225, 1, 1)])
def test_tf_same_padding_puts_the_odd_pixel_after(size, before, after):
    pad = TFSamePad2d(kernel_size=3, stride=2)
    x = torch.randn(1, 1, size, size)
    expected = F.pad(x, [before, after, before, after])
    assert torch.equal(pad(x), expected)


def test_tf_same_mode_differs_from_symmetric_only_by_padding():
    torch.manual_seed(0)
    symmetric = MobileNetV2(num_classes=None).eval()
    tf_same = MobileNetV2(num_classes=None, padding_mode="tf_same").eval()
    tf_same.load_state_dict(symmetric.state_dict())
    assert isinstance(tf_same.stem[0], TFSamePad2d) and tf_same.stem.conv.padding == (0, 0)
    x = torch.randn(1, 3, 224, 224)
    with torch.no_grad():
        assert not torch.allclose(symmetric(x), tf_same(x))


def test_bn_settings_and_frozen_bn():
    tf_like = MobileNetV2(bn_eps=1e-3, bn_momentum=0.003)
    bn = tf_like.blocks[3].depthwise.bn
    assert bn.eps == 1e-3 and bn.momentum == 0.003
    frozen = MobileNetV2(frozen_bn=True)
    assert not any(isinstance(m, nn.BatchNorm2d) for m in frozen.modules())
    frozen.train()
    x = torch.randn(2, 3, 96, 96)
    before = frozen.state_dict()["blocks.3.depthwise.bn.running_mean"].clone()
    frozen(x)
    assert torch.equal(before, frozen.state_dict()["blocks.3.depthwise.bn.running_mean"])
    trainable = {n for n, p in frozen.named_parameters() if p.requires_grad}
    assert not any(".bn." in n for n in trainable)


def test_backward_pass_reaches_every_parameter():
    model = MobileNetV2(width_mult=0.35, num_classes=10)
    model(torch.randn(2, 3, 64, 64)).sum().backward()
    assert all(p.grad is not None for p in model.parameters())
