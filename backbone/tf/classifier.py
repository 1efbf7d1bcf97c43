"""MobileNetV2 ImageNet classifiers from TFLite files (BatchNorm folded into the convs).

The file's conv, depthwise and fully connected layers are matched one to one, in execution order, against
MobileNetV2 at each paper width; the first width whose weight shapes all fit must then also agree on
strides, dilations, fused activations and padding. It is built with TF "SAME" padding and each folded bias
goes into its BatchNorm set to identity-plus-bias. Anything else (DeepLab, MobileNetV1, leftover weights)
is refused with the first layer that does not fit. The command line is tools/import_tflite.py.
"""

from __future__ import annotations

import math
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import torch
from torch import nn

from backbone.layers import ConvBNAct
from backbone.mobilenetv2 import MobileNetV2
from backbone.tf.layout import TF_BN_EPS, bias_as_batch_norm, tflite_conv_weight
from backbone.tf.tflite import Operator, Tensor, TFLiteModel, read_tflite
from common.errors import WeightsError

PAPER_WIDTHS = (0.35, 0.5, 0.75, 1.0, 1.3, 1.4)
TF_CLASSES_WITH_BACKGROUND = 1001  # TF-slim ImageNet classifiers: output 0 is "background"
# Recorded in the checkpoint so demos feed the input these weights were trained on: [-1, 1], centre crop.
PREPROCESSING = "tf"
WEIGHT_OPS = ("CONV_2D", "DEPTHWISE_CONV_2D", "FULLY_CONNECTED")


@dataclass(frozen=True)
class _Slot:
    """One weighted layer of our model and what the file's operator must look like to fill it."""

    prefix: str  # "blocks.3.depthwise" (a ConvBNAct) or "classifier" (the nn.Linear)
    ops: tuple[str, ...]  # TFLite operators that can hold it
    shape: tuple[int, ...]  # weight shape in TFLite layout (the classifier's output count is not checked)
    stride: int
    dilation: int
    activation: str  # fused activation the file must have: "RELU6" or "NONE"

    @property
    def is_classifier(self) -> bool:
        return "FULLY_CONNECTED" in self.ops


def _slots(model: MobileNetV2) -> list[_Slot]:
    """Our weighted layers in execution order, with TFLite layouts: conv [out,kh,kw,in], depthwise [1,kh,kw,out]."""
    slots = []
    for prefix, module in model.named_modules():
        if isinstance(module, ConvBNAct):
            conv = module.conv
            out, per_group, kh, kw = conv.weight.shape
            depthwise = conv.groups > 1
            slots.append(
                _Slot(
                    prefix,
                    ("DEPTHWISE_CONV_2D",) if depthwise else ("CONV_2D",),
                    (1, kh, kw, out) if depthwise else (out, kh, kw, per_group),
                    conv.stride[0],
                    conv.dilation[0],
                    "RELU6" if hasattr(module, "act") else "NONE",
                )
            )
        elif isinstance(module, nn.Linear):
            slots.append(_Slot(prefix, ("FULLY_CONNECTED", "CONV_2D"), (-1, module.in_features), 1, 1, "NONE"))
    return slots


def _file_shape(op: Operator, slot: _Slot, weight: Tensor) -> tuple[int, ...]:
    """The weight shape compared with `slot.shape`: a 1×1 CONV_2D classifier counts as [out, in]."""
    shape = weight.shape
    if slot.is_classifier:
        if op.name == "CONV_2D" and len(shape) == 4 and shape[1:3] == (1, 1):
            shape = (shape[0], shape[3])
        return (-1, *shape[1:])
    return shape


def tf_same_padding(size: int, kernel: int, stride: int, dilation: int) -> tuple[int, int]:
    """(before, after) padding of TF "SAME" on an input of `size`: the odd pixel goes after."""
    effective = (kernel - 1) * dilation + 1
    total = max((math.ceil(size / stride) - 1) * stride + effective - size, 0)
    return total // 2, total - total // 2


def _padding_mismatch(graph: TFLiteModel, op: Operator, slot: _Slot) -> str | None:
    """Our convs pad like TF SAME; a file may instead pad explicitly (PAD op, then a VALID conv, as in Keras)."""
    if op.options.get("padding", "SAME") == "SAME" or slot.is_classifier:
        return None
    source = graph.producer(op.inputs[0])
    if source is None or source.name != "PAD" or source.inputs[1] is None or not source.inputs[1].is_constant:
        kernel = slot.shape[1]
        return None if kernel == 1 else f"VALID padding without a PAD op before a {kernel}×{kernel} conv"
    amounts = source.inputs[1].data.tolist()  # NHWC rows of (before, after)
    _, height, width, _ = source.inputs[0].shape
    expected = [[0, 0]] + [list(tf_same_padding(s, slot.shape[1], slot.stride, slot.dilation)) for s in (height, width)]
    if amounts[:3] != expected or amounts[3] != [0, 0]:
        return f"PAD op #{source.index} pads {amounts} where TF SAME pads {expected + [[0, 0]]}"
    return None


def _shape_mismatch(graph: TFLiteModel, op: Operator, slot: _Slot) -> str | None:
    """Why `op`'s kind or weight shape cannot fill `slot` (what decides the width), or None."""
    weight = graph.constant_source(op.inputs[1] if len(op.inputs) > 1 else None)
    if op.name not in slot.ops or weight is None:
        return f"file has {op.name}, ours needs {' or '.join(slot.ops)} with constant weights"
    shape = _file_shape(op, slot, weight)
    return None if shape == slot.shape else f"file {op.name} weight {list(shape)}, ours {list(slot.shape)}"


def _layout_mismatch(graph: TFLiteModel, op: Operator, slot: _Slot) -> str | None:
    """Why `op`, whose weight fits `slot`, still computes something else: stride, dilation, activation, padding."""
    options = op.options
    found = (
        (options.get("stride_h", 1), options.get("stride_w", 1)),
        (options.get("dilation_h_factor", 1), options.get("dilation_w_factor", 1)),
        options.get("fused_activation_function", "NONE"),
    )
    wanted = ((slot.stride,) * 2, (slot.dilation,) * 2, slot.activation)
    if found != wanted:
        describe = "stride {}, dilation {}, fused activation {}".format
        return f"file {op.name} has {describe(*found)}; ours needs {describe(*wanted)}"
    return _padding_mismatch(graph, op, slot)


def _first_mismatch(
    graph: TFLiteModel, ops: list[Operator], slots: list[_Slot], check: Callable[..., str | None]
) -> tuple[int, str] | None:
    """(layer index, reason) of the first layer `check` rejects or where the layer counts part, else None."""
    for i, (op, slot) in enumerate(zip(ops, slots, strict=False)):
        reason = check(graph, op, slot)
        if reason is not None:
            return i, f"layer {i} ({slot.prefix}, op #{op.index}): {reason}"
    if len(ops) != len(slots):
        return min(len(ops), len(slots)), f"the file has {len(ops)} weighted layers, MobileNetV2 has {len(slots)}"
    return None


def _as_torch(tensor: Tensor) -> torch.Tensor:
    return torch.from_numpy(tensor.dequantize())


def _conv_weight(op: Operator, slot: _Slot, weight: Tensor) -> torch.Tensor:
    """PyTorch layout of a layer's weight; a classifier (FULLY_CONNECTED or 1×1 CONV_2D) becomes [out, in]."""
    if slot.is_classifier:
        w = _as_torch(weight)
        return w.reshape(w.shape[0], -1)
    return tflite_conv_weight(weight.dequantize(), depthwise=op.name == "DEPTHWISE_CONV_2D")


def mobilenet_v2_from_tflite(path: str | Path, drop_background: bool = True) -> MobileNetV2:
    """A MobileNetV2 classifier holding the weights of a TFLite file, width inferred from its shapes.

    With `drop_background`, a 1001-class TF-slim classifier loses output 0 ("background") so class indices
    follow torchvision's 1000-class order; other class counts are kept as they are.
    """
    graph = read_tflite(path)
    ops = [op for op in graph.operators if op.name in WEIGHT_OPS]

    def build(width: float, num_classes: int = 1000) -> MobileNetV2:
        return MobileNetV2(width, num_classes=num_classes, padding_mode="tf_same", bn_eps=TF_BN_EPS)

    mismatches = {}
    for width in PAPER_WIDTHS:
        with torch.device("meta"):  # shapes only: six models cost nothing to build
            slots = _slots(build(width))
        mismatches[width] = _first_mismatch(graph, ops, slots, _shape_mismatch)
        if mismatches[width] is None:
            break
    else:
        width = max(PAPER_WIDTHS, key=lambda w: mismatches[w][0])
        raise WeightsError(
            f"{path}: not a MobileNetV2 classifier at any paper width {PAPER_WIDTHS}; "
            f"closest is width {width}, where {mismatches[width][1]}"
        )
    mismatch = _first_mismatch(graph, ops, slots, _layout_mismatch)
    if mismatch is not None:
        raise WeightsError(f"{path}: the weight shapes fit MobileNetV2 width {width}, but at {mismatch[1]}")

    classes = graph.constant_source(ops[-1].inputs[1]).shape[0]
    drop = drop_background and classes == TF_CLASSES_WITH_BACKGROUND
    model = build(width, classes - 1 if drop else classes)
    state = model.state_dict()
    consumed: list[int] = []
    for op, slot in zip(ops, _slots(model), strict=True):
        weight = graph.constant_source(op.inputs[1])
        bias_tensor = graph.constant_source(op.inputs[2] if len(op.inputs) > 2 else None)
        consumed += [t.index for t in (weight, bias_tensor) if t is not None]
        w = _conv_weight(op, slot, weight)
        b = _as_torch(bias_tensor) if bias_tensor is not None else torch.zeros(w.shape[0])
        if slot.is_classifier:
            state["classifier.weight"], state["classifier.bias"] = (w[1:], b[1:]) if drop else (w, b)
            continue
        state[f"{slot.prefix}.conv.weight"] = w
        state.update({f"{slot.prefix}.bn.{k}": v for k, v in bias_as_batch_norm(b, TF_BN_EPS).items()})

    _check_all_consumed(graph, consumed, width)
    model.load_state_dict(state)
    return model.eval()


def _check_all_consumed(graph: TFLiteModel, consumed: list[int], width: float) -> None:
    """Every learned tensor of the file must land in exactly one of our parameters."""
    counts = Counter(consumed)
    used_twice = [i for i, n in counts.items() if n > 1]
    leftovers = [t for t in graph.parameters() if t.index not in counts]
    if used_twice or leftovers:
        what = (
            f"{len(leftovers)} weight tensors are left over (first: {leftovers[0].name!r} {list(leftovers[0].shape)})"
            if leftovers
            else f"tensor {graph.tensors[used_twice[0]].name!r} feeds two layers"
        )
        raise WeightsError(f"{graph.path}: at width {width} {what}; the file holds more than a MobileNetV2 classifier")
