"""TFLite reader and MobileNetV2 importer against Google's real TFLite classifiers and the TFLite interpreter."""

from __future__ import annotations

import dataclasses
import io
import os
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from tolerances import float32_close, int8_bound, softmax_bound

from backbone.mobilenet_weights import mobilenet_v2_from_checkpoint
from backbone.tf import classifier as tflite_classifier
from backbone.tf.classifier import mobilenet_v2_from_tflite
from backbone.tf.tflite import Operator, Tensor, TFLiteModel, read_tflite
from common.errors import WeightsError
from demo.classify import classify, tf_preprocess
from tools.import_tflite import main

ROOT = Path(__file__).resolve().parents[2]
ASSETS = Path(os.environ.get("MNV2_ASSETS", ROOT.parent / "shared" / "assets"))
PHOTOS = ("cat.bmp", "parrot.jpg", "hot_dog.jpg", "bird.bmp", "grace_hopper.bmp")
README_TOP1 = {"cat.bmp": 285, "parrot.jpg": 88, "hot_dog.jpg": 934, "bird.bmp": 19, "grace_hopper.bmp": 667}
CLASSIFIERS = {
    "tf2_mobilenet_v2_1.0_224_ptq.tflite": README_TOP1,
    # The uint8 quantisation-aware model calls Grace Hopper 652 "military uniform" (mortarboard second); the
    # TFLite interpreter says the same under every crop/resize variant tried, so that is the file's answer.
    "mobilenet_v2_1.0_224_quant.tflite": {**README_TOP1, "grace_hopper.bmp": 652},
}


def coral(name: str) -> Path:
    path = ASSETS / "coral" / name
    if not path.is_file():
        pytest.skip(f"real test asset {path} not found: put shared/assets beside the repo or set MNV2_ASSETS")
    return path


@pytest.fixture(scope="module", params=sorted(CLASSIFIERS))
def classifier(request: pytest.FixtureRequest) -> tuple[Path, torch.nn.Module]:
    path = coral(request.param)
    return path, mobilenet_v2_from_tflite(path)


@pytest.fixture(scope="module")
def photos() -> dict[str, Image.Image]:
    return {name: Image.open(coral(name)).convert("RGB") for name in PHOTOS}


def test_reader_matches_interpreter_tensor_for_tensor() -> None:
    """Names, shapes, raw constants and per-channel quantisation equal what the TFLite runtime loads."""
    from ai_edge_litert.interpreter import Interpreter

    path = coral("tf2_mobilenet_v2_1.0_224_ptq.tflite")
    graph = read_tflite(path)
    interpreter = Interpreter(str(path))
    interpreter.allocate_tensors()
    details = {d["index"]: d for d in interpreter.get_tensor_details()}
    for tensor in graph.tensors:
        d = details[tensor.index]
        assert (tensor.name, tensor.shape) == (d["name"], tuple(d["shape"]))
        np.testing.assert_array_equal(tensor.scale, d["quantization_parameters"]["scales"])
        np.testing.assert_array_equal(tensor.zero_point, d["quantization_parameters"]["zero_points"])
        if tensor.is_constant:
            np.testing.assert_array_equal(tensor.data, interpreter.get_tensor(tensor.index))

    depthwise = next(op for op in graph.operators if op.name == "DEPTHWISE_CONV_2D")
    assert depthwise.inputs[1].quantized_dimension == 3 and depthwise.inputs[1].scale.size == 32
    first = graph.operators[1]
    assert first.name == "CONV_2D"
    assert first.options["padding"] == "SAME" and first.options["fused_activation_function"] == "RELU6"
    assert (first.options["stride_h"], first.options["dilation_h_factor"]) == (2, 1)
    assert [op.name for op in graph.operators].count("CONV_2D") == 36


def test_dequantize_per_channel_axis_and_float16() -> None:
    def const(data: np.ndarray, scale=(), zero_point=(), axis=0, type_name="INT8") -> Tensor:
        return Tensor(0, "w", data.shape, type_name, np.asarray(scale, np.float32), np.asarray(zero_point), axis, data)

    q = np.arange(12, dtype=np.int8).reshape(1, 2, 2, 3)
    per_channel = const(q, scale=[1.0, 0.5, 0.25], zero_point=[0, 2, 4], axis=3).dequantize()
    np.testing.assert_array_equal(per_channel[..., 1], (q[..., 1] - 2) * 0.5)
    np.testing.assert_array_equal(per_channel[..., 2], (q[..., 2] - 4) * 0.25)
    per_tensor = const(q.astype(np.uint8), scale=[0.1], zero_point=[3], type_name="UINT8").dequantize()
    np.testing.assert_allclose(per_tensor, (q - 3) * np.float32(0.1))
    half = const(np.array([1.5, -2.0], np.float16), type_name="FLOAT16").dequantize()
    assert half.dtype == np.float32 and half.tolist() == [1.5, -2.0]


def test_constant_source_looks_through_dequantize() -> None:
    """float16 / dynamic-range files feed convs from DEQUANTIZE(constant): the importer must find the constant."""
    empty = np.zeros(0, np.float32)
    half = Tensor(0, "w_fp16", (2,), "FLOAT16", empty, empty.astype(np.int64), 0, np.array([1, 2], np.float16))
    weight = dataclasses.replace(half, index=1, name="w", type_name="FLOAT32", data=None)
    activation = dataclasses.replace(weight, index=2, name="x")
    dequantize = Operator(0, "DEQUANTIZE", {}, (half,), (weight,))
    graph = TFLiteModel(Path("f.tflite"), (half, weight, activation), (dequantize,), (), ())
    assert graph.constant_source(weight) is half and graph.constant_source(activation) is None
    assert graph.parameters() == [half]


def test_top1_on_photos(classifier, photos) -> None:
    path, model = classifier
    predictions = classify(model, list(photos.values()), tf_preprocess, top_k=1)
    assert {name: top[0].index for name, top in zip(photos, predictions, strict=True)} == CLASSIFIERS[path.name]


def test_imported_model_is_mobilenet_v2_1_0(classifier) -> None:
    _, model = classifier
    assert model.config["width_mult"] == 1.0 and model.config["padding_mode"] == "tf_same"
    assert model.config["num_classes"] == 1000
    assert sum(p.numel() for p in model.parameters()) == 3_504_872  # torchvision's count for 1.0


# The float model against the quantised file: the file's own rounding of weights and activations, as our float
# model shows it on the five photos (largest |Δlogit| in steps of the file's logit tensor, largest |Δprobability|).
# That is a property of the file and the photos, the same on every CPU; tolerances.int8_bound adds a step for
# another int8 kernel.
FILE_ROUNDING = {
    "tf2_mobilenet_v2_1.0_224_ptq.tflite": (7.4, 0.058),
    "mobilenet_v2_1.0_224_quant.tflite": (4.9, 0.039),
}


@pytest.mark.numeric
def test_agrees_with_tflite_interpreter(classifier, photos) -> None:
    """Same photo through both runtimes: our float model vs the quantised original, within the file's own rounding
    (FILE_ROUNDING) and one step of another int8 kernel, with the same top-1."""
    from ai_edge_litert.interpreter import Interpreter

    path, model = classifier
    graph = read_tflite(path)
    logits_tensor = next(op for op in graph.operators if op.name == "SOFTMAX").inputs[0]
    logit_step, prob_step = float(logits_tensor.scale[0]), float(graph.outputs[0].scale[0])
    file_steps, file_prob = FILE_ROUNDING[path.name]
    logit_bound = int8_bound(logit_step, file_steps)
    # a kernel's step in the logits moves a probability by at most half of it, and the output's rounding by a step
    prob_bound = file_prob + softmax_bound(int8_bound(logit_step, 0)) + int8_bound(prob_step, 0)
    with warnings.catch_warnings():  # preserving intermediates is a "debugging" mode: that is what this is
        warnings.simplefilter("ignore")
        interpreter = Interpreter(str(path), experimental_preserve_all_tensors=True, num_threads=1)
    interpreter.allocate_tensors()
    (inp,), (out,) = interpreter.get_input_details(), interpreter.get_output_details()
    for name, image in photos.items():
        x = tf_preprocess(image)
        scale, zero_point = inp["quantization"]
        pixels = np.clip(np.round(x.permute(1, 2, 0).numpy() / scale + zero_point), 0, 255).astype(np.uint8)
        interpreter.set_tensor(inp["index"], pixels[None])
        interpreter.invoke()
        ref_logits = _dequantized(interpreter.get_tensor(logits_tensor.index), logits_tensor).reshape(-1)[1:]
        ref_probs = _dequantized(interpreter.get_tensor(out["index"]), graph.outputs[0]).reshape(-1)[1:]
        with torch.inference_mode():
            logits = model(x[None])[0].numpy()
        probs = torch.from_numpy(logits).softmax(0).numpy()
        assert logits.argmax() == ref_logits.argmax(), name
        # corr ≈ 1 - ½(rms Δ / σ)²: the file's rounding gives ≥ 0.995 on every photo (rms Δ ≤ 0.1σ, the same on
        # every CPU); a kernel's step on every logit (step / σ ≤ 0.07 for both files) adds in quadrature:
        # corr ≥ 1 - ½(0.1² + 0.07²) = 0.9926
        assert np.corrcoef(logits, ref_logits)[0, 1] > 0.99, name
        assert np.abs(logits - ref_logits).max() <= logit_bound, name
        assert np.abs(probs - ref_probs).max() <= prob_bound, name


def _dequantized(values: np.ndarray, tensor: Tensor) -> np.ndarray:
    return dataclasses.replace(tensor, data=values).dequantize()


@pytest.mark.numeric
def test_keep_background_keeps_output_zero() -> None:
    path = coral("mobilenet_v2_1.0_224_quant.tflite")
    with_background = mobilenet_v2_from_tflite(path, drop_background=False)
    dropped = mobilenet_v2_from_tflite(path)
    assert with_background.config["num_classes"] == 1001
    x = torch.rand(1, 3, 96, 96) * 2 - 1
    with torch.inference_mode():
        expected = dropped(x)
        # the same layers up to the classifier, whose 1001 rows kernels may block apart from 1000: one layer of
        # float32 summation order over its 1280 inputs
        close = float32_close(1, dropped.classifier.in_features, expected.abs().max().item())
        torch.testing.assert_close(with_background(x)[:, 1:], expected, **close)


def _keras_style(path: Path, paddings: list[list[int]]):
    """The file re-expressed as Keras exports it: the stem becomes PAD(paddings) + VALID conv."""
    graph = read_tflite(path)
    stem = next(op for op in graph.operators if op.name == "CONV_2D")
    image = stem.inputs[0]
    n = len(graph.tensors)
    pads = Tensor(
        n, "pads", (4, 2), "INT32", np.zeros(0, np.float32), np.zeros(0, np.int64), 0, np.array(paddings, np.int32)
    )
    padded_shape = (1, image.shape[1] + sum(paddings[1]), image.shape[2] + sum(paddings[2]), 3)
    padded = dataclasses.replace(image, index=n + 1, name="padded", shape=padded_shape)
    pad_op = Operator(-1, "PAD", {}, (image, pads), (padded,))
    valid = dataclasses.replace(stem, options={**stem.options, "padding": "VALID"}, inputs=(padded, *stem.inputs[1:]))
    operators = [pad_op if op is stem else op for op in graph.operators]
    operators.insert(operators.index(pad_op) + 1, valid)
    return dataclasses.replace(graph, tensors=(*graph.tensors, pads, padded), operators=tuple(operators))


def test_explicit_pad_and_valid_as_in_keras_exports(monkeypatch) -> None:
    path = coral("mobilenet_v2_1.0_224_quant.tflite")
    same = mobilenet_v2_from_tflite(path)
    monkeypatch.setattr(
        tflite_classifier, "read_tflite", lambda p: _keras_style(path, [[0, 0], [0, 1], [0, 1], [0, 0]])
    )
    keras = mobilenet_v2_from_tflite(path)
    for key, value in same.state_dict().items():
        torch.testing.assert_close(keras.state_dict()[key], value)

    monkeypatch.setattr(
        tflite_classifier, "read_tflite", lambda p: _keras_style(path, [[0, 0], [1, 1], [1, 1], [0, 0]])
    )
    with pytest.raises(WeightsError, match=r"fit MobileNetV2 width 1\.0, but at layer 0 \(stem.*where TF SAME pads"):
        mobilenet_v2_from_tflite(path)


def test_leftover_weights_are_refused(monkeypatch) -> None:
    path = coral("mobilenet_v2_1.0_224_quant.tflite")
    graph = read_tflite(path)
    extra = dataclasses.replace(
        graph.tensors[-1],
        index=len(graph.tensors),
        name="extra/w",
        type_name="FLOAT32",
        shape=(8, 8),
        data=np.zeros((8, 8), np.float32),
    )
    with_extra = dataclasses.replace(graph, tensors=(*graph.tensors, extra))
    monkeypatch.setattr(tflite_classifier, "read_tflite", lambda p: with_extra)
    with pytest.raises(WeightsError, match=r"quant\.tflite: at width 1\.0 1 weight tensors are left over .*extra/w"):
        mobilenet_v2_from_tflite(path)


def test_deeplab_is_not_a_classifier() -> None:
    path = coral("deeplabv3_mnv2_pascal_quant.tflite")
    with pytest.raises(WeightsError) as error:
        mobilenet_v2_from_tflite(path)
    message = str(error.value)
    assert str(path) in message and "width 1.0" in message
    assert "layer 51 (last_conv" in message and "[256, 1, 1, 320]" in message  # the head's 256, not 1280


@pytest.mark.parametrize(
    "content, reason",
    [
        (lambda real: real[: len(real) // 2], "truncated or corrupt"),
        (lambda real: np.random.default_rng(0).bytes(4096), "not a TFLite model"),
        (lambda real: _torch_saved({"w": torch.zeros(3)}), "not a TFLite model"),
        (lambda real: b"", "not a TFLite model"),
    ],
    ids=["truncated", "random", "pytorch", "empty"],
)
def test_bad_files_raise_weights_error(tmp_path, content, reason) -> None:
    bad = tmp_path / "bad.tflite"
    bad.write_bytes(content(coral("mobilenet_v2_1.0_224_quant.tflite").read_bytes()))
    with pytest.raises(WeightsError, match=reason) as error:
        mobilenet_v2_from_tflite(bad)
    assert str(bad) in str(error.value)


def _torch_saved(obj: object) -> bytes:
    buffer = io.BytesIO()
    torch.save(obj, buffer)
    return buffer.getvalue()


def test_missing_file_raises_weights_error(tmp_path) -> None:
    with pytest.raises(WeightsError, match="missing.tflite: cannot read"):
        read_tflite(tmp_path / "missing.tflite")


def test_cli_writes_a_checkpoint_that_rebuilds_the_model(tmp_path, capsys) -> None:
    path = coral("mobilenet_v2_1.0_224_quant.tflite")
    out = tmp_path / "mnv2.pt"
    assert main([str(path), "--out", str(out)]) == 0
    assert capsys.readouterr().out.strip() == f"width 1.0, 1000 classes, 3,504,872 params; wrote {out}"
    rebuilt, direct = mobilenet_v2_from_checkpoint(out).eval(), mobilenet_v2_from_tflite(path)
    x = torch.rand(1, 3, 224, 224) * 2 - 1
    with torch.inference_mode():
        torch.testing.assert_close(rebuilt(x), direct(x))


def test_cli_error_is_one_line_and_exit_2(tmp_path, capfd) -> None:
    # main() in this process (a new Python costs 8-10 s of imports); capfd reads file descriptor 2 itself, so
    # anything native code wrote there counts too. test_faults_os/test_train_entry_points keep real processes.
    path = coral("deeplabv3_mnv2_pascal_quant.tflite")
    capfd.readouterr()
    with pytest.raises(SystemExit) as stop:
        main([str(path), "--out", str(tmp_path / "x.pt")])
    stderr = capfd.readouterr().err
    assert stop.value.code == 2
    assert stderr.count("\n") == 1 and stderr.startswith(f"error: {path}: not a MobileNetV2")
    assert not (tmp_path / "x.pt").exists()
