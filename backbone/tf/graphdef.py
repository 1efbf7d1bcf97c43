"""Read TensorFlow frozen graphs (GraphDef `.pb`, or a model-zoo `.tar.gz` holding one) without TensorFlow, using
the protobuf classes the `tensorboard` package ships, and hand out their weights so that each is used exactly once.

Which constants are weights is decided by the graph's structure, not by names: a `Const` is a weight when it
feeds (directly or through `Identity` nodes, TF's `.../read`) a weight slot of a layer op: the filter of a
convolution or matrix product, the bias of `BiasAdd`, the scale/offset/mean/variance of `FusedBatchNorm*`.
Everything else (anchor generator, pre- and post-processing constants, shapes) is not a weight.
"""

from __future__ import annotations

import tarfile
import zlib
from os import PathLike
from pathlib import Path
from typing import Iterator

import numpy as np
from google.protobuf.message import DecodeError
from tensorboard.compat.proto import graph_pb2, node_def_pb2, tensor_pb2

from common.errors import WeightsError

FROZEN_GRAPH_NAME = "frozen_inference_graph.pb"

BATCH_NORM_OPS = ("FusedBatchNorm", "FusedBatchNormV2", "FusedBatchNormV3")
# op → input slots that carry weights
WEIGHT_SLOTS: dict[str, tuple[int, ...]] = {
    "Conv2D": (1,),
    "DepthwiseConv2dNative": (1,),
    "Conv2DBackpropInput": (1,),
    "MatMul": (1,),
    "BiasAdd": (1,),
    **{op: (1, 2, 3, 4) for op in BATCH_NORM_OPS},
}

# TF DataType enum → numpy dtype and the TensorProto field holding values when tensor_content is empty.
_DTYPES: dict[int, tuple[np.dtype, str]] = {
    1: (np.dtype(np.float32), "float_val"),
    2: (np.dtype(np.float64), "double_val"),
    3: (np.dtype(np.int32), "int_val"),
    4: (np.dtype(np.uint8), "int_val"),
    5: (np.dtype(np.int16), "int_val"),
    6: (np.dtype(np.int8), "int_val"),
    9: (np.dtype(np.int64), "int64_val"),
    10: (np.dtype(np.bool_), "bool_val"),
    19: (np.dtype(np.float16), "half_val"),
}


def read_graph_bytes(path: str | PathLike[str]) -> bytes:
    """The serialized GraphDef in `path`: a `.pb` file, or the frozen graph inside a `.tar.gz` / `.tgz` archive."""
    path = Path(path)
    if not path.is_file():
        raise WeightsError(f"{path}: no such file")
    if path.name.endswith((".tar.gz", ".tgz", ".tar")):
        return _read_from_archive(path)
    return path.read_bytes()


def _read_from_archive(path: Path) -> bytes:
    try:
        with tarfile.open(path, "r:*") as archive:
            members = [m for m in archive.getmembers() if m.isfile() and Path(m.name).name == FROZEN_GRAPH_NAME]
            if len(members) != 1:
                raise WeightsError(
                    f"{path}: expected one {FROZEN_GRAPH_NAME} in the archive, found {len(members)}: "
                    "is it a TF Object Detection API model-zoo archive?"
                )
            data = archive.extractfile(members[0])
            assert data is not None  # a regular file member always has data
            return data.read()
    except (tarfile.TarError, EOFError, zlib.error, OSError) as e:
        raise WeightsError(f"{path}: not a readable tar archive (truncated or corrupt?): {e}") from e


def parse_graph(data: bytes, source: str) -> graph_pb2.GraphDef:
    """Parse and sanity-check a GraphDef: corrupt, truncated or non-GraphDef bytes give one WeightsError."""
    graph = graph_pb2.GraphDef()
    try:
        graph.ParseFromString(data)
    except (DecodeError, RuntimeError, ValueError) as e:
        raise WeightsError(
            f"{source}: not a TensorFlow GraphDef (truncated, corrupt, or another kind of file?): {e}"
        ) from e
    if not graph.node:
        raise WeightsError(
            f"{source}: no graph nodes: not a frozen TensorFlow GraphDef (a SavedModel's saved_model.pb is not one; "
            f"use {FROZEN_GRAPH_NAME})"
        )
    names = {node.name for node in graph.node}
    for node in graph.node:
        if not node.op or not node.name:
            raise WeightsError(f"{source}: a graph node without a name or op: corrupt GraphDef")
        for ref in node.input:
            if _node_name(ref) not in names:
                raise WeightsError(
                    f"{source}: node {node.name!r} reads {ref!r}, which is not in the graph: truncated or corrupt file"
                )
    return graph


def _node_name(ref: str) -> str:
    """'^name' (control input) or 'name:1' (second output) → 'name'."""
    return ref.lstrip("^").split(":")[0]


def tensor_to_numpy(tensor: tensor_pb2.TensorProto, name: str = "") -> np.ndarray:
    """A TensorProto's value, from its packed bytes or its typed value list (a single value fills the shape)."""
    if tensor.dtype not in _DTYPES:
        raise WeightsError(f"constant {name!r}: unsupported TF dtype {tensor.dtype}")
    dtype, field = _DTYPES[tensor.dtype]
    shape = tuple(d.size for d in tensor.tensor_shape.dim)
    count = int(np.prod(shape, dtype=np.int64))
    if tensor.tensor_content:
        values = np.frombuffer(tensor.tensor_content, dtype=dtype)
    else:
        raw = np.asarray(getattr(tensor, field))
        values = raw.astype(np.uint16).view(np.float16) if tensor.dtype == 19 else raw.astype(dtype)
        if values.size == 1 and count != 1:
            values = np.full(count, values[0], dtype=dtype)
        elif values.size == 0:
            values = np.zeros(count, dtype=dtype)
    if values.size != count:
        raise WeightsError(f"constant {name!r}: {values.size} values for shape {list(shape)}: corrupt GraphDef")
    return values.reshape(shape).copy()


class GraphWeights:
    """The weight constants of a frozen graph, each to be `take`n exactly once; `finish()` names leftovers."""

    def __init__(self, graph: graph_pb2.GraphDef, source: str) -> None:
        self.source = source
        self.nodes: dict[str, node_def_pb2.NodeDef] = {node.name: node for node in graph.node}
        self.weight_names: set[str] = set()
        for node in graph.node:
            for slot in WEIGHT_SLOTS.get(node.op, ()):
                if slot < len(node.input):
                    const = self.const_name(node.input[slot])
                    if const is not None:
                        self.weight_names.add(const)
        self._taken: set[str] = set()

    @classmethod
    def from_file(cls, path: str | PathLike[str]) -> "GraphWeights":
        return cls(parse_graph(read_graph_bytes(path), str(path)), str(path))

    def const_name(self, ref: str) -> str | None:
        """The Const behind a node input, following Identity nodes (TF's `.../read`); None if it is computed."""
        node = self.nodes.get(_node_name(ref))
        while node is not None and node.op == "Identity" and node.input:
            node = self.nodes.get(_node_name(node.input[0]))
        return node.name if node is not None and node.op == "Const" else None

    def __contains__(self, name: str) -> bool:
        return name in self.weight_names

    def __iter__(self) -> Iterator[str]:
        return iter(sorted(self.weight_names))

    def take(self, name: str) -> np.ndarray:
        """The weight called `name`, marked as used; a missing or already used weight is a WeightsError."""
        if name not in self.weight_names:
            raise WeightsError(f"{self.source}: the graph has no weight {name!r}")
        if name in self._taken:
            raise WeightsError(f"{self.source}: weight {name!r} would be used twice")
        self._taken.add(name)
        return tensor_to_numpy(self.nodes[name].attr["value"].tensor, name)

    def shape(self, name: str) -> tuple[int, ...]:
        """A weight's shape without using it up (to size the model before taking weights)."""
        if name not in self.weight_names:
            raise WeightsError(f"{self.source}: the graph has no weight {name!r}")
        return tuple(d.size for d in self.nodes[name].attr["value"].tensor.tensor_shape.dim)

    def constant(self, name: str) -> np.ndarray | None:
        """Any Const's value by name (e.g. a preprocessing size), or None when the graph has no such constant."""
        node = self.nodes.get(name)
        if node is None or node.op != "Const":
            return None
        return tensor_to_numpy(node.attr["value"].tensor, name)

    def ops(self, op: str) -> list[node_def_pb2.NodeDef]:
        """All nodes of one op type, e.g. to check every FusedBatchNorm's epsilon."""
        return [node for node in self.nodes.values() if node.op == op]

    def leftovers(self) -> list[str]:
        return sorted(self.weight_names - self._taken)

    def finish(self) -> None:
        """Raise unless every weight was taken: an unused weight means the mapping is wrong or the graph differs."""
        left = self.leftovers()
        if left:
            shown = ", ".join(left[:5]) + (f" and {len(left) - 5} more" if len(left) > 5 else "")
            raise WeightsError(f"{self.source}: {len(left)} weights of the graph were not used: {shown}")
