"""Official TensorFlow DeepLab MobileNetV2 models → Mobile DeepLabv3 models, without TensorFlow: a TFLite export
(float or quantised) or a frozen graph (`frozen_inference_graph.pb`, or the model-zoo `.tar.gz` holding it).

Layers are matched by their TF scope (MobilenetV2/expanded_conv_N/depthwise, image_pooling, aspp0,
concat_projection, logits/semantic, ...), found in each conv's weight name, so the head's order in the file does
not matter. Width, class count, output stride, ASPP, input size, the image-pooling window and the logit resize
are read from the file; strides, dilations, activations and weight shapes are then checked against the model
built from them, and every learned tensor of the file must land in exactly one layer. BatchNorm, folded by
TFLite and folded here for frozen graphs, becomes identity-plus-bias; quantised weights are dequantised.
The command line is tools/import_tf_segmentation.py; named weights (deeplab_mobile/named_weights.py) use it too.
"""

from __future__ import annotations

import re
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import torch
from torch import nn

from backbone.layers import ConvBNAct
from backbone.tf.graphdef import BATCH_NORM_OPS, GraphWeights
from backbone.tf.layout import bias_as_batch_norm, fold_batch_norm, graph_conv_weight, tflite_conv_weight
from backbone.tf.tflite import Operator, TFLiteModel, read_tflite
from common.errors import WeightsError
from deeplab_mobile.model import MobileDeepLabV3
from deeplab_mobile.presets import VOC_CLASSES, DeepLabPreset, tf_preset

WEIGHT_OPS = ("CONV_2D", "DEPTHWISE_CONV_2D")
LAST_BACKBONE_LAYER = "MobilenetV2/expanded_conv_16/project"  # 320 × width output channels
# The TF scope at the start of a weight's name; quantised TFLite files join several names with ";".
_SCOPE = re.compile(
    r"(?:^|;)(MobilenetV2/(?:Conv|expanded_conv(?:_\d+)?/(?:expand|depthwise|project))|image_pooling|"
    r"aspp\d+(?:_depthwise|_pointwise)?|concat_projection|logits/semantic)/(?:depthwise_)?weights"
)
_ACTIVATIONS = {nn.ReLU6: "RELU6", nn.ReLU: "RELU"}


def tf_scopes(model: MobileDeepLabV3) -> dict[str, nn.Module]:
    """TF variable scope of each weighted layer → our module (a ConvBNAct, or the classifier's nn.Conv2d)."""
    scopes: dict[str, nn.Module] = {"MobilenetV2/Conv": model.backbone.stem}
    for i, block in enumerate(model.backbone.blocks):
        prefix = "MobilenetV2/expanded_conv" + (f"_{i}" if i else "")
        for part in ("expand", "depthwise", "project"):
            if isinstance(getattr(block, part), ConvBNAct):
                scopes[f"{prefix}/{part}"] = getattr(block, part)
    head = model.head
    scopes["image_pooling"] = head.image_pooling.conv
    scopes["aspp0"] = head.aspp0
    for k, branch in enumerate(head.atrous, start=1):
        if isinstance(branch, ConvBNAct):
            scopes[f"aspp{k}"] = branch
        else:
            scopes[f"aspp{k}_depthwise"], scopes[f"aspp{k}_pointwise"] = branch
    scopes["concat_projection"] = head.project
    scopes["logits/semantic"] = head.classifier
    return scopes


@dataclass(frozen=True)
class FileSettings:
    """What a TF DeepLab file says about the model it holds and how it is fed."""

    preset: DeepLabPreset
    output: str  # "logits" or "argmax"
    input_type: str  # "FLOAT32", "UINT8", ...
    input_quantization: tuple[float, int] | None = None  # (scale, zero point) of a quantised TFLite input


def _scope_of(weight_name: str) -> str | None:
    scopes = set(_SCOPE.findall(weight_name))
    return scopes.pop() if len(scopes) == 1 else None


def _require_deeplab(source: str, scopes: list[str]) -> None:
    missing = [s for s in ("logits/semantic", "image_pooling", "aspp0", LAST_BACKBONE_LAYER) if s not in scopes]
    if missing:
        raise WeightsError(
            f"{source}: not a TF DeepLab MobileNetV2 segmentation model: no {', '.join(missing)} layer among "
            f"its {len(scopes)} convolutions (first: {scopes[0] if scopes else 'none'}). "
            "Other models have their own importers: python -m tools.import_tflite (MobileNetV2 classifiers), "
            "python -m tools.import_tf_detection (SSDLite frozen graphs)"
        )


def tf_pool_window(crop_size: int, output_stride: int) -> tuple[int, int]:
    """TF's image-pooling window, `scale_dimension(crop, 1/OS)` = (crop - 1) // OS + 1: the whole feature map of a
    crop-sized input (33 for 513 at OS16 and for 257 at OS8), which our global pooling computes."""
    side = (crop_size - 1) // output_stride + 1
    return side, side


def _file_preset(
    source: str,
    width: float,
    output_stride: int,
    crop_size: int,
    num_classes: int,
    scopes: list[str],
    pool_window: tuple[int, int] | None,
    align_corners: bool,
) -> DeepLabPreset:
    """The preset of the file's settings; its pooling window must be the one TF derives from the crop size (then
    it covers the whole map, as global pooling does)."""
    if pool_window is not None and pool_window != tf_pool_window(crop_size, output_stride):
        raise WeightsError(
            f"{source}: image pooling window {pool_window}, but TF's rule gives "
            f"{tf_pool_window(crop_size, output_stride)} for a {crop_size}×{crop_size} input at output stride "
            f"{output_stride}"
        )
    try:
        return tf_preset(
            width_mult=width,
            output_stride=output_stride,
            crop_size=crop_size,
            num_classes=num_classes,
            aspp="aspp1" in scopes or "aspp1_depthwise" in scopes,
            aspp_separable="aspp1_depthwise" in scopes,
            align_corners=align_corners,
            name=f"tf_import_{Path(source).name.split('.')[0]}",
        )
    except ValueError as e:
        raise WeightsError(f"{source}: its settings do not build a Mobile DeepLabv3: {e}") from e


LayerLoader = Callable[[str, nn.Module], tuple[torch.Tensor, torch.Tensor]]


def _fill(source: str, model: MobileDeepLabV3, found: list[str], load: LayerLoader) -> None:
    """Give each of our layers the (weight in PyTorch layout, bias) that `load(scope, module)` reads from the
    file, BatchNorm folded in; the file's layers and ours must correspond one to one."""
    scopes = tf_scopes(model)
    gaps = [s for s in scopes if s not in found]
    extra = [s for s in found if s not in scopes]
    if gaps or extra:
        cfg = model.config
        raise WeightsError(
            f"{source}: layers do not match Mobile DeepLabv3 at width {cfg['width_mult']}, OS{cfg['output_stride']}: "
            f"missing {gaps[:3] or 'none'}, unexpected {extra[:3] or 'none'}"
        )
    for scope, module in scopes.items():
        weight, bias = load(scope, module)
        conv = module.conv if isinstance(module, ConvBNAct) else module
        if weight.shape != conv.weight.shape:
            raise WeightsError(
                f"{source}: layer {scope!r} has weights {list(weight.shape)}, ours {list(conv.weight.shape)} "
                "(PyTorch layout)"
            )
        with torch.no_grad():
            conv.weight.copy_(weight)
            if isinstance(module, ConvBNAct):
                module.bn.load_state_dict(bias_as_batch_norm(bias, module.bn.eps), strict=False)
            else:
                conv.bias.copy_(bias)
    model.eval()


# --- TFLite -------------------------------------------------------------------------------------------------


def _tflite_layers(graph: TFLiteModel) -> dict[str, Operator]:
    """Each conv operator under its TF scope, or under "op #N 'weight name'" when its weights carry none."""
    layers: dict[str, Operator] = {}
    for op in graph.operators:
        if op.name not in WEIGHT_OPS:
            continue
        weight = graph.constant_source(op.inputs[1])
        name = weight.name if weight is not None else ""
        scope = _scope_of(name) or f"op #{op.index} {name.split(';')[0]!r}"
        if scope in layers:
            raise WeightsError(f"{graph.path}: two convolutions carry the weights of {scope!r}")
        layers[scope] = op
    return layers


def _tflite_out_channels(graph: TFLiteModel, op: Operator) -> int:
    weight = graph.constant_source(op.inputs[1])
    return weight.shape[3] if op.name == "DEPTHWISE_CONV_2D" else weight.shape[0]


def _tflite_settings(graph: TFLiteModel, layers: dict[str, Operator]) -> FileSettings:
    """Width, classes, output stride, ASPP, input size, pooling and resize of a TFLite file's model."""
    source = str(graph.path)
    _require_deeplab(source, list(layers))
    image = graph.inputs[0] if len(graph.inputs) == 1 else None
    if image is None or len(image.shape) != 4 or image.shape[1] != image.shape[2]:
        found = [list(t.shape) for t in graph.inputs]
        raise WeightsError(f"{source}: expected one square NHWC image input, found {found}")
    output_stride = 1
    for scope, op in layers.items():
        if scope.startswith("MobilenetV2/"):
            output_stride *= op.options.get("stride_h", 1)
    pools = [op for op in graph.operators if op.name == "AVERAGE_POOL_2D"]
    resizes = [op for op in graph.operators if op.name == "RESIZE_BILINEAR"]
    if not resizes:
        raise WeightsError(f"{source}: no RESIZE_BILINEAR of the logits to the input size")
    output_op = graph.producer(graph.outputs[0])
    preset = _file_preset(
        source,
        width=_tflite_out_channels(graph, layers[LAST_BACKBONE_LAYER]) / 320,
        output_stride=output_stride,
        crop_size=image.shape[1],
        num_classes=_tflite_out_channels(graph, layers["logits/semantic"]),
        scopes=list(layers),
        pool_window=(pools[0].options["filter_height"], pools[0].options["filter_width"]) if pools else None,
        align_corners=bool(resizes[-1].options.get("align_corners", False)),
    )
    return FileSettings(
        preset=preset,
        output="argmax" if output_op is not None and output_op.name == "ARG_MAX" else "logits",
        input_type=image.type_name,
        input_quantization=(float(image.scale[0]), int(image.zero_point[0])) if image.is_quantized else None,
    )


def _check_op(source: str, scope: str, op: Operator, module: nn.Module) -> None:
    """Stride, dilation, activation and padding of the file's op must be what our layer computes."""
    conv = module.conv if isinstance(module, ConvBNAct) else module
    options = op.options
    found = (
        options.get("stride_h", 1),
        options.get("dilation_h_factor", 1),
        options.get("fused_activation_function", "NONE"),
        options.get("padding", "SAME"),
    )
    wanted = (conv.stride[0], conv.dilation[0], _ACTIVATIONS.get(type(getattr(module, "act", None)), "NONE"), "SAME")
    if found != wanted:
        describe = "stride {}, dilation {}, activation {}, padding {}".format
        raise WeightsError(
            f"{source}: layer {scope!r} (op #{op.index}) has {describe(*found)}; ours {describe(*wanted)}"
        )


def deeplab_from_tflite(path: str | Path, labels: Path | None = None) -> tuple[MobileDeepLabV3, FileSettings]:
    """The model held by a TF DeepLab MobileNetV2 TFLite file (float or quantised) and how the file is fed;
    classes named by the `labels` file (see `class_names`)."""
    graph = read_tflite(path)
    source = str(graph.path)
    layers = _tflite_layers(graph)
    settings = _tflite_settings(graph, layers)
    model = MobileDeepLabV3(settings.preset, class_names(labels, settings.preset.num_classes))
    used: Counter[int] = Counter()

    def load(scope: str, module: nn.Module) -> tuple[torch.Tensor, torch.Tensor]:
        op = layers[scope]
        _check_op(source, scope, op, module)
        weight = graph.constant_source(op.inputs[1])
        bias = graph.constant_source(op.inputs[2] if len(op.inputs) > 2 else None)
        used.update(t.index for t in (weight, bias) if t is not None)
        w = tflite_conv_weight(weight.dequantize(), depthwise=op.name == "DEPTHWISE_CONV_2D")
        return w, torch.from_numpy(bias.dequantize()) if bias is not None else torch.zeros(w.shape[0])

    _fill(source, model, list(layers), load)
    twice = [graph.tensors[i].name for i, n in used.items() if n > 1]
    leftovers = [f"{t.name!r} {list(t.shape)}" for t in graph.parameters() if t.index not in used]
    if twice or leftovers:
        raise WeightsError(
            f"{source}: weight tensors not consumed exactly once: "
            f"{len(leftovers)} left over {leftovers[:3]}, {len(twice)} used twice {twice[:3]}"
        )
    return model, settings


# --- Frozen GraphDef ----------------------------------------------------------------------------------------


def _graph_layers(weights: GraphWeights) -> dict[str, Any]:
    """Each Conv2D / DepthwiseConv2dNative node under the TF scope of its filter constant."""
    layers: dict[str, Any] = {}
    for node in weights.ops("Conv2D") + weights.ops("DepthwiseConv2dNative"):
        name = weights.const_name(node.input[1]) or ""
        scope = _scope_of(name) or f"node {node.name!r}"
        if scope in layers:
            raise WeightsError(f"{weights.source}: two convolutions carry the weights of {scope!r}")
        layers[scope] = node
    return layers


def _graph_settings(weights: GraphWeights, layers: dict[str, Any]) -> FileSettings:
    """Width and classes from weight shapes (HWIO), output stride from conv strides, crop size from the pooling
    window (TF: (crop - 1) / OS + 1), logit resize from ResizeBilinear."""
    source = weights.source
    _require_deeplab(source, list(layers))
    output_stride = 1
    for scope, node in layers.items():
        if scope.startswith("MobilenetV2/"):
            output_stride *= node.attr["strides"].list.i[1]
    pools = weights.ops("AvgPool")
    resizes = weights.ops("ResizeBilinear")
    if not pools or not resizes:
        raise WeightsError(f"{source}: no AvgPool image pooling or no ResizeBilinear: not a TF DeepLab export")
    kernel = tuple(pools[0].attr["ksize"].list.i[1:3])
    shape = lambda scope: weights.shape(weights.const_name(layers[scope].input[1]))  # noqa: E731
    preset = _file_preset(
        source,
        width=shape(LAST_BACKBONE_LAYER)[3] / 320,
        output_stride=output_stride,
        crop_size=(kernel[0] - 1) * output_stride + 1,
        num_classes=shape("logits/semantic")[3],
        scopes=list(layers),
        pool_window=(kernel[0], kernel[1]),
        align_corners=all(node.attr["align_corners"].b for node in resizes),
    )
    return FileSettings(
        preset=preset,
        output="argmax" if weights.ops("ArgMax") else "logits",
        input_type="UINT8",  # the model-zoo graphs take `ImageTensor` uint8 and preprocess inside
    )


def deeplab_from_graph(path: str | Path, labels: Path | None = None) -> tuple[MobileDeepLabV3, FileSettings]:
    """The model held by a TF DeepLab MobileNetV2 frozen graph (`.pb` or model-zoo `.tar.gz`); classes named by
    the `labels` file.

    BatchNorm is folded here into weight and bias like TFLite does: backbone (epsilon 1e-3, no gamma) and
    head (1e-5, gamma) then fit one model-wide epsilon exactly.
    """
    weights = GraphWeights.from_file(path)
    layers = _graph_layers(weights)
    settings = _graph_settings(weights, layers)
    model = MobileDeepLabV3(settings.preset, class_names(labels, settings.preset.num_classes))
    bn_nodes = {node.name.rsplit("/BatchNorm/", 1)[0]: node for op in BATCH_NORM_OPS for node in weights.ops(op)}

    def load(scope: str, module: nn.Module) -> tuple[torch.Tensor, torch.Tensor]:
        node = layers[scope]
        conv = module.conv if isinstance(module, ConvBNAct) else module
        stride = node.attr["strides"].list.i[1]
        if stride != conv.stride[0]:
            raise WeightsError(f"{weights.source}: layer {scope!r} has stride {stride}, ours {conv.stride[0]}")
        kernel = weights.take(weights.const_name(node.input[1]))
        w = graph_conv_weight(kernel, depthwise=node.op == "DepthwiseConv2dNative")
        if not isinstance(module, ConvBNAct):
            bias_add = weights.nodes.get(f"{scope}/BiasAdd")
            if bias_add is None:
                raise WeightsError(f"{weights.source}: no {scope}/BiasAdd for the classifier's bias")
            return w, torch.from_numpy(weights.take(weights.const_name(bias_add.input[1])))
        bn = bn_nodes.get(scope)
        if bn is None:
            raise WeightsError(f"{weights.source}: no fused BatchNorm after {scope!r} (an unfused or optimised graph?)")
        gamma, beta, mean, var = (torch.from_numpy(weights.take(weights.const_name(ref))) for ref in bn.input[1:5])
        return fold_batch_norm(w, gamma, beta, mean, var, bn.attr["epsilon"].f)

    _fill(weights.source, model, list(layers), load)
    weights.finish()
    return model, settings


def import_tf_deeplab(path: str | Path, labels: Path | None = None) -> tuple[MobileDeepLabV3, FileSettings]:
    """TFLite or frozen graph, by the file's name; classes named by the `labels` file (see `class_names`)."""
    name = Path(path).name
    if name.endswith(".tflite"):
        return deeplab_from_tflite(path, labels)
    if name.endswith((".pb", ".tar.gz", ".tgz", ".tar")):
        return deeplab_from_graph(path, labels)
    raise WeightsError(f"{path}: expected a .tflite file, a frozen_inference_graph.pb or a model-zoo .tar.gz")


def class_names(path: Path | None, num_classes: int) -> list[str]:
    """One name per line (an optional leading index is dropped); VOC names for 21 classes; else numbered."""
    if path is None:
        return list(VOC_CLASSES) if num_classes == len(VOC_CLASSES) else [f"class_{i}" for i in range(num_classes)]
    try:
        lines = [line.strip() for line in Path(path).read_text().splitlines()]
    except OSError as e:
        raise WeightsError(f"{path}: cannot read the class names ({e.strerror or e})") from e
    names = [re.sub(r"^\d+\s+", "", line) for line in lines if line][:num_classes]
    if len(names) != num_classes:
        raise WeightsError(f"{path}: {len(names)} class names for a {num_classes}-class model")
    return names


def provenance(path: str | Path, settings: FileSettings) -> dict[str, Any]:
    """What the checkpoint records about the imported file: how it was fed and what it output."""
    return {
        "file": str(path),
        "output": settings.output,
        "input_type": settings.input_type,
        "input_quantization": settings.input_quantization,
    }
