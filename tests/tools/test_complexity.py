"""Parameter and multiply-add counts against the published figures (tools/complexity.py)."""

from __future__ import annotations

import json

import pytest
from torch import nn

from backbone import MobileNetV2
from tools.complexity import DETECTION_ROWS, GRID_ROWS, SEGMENTATION_ROWS, main, measure


def test_mobilenet_v2_1_0_at_224_is_the_papers_model():
    c = measure(MobileNetV2(), (224, 224))
    assert c.params == 3_504_872
    assert 0 <= c.madds / 1e6 - 300 < 1.0  # the paper's 300M is TF-slim's figure, floored to whole millions


@pytest.mark.parametrize("ref", GRID_ROWS, ids=lambda r: f"{r.name}@{r.input_size[0]}")
def test_width_resolution_grid_matches_tf_slim(ref):
    """TF-slim's table floors MACs to whole millions and counts params without BN, rounded to 0.01M."""
    model = ref.build()
    c = measure(model, ref.input_size)
    assert 0 <= c.madds / 1e6 - ref.madds_m < 1.0
    bn = sum(p.numel() for m in model.modules() if isinstance(m, nn.BatchNorm2d) for p in m.parameters())
    assert abs((c.params - bn) / 1e6 - ref.params_m) <= 0.005


def test_ssdlite_320_is_the_papers_row():
    ref = DETECTION_ROWS[0]
    c = measure(ref.build(), ref.input_size)
    # 4,500,543 here, 4.7% above the paper's 4.3M: the paper does not spell out its SSDLite layer by layer, and 5%
    # is the gap this suite accepts as the same design
    assert c.params == pytest.approx(4.3e6, rel=0.05)
    assert c.madds == pytest.approx(0.8e9, abs=0.05e9)  # "0.8B": one significant digit


def test_mobile_deeplabv3_os16_is_the_papers_row():
    ref = SEGMENTATION_ROWS[0]
    c = measure(ref.build(), ref.input_size)
    assert c.params == pytest.approx(2.11e6, abs=0.005e6)  # "2.11M": three significant digits
    # 2.741B here: 0.3% under the paper's 2.75B, more than its rounding; the paper does not say what it counts
    # beyond the convolutions (resizes, pooling), and 1% allows one such term
    assert c.madds == pytest.approx(2.75e9, rel=0.01)
    os8 = measure(SEGMENTATION_ROWS[1].build(), (513, 513))
    assert os8.params == c.params and os8.madds > 3 * c.madds  # OS8 quadruples the late maps, same weights


def test_cli_writes_markdown_and_json(tmp_path, capsys):
    main(["--width", "0.5", "--size", "160", "--markdown", str(tmp_path / "t.md"), "--json", str(tmp_path / "t.json")])
    record = json.loads((tmp_path / "t.json").read_text())[0]
    assert record["params"] == 1_968_680 and 50e6 <= record["madds"] < 51e6
    assert "| MobileNetV2 0.5 OS32 | 160×160 | 1,968,680 |" in (tmp_path / "t.md").read_text()
    assert "1,968,680" in capsys.readouterr().out


def test_cli_rejects_a_tiny_input(capsys):
    with pytest.raises(SystemExit):
        main(["--width", "1.0", "--size", "8"])
    assert "--size 8 is too small" in capsys.readouterr().err
