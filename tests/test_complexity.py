"""Parameter and multiply-add counts against the published figures (tools/complexity.py)."""

from __future__ import annotations

import json

import pytest

from backbone import MobileNetV2
from tools.complexity import DETECTION_ROWS, GRID_ROWS, SEGMENTATION_ROWS, main, measure


def test_mobilenet_v2_1_0_at_224_is_the_papers_model():
    c = measure(MobileNetV2(), (224, 224))
    assert c.params == 3_504_872
    assert c.madds == pytest.approx(300e6, rel=0.01)


@pytest.mark.parametrize("ref", GRID_ROWS, ids=lambda r: f"{r.name}@{r.input_size[0]}")
def test_width_resolution_grid_matches_tf_slim(ref):
    """TF-slim's table floors MACs to whole millions and counts params without BN (≈1% fewer)."""
    c = measure(ref.build(), ref.input_size)
    assert 0 <= c.madds / 1e6 - ref.madds_m < 1.0
    assert c.params / (ref.params_m * 1e6) == pytest.approx(1.0, abs=0.02)


def test_ssdlite_320_is_the_papers_row():
    ref = DETECTION_ROWS[0]
    c = measure(ref.build(), ref.input_size)
    assert c.params == pytest.approx(4.3e6, rel=0.05)
    assert c.madds == pytest.approx(0.8e9, rel=0.10)


def test_mobile_deeplabv3_os16_is_the_papers_row():
    ref = SEGMENTATION_ROWS[0]
    c = measure(ref.build(), ref.input_size)
    assert c.params == pytest.approx(2.11e6, rel=0.05)
    assert c.madds == pytest.approx(2.75e9, rel=0.10)
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
