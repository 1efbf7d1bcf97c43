"""The metadata a .tflite written by tools.export carries, in the file itself: the TFLite schema's own `metadata`
table (name → buffer), which every LiteRT runtime ignores and every flatbuffer reader can list. Two entries:

- "mnv2_suite": JSON, the same keys as the ONNX and TorchScript files (arch, preset, image_size, mean, std,
  class_names, ...) plus the input and output layout of this file;
- "mnv2_suite.anchors" (SSDLite only): float32 [A, 4] anchors (cx, cy, w, h, normalised) the box outputs decode
  against, so decoding needs nothing but the file.

Read with the schema bindings ai-edge-litert ships (no TensorFlow), without running the model.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from typing import Any

import numpy as np

from tools.export_metadata import ExportError, require

METADATA_NAME = "mnv2_suite"
ANCHORS_NAME = "mnv2_suite.anchors"
EXTRA = "mobile"  # the extra that installs the converter and the runtime


def _schema() -> Any:
    return require("ai_edge_litert.schema_py_generated", EXTRA)


def embed_metadata(content: bytes, metadata: Mapping[str, Any], anchors: np.ndarray | None = None) -> bytes:
    """`content` (a .tflite flatbuffer) with our metadata entries appended to its metadata table."""
    schema, flatbuffers = _schema(), require("flatbuffers", EXTRA)
    model = schema.ModelT.InitFromPackedBuf(bytearray(content), 0)
    entries = {METADATA_NAME: json.dumps(dict(metadata)).encode()}
    if anchors is not None:
        entries[ANCHORS_NAME] = np.ascontiguousarray(anchors, dtype="<f4").tobytes()
    model.metadata = [m for m in (model.metadata or []) if m.name not in {n.encode() for n in entries}]
    for name, data in entries.items():
        buffer = schema.BufferT()
        buffer.data = np.frombuffer(data, np.uint8)
        model.buffers.append(buffer)
        entry = schema.MetadataT()
        entry.name, entry.buffer = name, len(model.buffers) - 1
        model.metadata.append(entry)
    builder = flatbuffers.Builder(len(content) + 4096)
    builder.Finish(model.Pack(builder), file_identifier=b"TFL3")
    return bytes(builder.Output())


def read_tflite_metadata(path: str | os.PathLike) -> tuple[dict[str, Any], np.ndarray | None]:
    """(metadata, anchors or None) of a .tflite written by tools.export; an ExportError for any other file."""
    schema = _schema()
    try:
        with open(path, "rb") as f:
            content = f.read()
        model = schema.Model.GetRootAs(content, 0)
        entries = {}
        for i in range(model.MetadataLength()):
            entry = model.Metadata(i)
            entries[entry.Name().decode()] = model.Buffers(entry.Buffer()).DataAsNumpy()
    except OSError as e:
        raise ExportError(f"{path}: cannot be read ({e.strerror})") from None
    except Exception as e:  # a flatbuffer that is not a TFLite model fails anywhere in the generated reader
        raise ExportError(f"{path}: not a readable .tflite file ({type(e).__name__}: {e})") from None
    if METADATA_NAME not in entries:
        raise ExportError(f"{path}: a .tflite without the suite's metadata (class names, input size, "
                          "normalisation): export the checkpoint with `python -m tools.export CKPT --format tflite`")  # fmt: skip
    try:
        metadata = json.loads(bytes(entries[METADATA_NAME]).decode())
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ExportError(f"{path}: its {METADATA_NAME} metadata entry is damaged ({e}): export it again") from None
    anchors = entries.get(ANCHORS_NAME)
    return metadata, None if anchors is None else np.frombuffer(bytes(anchors), "<f4").reshape(-1, 4).copy()
