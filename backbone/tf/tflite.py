"""Read a TensorFlow Lite file without TensorFlow: operators in execution order, their options, and tensors
with constant data dequantised to float32.

Weight importers (MobileNetV2 classifiers, DeepLab, SSDLite) walk `TFLiteModel.operators` and map the
constant inputs onto PyTorch layers; this module knows the file format and nothing about any model.
Anything that is not a readable TFLite flatbuffer becomes one `WeightsError` naming the file.
`python -m tools.tflite_reader FILE.tflite` prints one line per operator.
"""

from __future__ import annotations

import inspect
import re
import struct
from dataclasses import dataclass
from functools import cache, cached_property
from pathlib import Path
from typing import Any, Callable

import numpy as np
import tflite
from tflite.utils import BUILTIN_OPCODE2NAME

from common.errors import WeightsError

_TYPE_NAMES = {value: name for name, value in vars(tflite.TensorType).items() if not name.startswith("_")}
_NUMPY_DTYPES = {
    "FLOAT32": "<f4",
    "FLOAT16": "<f2",
    "FLOAT64": "<f8",
    "INT8": "i1",
    "UINT8": "u1",
    "INT16": "<i2",
    "UINT16": "<u2",
    "INT32": "<i4",
    "UINT32": "<u4",
    "INT64": "<i8",
    "UINT64": "<u8",
    "BOOL": "?",
}
_OPTION_CLASSES = {value: name for name, value in vars(tflite.BuiltinOptions).items() if not name.startswith("_")}
# Option fields stored as enums, reported by name ("SAME", "RELU6") so importers compare readable values.
_ENUM_FIELDS = {
    "padding": {v: k for k, v in vars(tflite.Padding).items() if not k.startswith("_")},
    "fused_activation_function": {
        v: k for k, v in vars(tflite.ActivationFunctionType).items() if not k.startswith("_")
    },
}
_CUSTOM = 32  # BuiltinOperator.CUSTOM: the op is named by its custom code instead
# What flatbuffers raises when offsets point past the end of a truncated or corrupt file.
_CORRUPT = (struct.error, IndexError, ValueError, UnicodeDecodeError)


@dataclass(frozen=True, eq=False)
class Tensor:
    """One tensor of the main subgraph; `data` holds the raw constant values, None for activations."""

    index: int
    name: str
    shape: tuple[int, ...]
    type_name: str  # TFLite's TensorType name: "INT8", "FLOAT32", ...
    scale: np.ndarray  # float32, empty when not quantised; one per channel for per-channel quantisation
    zero_point: np.ndarray  # int64, same length as scale (or empty)
    quantized_dimension: int  # the channel axis that per-channel scales run along
    data: np.ndarray | None

    @property
    def is_constant(self) -> bool:
        return self.data is not None

    @property
    def is_quantized(self) -> bool:
        return self.scale.size > 0 and self.type_name not in ("FLOAT32", "FLOAT16", "FLOAT64")

    def dequantize(self) -> np.ndarray:
        """Constant values as float32: (q - zero_point) * scale, per channel along `quantized_dimension`."""
        if self.data is None:
            raise ValueError(f"tensor {self.name!r} is an activation, not a constant")
        values = self.data.astype(np.float32)
        if not self.is_quantized:
            return values
        axis_shape = [1] * values.ndim
        if self.scale.size > 1:
            axis_shape[self.quantized_dimension] = -1
        zero_point = self.zero_point if self.zero_point.size else np.zeros(1, np.int64)
        return (values - zero_point.reshape(axis_shape)) * self.scale.reshape(axis_shape)


@dataclass(frozen=True, eq=False)
class Operator:
    """One operator in execution order: builtin name (or custom code), options, input/output tensors."""

    index: int
    name: str  # "CONV_2D", "DEPTHWISE_CONV_2D", ... or the custom code of a CUSTOM op
    options: dict[str, Any]  # snake_case fields of its BuiltinOptions, e.g. stride_h, padding="SAME"
    inputs: tuple[Tensor | None, ...]  # None where an optional input is omitted (e.g. no bias)
    outputs: tuple[Tensor, ...]


@dataclass(frozen=True, eq=False)
class TFLiteModel:
    """The main subgraph (subgraph 0) of a TFLite file."""

    path: Path
    tensors: tuple[Tensor, ...]
    operators: tuple[Operator, ...]
    inputs: tuple[Tensor, ...]
    outputs: tuple[Tensor, ...]

    @cached_property
    def _producers(self) -> dict[int, Operator]:
        return {t.index: op for op in self.operators for t in op.outputs}

    def producer(self, tensor: Tensor) -> Operator | None:
        """The operator that computes `tensor`; None for graph inputs and constants."""
        return self._producers.get(tensor.index)

    def constant_source(self, tensor: Tensor | None) -> Tensor | None:
        """The constant behind an operator input, looking through a DEQUANTIZE of a constant.

        float16 and dynamic-range models store weights as float16/int8 constants that a DEQUANTIZE op
        turns into the float32 input of the conv, so the conv's own input is not constant.
        """
        if tensor is None or tensor.is_constant:
            return tensor
        op = self.producer(tensor)
        if op is not None and op.name == "DEQUANTIZE" and op.inputs[0] is not None and op.inputs[0].is_constant:
            return op.inputs[0]
        return None

    def parameters(self) -> list[Tensor]:
        """Constants holding learned values (floating point or quantised), not int32 shapes or axes."""
        return [t for t in self.tensors if t.is_constant and (t.type_name.startswith("FLOAT") or t.is_quantized)]


def read_tflite(path: str | Path) -> TFLiteModel:
    """Parse `path`; raise WeightsError naming the file if it is not a complete TFLite flatbuffer."""
    path = Path(path)
    try:
        buf = path.read_bytes()
    except OSError as e:
        raise WeightsError(f"{path}: cannot read TFLite file ({e.strerror or e})") from e
    if len(buf) < 8 or not tflite.Model.ModelBufferHasIdentifier(buf, 0):
        raise WeightsError(
            f"{path}: not a TFLite model (no 'TFL3' flatbuffer identifier at byte 4); "
            "pass a .tflite file, PyTorch checkpoints are loaded with backbone.mobilenet_weights.load_pretrained"
        )
    try:
        return _parse(path, buf)
    except WeightsError:
        raise
    except _CORRUPT as e:
        raise WeightsError(f"{path}: truncated or corrupt TFLite file ({type(e).__name__}: {e})") from e


def _parse(path: Path, buf: bytes) -> TFLiteModel:
    model = tflite.Model.GetRootAs(buf, 0)
    if model.SubgraphsLength() < 1:
        raise WeightsError(f"{path}: TFLite file without a subgraph")
    graph = model.Subgraphs(0)
    tensors = tuple(_tensor(path, buf, model, graph.Tensors(i), i) for i in range(graph.TensorsLength()))
    op_names = [_op_name(model.OperatorCodes(i)) for i in range(model.OperatorCodesLength())]
    operators = []
    for k in range(graph.OperatorsLength()):
        op = graph.Operators(k)
        operators.append(
            Operator(
                index=k,
                name=op_names[op.OpcodeIndex()],
                options=_options(op),
                inputs=tuple(tensors[i] if i >= 0 else None for i in _ints(op.InputsAsNumpy())),
                outputs=tuple(tensors[i] for i in _ints(op.OutputsAsNumpy())),
            )
        )
    return TFLiteModel(
        path=path,
        tensors=tensors,
        operators=tuple(operators),
        inputs=tuple(tensors[i] for i in _ints(graph.InputsAsNumpy())),
        outputs=tuple(tensors[i] for i in _ints(graph.OutputsAsNumpy())),
    )


def _ints(values: Any) -> list[int]:
    """flatbuffers returns 0 instead of an empty array for absent vectors."""
    return [] if isinstance(values, int) else [int(v) for v in values]


def _op_name(code: tflite.OperatorCode) -> str:
    # Codes above 127 live only in builtin_code; older files only fill the int8 deprecated field.
    builtin = max(code.BuiltinCode(), code.DeprecatedBuiltinCode())
    if builtin == _CUSTOM:
        return (code.CustomCode() or b"CUSTOM").decode()
    return BUILTIN_OPCODE2NAME.get(builtin, f"BUILTIN_{builtin}")


def _tensor(path: Path, buf: bytes, model: tflite.Model, t: tflite.Tensor, index: int) -> Tensor:
    name = (t.Name() or b"").decode()
    shape = tuple(_ints(t.ShapeAsNumpy()))
    type_name = _TYPE_NAMES.get(t.Type(), f"TYPE_{t.Type()}")
    q = t.Quantization()
    scale = np.asarray(q.ScaleAsNumpy() if q is not None and q.ScaleLength() else [], np.float32)
    zero_point = np.asarray(q.ZeroPointAsNumpy() if q is not None and q.ZeroPointLength() else [], np.int64)
    axis = q.QuantizedDimension() if q is not None else 0
    raw = _buffer_bytes(path, buf, model.Buffers(t.Buffer()))
    data = None
    if raw is not None:
        if type_name not in _NUMPY_DTYPES:
            raise WeightsError(f"{path}: constant tensor {name!r} has type {type_name}, which this reader cannot read")
        dtype = np.dtype(_NUMPY_DTYPES[type_name])
        count = int(np.prod(shape, dtype=np.int64))
        if raw.size != count * dtype.itemsize:
            raise WeightsError(
                f"{path}: constant tensor {name!r} holds {raw.size} bytes, its shape {list(shape)} of {type_name} "
                f"needs {count * dtype.itemsize} (truncated or corrupt file?)"
            )
        data = raw.view(dtype).reshape(shape)
    if scale.size > 1 and (axis >= len(shape) or shape[axis] != scale.size):
        raise WeightsError(f"{path}: tensor {name!r} has {scale.size} scales but shape {list(shape)} on axis {axis}")
    return Tensor(index, name, shape, type_name, scale, zero_point, axis, data)


def _buffer_bytes(path: Path, buf: bytes, buffer: tflite.Buffer) -> np.ndarray | None:
    """Constant bytes of a buffer, inline or (files over 2 GB) at an offset after the flatbuffer."""
    if buffer.Offset() > 1:
        end = buffer.Offset() + buffer.Size()
        if end > len(buf):
            raise WeightsError(f"{path}: a weight buffer ends at byte {end} past the file end {len(buf)} (truncated?)")
        return np.frombuffer(buf, np.uint8, buffer.Size(), buffer.Offset())
    if buffer.DataLength() == 0:
        return None
    return buffer.DataAsNumpy()


def _options(op: tflite.Operator) -> dict[str, Any]:
    """Every field of the operator's BuiltinOptions table, enums by name, vectors as tuples."""
    table = op.BuiltinOptions()
    kind = op.BuiltinOptionsType()
    if table is None or kind not in _OPTION_CLASSES or kind == tflite.BuiltinOptions.NONE:
        return {}
    cls = getattr(tflite, _OPTION_CLASSES[kind])
    options = cls()
    options.Init(table.Bytes, table.Pos)
    result: dict[str, Any] = {}
    for key, getter in _fields(cls):
        value = getter(options)
        if isinstance(value, np.ndarray):
            value = tuple(value.tolist())
        elif not isinstance(value, (bool, int, float)):
            continue  # nested tables: none of the conv/pool/resize options we read have one
        result[key] = _ENUM_FIELDS.get(key, {}).get(value, value)
    return result


@cache
def _fields(cls: type) -> list[tuple[str, Callable[[Any], Any]]]:
    """(snake_case name, getter) for each field accessor of a generated flatbuffers options class."""
    fields = []
    for attr, member in vars(cls).items():
        if attr.startswith("_") or attr == "Init" or attr.endswith(("Length", "IsNone")):
            continue
        if not inspect.isfunction(member):
            continue  # classmethods (GetRootAs...)
        if list(inspect.signature(member).parameters) != ["self"]:
            continue  # element getters X(self, j); their XAsNumpy(self) twin is read instead
        name = re.sub(r"(?<!^)(?=[A-Z])", "_", attr.removesuffix("AsNumpy")).lower()
        fields.append((name, member))
    return fields
