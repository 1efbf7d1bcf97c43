"""The metadata a .tflite written by tools.export carries, in the file itself, for two kinds of reader:

- phone runtimes (MediaPipe Tasks, Android Studio's ML model binding, Netron): the TFLite Model Metadata, a
  `ModelMetadata` flatbuffer (metadata_schema.fbs, file identifier "M001") under the model's metadata entry
  "TFLITE_METADATA": name, description, licence, version, the input's image properties, the outputs, and the class
  names as a label file (TENSOR_AXIS_LABELS) appended to the file as a zip; plus the task's custom metadata:
  "DETECTOR_METADATA" (the SSD anchors and how the box outputs decode) or "SEGMENTER_METADATA" (the activation);
- this suite (tools/litert_runtime.py, demo/video.py, the deploy bench): the entry "mnv2_suite", JSON with the keys
  of the ONNX and TorchScript files (arch, preset, image_size, resize, class_names, ...) and the file's layout, and
  for SSDLite "mnv2_suite.anchors", float32 [A, 4] (cx, cy, w, h, normalised), so decoding needs only the file.

What MediaPipe checks, measured with mediapipe 1.2.2 (docs/export.md, "In an app"): one input and its metadata
entry; for the detector two float32 or uint8 outputs named "location" (BOUNDARIES, RATIO) and "score", and
DETECTOR_METADATA with anchors and decoding options, boxes read as (ty, tx, th, tw); int8 outputs are refused, so
quantised outputs are turned into float32 by appended DEQUANTIZE ops (`float_outputs`).

The flatbuffers are read and written with the generated Python modules: the TFLite schema from ai-edge-litert, the
metadata schemas from the mediapipe wheel (mediapipe/tasks/metadata/*_py_generated.py, loaded from their files so
that importing mediapipe itself is not needed). No TensorFlow.
"""

from __future__ import annotations

import importlib.util
import io
import json
import os
import zipfile
from collections.abc import Mapping, Sequence
from functools import cache
from types import ModuleType
from typing import Any

import numpy as np

from tools.export_graphs import ExportError, require

EXTRA = "mobile"  # the extra that installs the converter and the runtime
METADATA_NAME = "mnv2_suite"
ANCHORS_NAME = "mnv2_suite.anchors"
TFLITE_METADATA = "TFLITE_METADATA"
DETECTOR_METADATA, SEGMENTER_METADATA = "DETECTOR_METADATA", "SEGMENTER_METADATA"
LABELS_FILE = "labels.txt"
MEDIAPIPE = "mediapipe==1.2.2"
INSTALL_MEDIAPIPE = f"pip install --no-deps {MEDIAPIPE}"  # --no-deps: see pyproject.toml (opencv-contrib-python)
SOFTMAX = 2  # image_segmenter_metadata_schema.fbs Activation


def _tflite_schema() -> ModuleType:
    return require("ai_edge_litert.schema_py_generated", EXTRA)


@cache
def metadata_schema(name: str) -> ModuleType:
    """mediapipe/tasks/metadata/<name>_py_generated.py, loaded from its file without importing mediapipe."""
    spec = importlib.util.find_spec("mediapipe")
    if spec is None or not spec.submodule_search_locations:
        raise ExportError(
            f"writing the phone file's metadata needs the schema modules of the mediapipe wheel: {INSTALL_MEDIAPIPE}"
        )
    path = os.path.join(next(iter(spec.submodule_search_locations)), "tasks", "metadata", f"{name}_py_generated.py")
    module_spec = importlib.util.spec_from_file_location(f"_mediapipe_{name}", path)
    if module_spec is None or not os.path.isfile(path):
        raise ExportError(f"{path}: missing from the mediapipe wheel; reinstall it: {INSTALL_MEDIAPIPE}")
    module = importlib.util.module_from_spec(module_spec)
    module_spec.loader.exec_module(module)  # type: ignore[union-attr]
    return module


def _pack(table: Any, identifier: bytes) -> bytes:
    flatbuffers = require("flatbuffers", EXTRA)
    builder = flatbuffers.Builder(1024)
    builder.Finish(table.Pack(builder), file_identifier=identifier)
    return bytes(builder.Output())


# ---- the phone runtimes' metadata


def _image_input(colour_space: str = "RGB") -> Any:
    md = metadata_schema("metadata_schema")
    tensor = md.TensorMetadataT()
    tensor.name, tensor.description = "image", "RGB image, uint8 0-255, resized to the input size by the caller"
    tensor.content = md.ContentT()
    tensor.content.contentPropertiesType = md.ContentProperties.ImageProperties
    tensor.content.contentProperties = md.ImagePropertiesT()
    tensor.content.contentProperties.colorSpace = getattr(md.ColorSpaceType, colour_space)
    tensor.stats = md.StatsT()
    tensor.stats.min, tensor.stats.max = [0.0], [255.0]
    return tensor


def _with_labels(tensor: Any) -> Any:
    md = metadata_schema("metadata_schema")
    labels = md.AssociatedFileT()
    labels.name, labels.description = (
        LABELS_FILE,
        "The class names, one per line, in the order of the output's last axis",
    )
    labels.type = md.AssociatedFileType.TENSOR_AXIS_LABELS
    tensor.associatedFiles = [labels]
    return tensor


def _custom(name: str, table: Any) -> Any:
    custom = metadata_schema("metadata_schema").CustomMetadataT()
    custom.name, custom.data = name, np.frombuffer(_pack(table, b"V001"), np.uint8)
    return custom


def _detector_outputs(anchors: np.ndarray, num_classes: int, scales: Sequence[float]) -> tuple[list, Any]:
    """(output tensor metadata, DETECTOR_METADATA) of the 2-output SSD form: "location" [1, A, 4] as (ty, tx, th,
    tw) against `anchors` (cx, cy, w, h), "score" [1, A, C] already activated (no sigmoid by MediaPipe)."""
    md, det = metadata_schema("metadata_schema"), metadata_schema("object_detector_metadata_schema")
    location = md.TensorMetadataT()
    location.name, location.description = "location", "Box encodings (ty, tx, th, tw) of each anchor"
    location.content = md.ContentT()
    location.content.contentPropertiesType = md.ContentProperties.BoundingBoxProperties
    location.content.contentProperties = md.BoundingBoxPropertiesT()
    location.content.contentProperties.index = [1, 0, 3, 2]
    location.content.contentProperties.type = md.BoundingBoxType.BOUNDARIES
    location.content.contentProperties.coordinateType = md.CoordinateType.RATIO
    score = _with_labels(md.TensorMetadataT())
    score.name, score.description = "score", "Class scores of each anchor (sigmoid or softmax applied, no background)"
    score.content = md.ContentT()
    score.content.contentPropertiesType = md.ContentProperties.FeatureProperties
    score.content.contentProperties = md.FeaturePropertiesT()
    options = det.ObjectDetectorOptionsT()
    options.ssdAnchorsOptions = det.SsdAnchorsOptionsT()
    options.ssdAnchorsOptions.fixedAnchorsSchema = det.FixedAnchorsSchemaT()
    options.ssdAnchorsOptions.fixedAnchorsSchema.anchors = []
    for cx, cy, w, h in np.asarray(anchors, np.float64).tolist():
        anchor = det.FixedAnchorT()
        anchor.xCenter, anchor.yCenter, anchor.width, anchor.height = cx, cy, w, h
        options.ssdAnchorsOptions.fixedAnchorsSchema.anchors.append(anchor)
    decoding = det.TensorsDecodingOptionsT()
    decoding.numClasses, decoding.numBoxes, decoding.numCoords = num_classes, len(anchors), 4
    decoding.keypointCoordOffset, decoding.numKeypoints, decoding.numValuesPerKeypoint = 0, 0, 2
    decoding.xScale, decoding.yScale, decoding.wScale, decoding.hScale = (float(s) for s in scales)
    decoding.applyExponentialOnBoxSize, decoding.sigmoidScore = True, False
    options.tensorsDecodingOptions = decoding
    return [location, score], _custom(DETECTOR_METADATA, options)


def _segmenter_outputs() -> tuple[list, Any]:
    """(output tensor metadata, SEGMENTER_METADATA) of [1, H, W, C] class logits (MediaPipe applies softmax for
    the confidence masks; the category mask is the argmax)."""
    md, seg = metadata_schema("metadata_schema"), metadata_schema("image_segmenter_metadata_schema")
    scores = _with_labels(md.TensorMetadataT())
    scores.name, scores.description = "segmentation masks", "Class logits of each pixel, [1, H, W, C]"
    scores.content = md.ContentT()
    scores.content.contentPropertiesType = md.ContentProperties.ImageProperties
    scores.content.contentProperties = md.ImagePropertiesT()
    scores.content.contentProperties.colorSpace = md.ColorSpaceType.GRAYSCALE
    scores.content.range = md.ValueRangeT()
    scores.content.range.min, scores.content.range.max = 1, 2
    options = seg.ImageSegmenterOptionsT()
    options.activation = SOFTMAX
    return [scores], _custom(SEGMENTER_METADATA, options)


def model_metadata(
    *,
    name: str,
    description: str,
    licence: str,
    version: str,
    author: str,
    detector: bool,
    anchors: np.ndarray | None = None,
    num_classes: int = 0,
    scales: Sequence[float] = (10.0, 10.0, 5.0, 5.0),
) -> bytes:
    """The TFLITE_METADATA flatbuffer of a detector (2-output SSD form, `anchors` and `num_classes` score columns)
    or a segmenter."""
    md = metadata_schema("metadata_schema")
    outputs, custom = _detector_outputs(anchors, num_classes, scales) if detector else _segmenter_outputs()
    subgraph = md.SubGraphMetadataT()
    subgraph.inputTensorMetadata, subgraph.outputTensorMetadata = [_image_input()], outputs
    subgraph.customMetadata = [custom]
    meta = md.ModelMetadataT()
    meta.name, meta.description, meta.version, meta.author, meta.license = name, description, version, author, licence
    meta.subgraphMetadata = [subgraph]
    meta.minParserVersion = "1.0.0"
    return _pack(meta, b"M001")


# ---- the file itself


def float_outputs(content: bytes) -> bytes:
    """`content` with every int8/uint8 output followed by a DEQUANTIZE op, so the outputs are float32 (MediaPipe
    refuses int8 outputs; the quantised model inside is unchanged). Signatures point at the new outputs."""
    schema = _tflite_schema()
    model = schema.ModelT.InitFromPackedBuf(bytearray(content), 0)
    subgraph = model.subgraphs[0]
    quantised = {
        int(i)
        for i in subgraph.outputs
        if subgraph.tensors[int(i)].type in (schema.TensorType.INT8, schema.TensorType.UINT8)
    }
    if not quantised:
        return content
    codes = model.operatorCodes
    dequantize = next(
        (
            i
            for i, c in enumerate(codes)
            if max(c.builtinCode, c.deprecatedBuiltinCode) == schema.BuiltinOperator.DEQUANTIZE
        ),
        None,
    )
    if dequantize is None:
        code = schema.OperatorCodeT()
        code.builtinCode = code.deprecatedBuiltinCode = schema.BuiltinOperator.DEQUANTIZE
        code.version = 2  # int8 input
        codes.append(code)
        dequantize = len(codes) - 1
    remap = {}
    for index in sorted(quantised):
        source = subgraph.tensors[index]
        out = schema.TensorT()
        out.shape = np.array(source.shape, np.int32)
        out.shapeSignature = None if source.shapeSignature is None else np.array(source.shapeSignature, np.int32)
        out.type, out.name, out.buffer = schema.TensorType.FLOAT32, source.name, 0
        source.name = (source.name.decode() if isinstance(source.name, bytes) else source.name) + "_quantized"
        subgraph.tensors.append(out)
        op = schema.OperatorT()
        op.opcodeIndex = dequantize
        op.inputs, op.outputs = np.array([index], np.int32), np.array([len(subgraph.tensors) - 1], np.int32)
        subgraph.operators.append(op)
        remap[index] = len(subgraph.tensors) - 1
    subgraph.outputs = np.array([remap.get(int(i), int(i)) for i in subgraph.outputs], np.int32)
    for signature in model.signatureDefs or []:  # signature runners address outputs by tensor index
        for output in signature.outputs or []:
            output.tensorIndex = remap.get(output.tensorIndex, output.tensorIndex)
    return _repack(model, schema)


def _repack(model: Any, schema: ModuleType) -> bytes:
    """The model flatbuffer, every buffer's data 16-byte aligned (the generated Pack aligns to 1)."""

    class AlignedBuffer(schema.BufferT):
        def Pack(self, builder):  # noqa: N802 (the flatbuffers object API's name)
            data = None
            if self.data is not None and len(self.data):
                raw = np.ascontiguousarray(self.data, dtype=np.uint8).tobytes()
                builder.StartVector(1, len(raw), 16)
                builder.head = builder.head - len(raw)
                builder.Bytes[builder.head : builder.head + len(raw)] = raw
                builder.vectorNumElems = len(raw)
                data = builder.EndVector()
            schema.BufferStart(builder)
            if data is not None:
                schema.BufferAddData(builder, data)
            schema.BufferAddOffset(builder, self.offset)
            schema.BufferAddSize(builder, self.size)
            return schema.BufferEnd(builder)

    buffers = []
    for buffer in model.buffers or []:
        aligned = AlignedBuffer()
        aligned.data, aligned.offset, aligned.size = buffer.data, buffer.offset, buffer.size
        buffers.append(aligned)
    model.buffers = buffers
    return _pack(model, b"TFL3")


def embed_metadata(content: bytes, entries: Mapping[str, bytes], files: Mapping[str, bytes] | None = None) -> bytes:
    """`content` (a .tflite flatbuffer) with `entries` (name → bytes) in its metadata table, replacing entries of
    the same names, and `files` appended as a zip (the TFLite loader ignores trailing bytes; metadata readers find
    the archive from its end, as TFLite's metadata populator writes it)."""
    schema = _tflite_schema()
    model = schema.ModelT.InitFromPackedBuf(bytearray(content[: _flatbuffer_size(content)]), 0)
    names = {name.encode() for name in entries}
    model.metadata = [m for m in (model.metadata or []) if m.name not in names and m.name not in entries]
    for name, data in entries.items():
        buffer = schema.BufferT()
        buffer.data = np.frombuffer(data, np.uint8)
        model.buffers.append(buffer)
        entry = schema.MetadataT()
        entry.name, entry.buffer = name, len(model.buffers) - 1
        model.metadata.append(entry)
    out = io.BytesIO(_repack(model, schema))
    if files:
        with zipfile.ZipFile(out, "a", zipfile.ZIP_STORED) as archive:
            for name, data in files.items():
                archive.writestr(name, data)
    return out.getvalue()


def _flatbuffer_size(content: bytes) -> int:
    """The length of the flatbuffer at the start of `content`, without an appended zip (0 when there is none)."""
    try:
        with zipfile.ZipFile(io.BytesIO(content)) as archive:
            return min((info.header_offset for info in archive.infolist()), default=len(content))
    except zipfile.BadZipFile:
        return len(content)


def phone_file(
    content: bytes, suite: Mapping[str, Any], labels: Sequence[str], anchors: np.ndarray | None, phone: bytes
) -> bytes:
    """The converter's `content` as it ships: float outputs, the phone runtimes' metadata `phone` (model_metadata)
    with `labels` as its label file, and the suite's own entries."""
    entries = {TFLITE_METADATA: phone, METADATA_NAME: json.dumps(dict(suite)).encode()}
    if anchors is not None:
        entries[ANCHORS_NAME] = np.ascontiguousarray(anchors, dtype="<f4").tobytes()
    if any("\n" in label for label in labels):
        raise ExportError("class names cannot contain line breaks (the label file has one name per line)")
    return embed_metadata(float_outputs(content), entries, {LABELS_FILE: ("\n".join(labels) + "\n").encode()})


def read_tflite_metadata(path: str | os.PathLike) -> tuple[dict[str, Any], np.ndarray | None]:
    """(the suite's metadata, anchors or None) of a .tflite written by tools.export; an ExportError for any other
    file."""
    schema = _tflite_schema()
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
        raise ExportError(
            f"{path}: a .tflite without the suite's metadata (class names, input size, "
            "normalisation): export the checkpoint with `python -m tools.export CKPT --format tflite`"
        )
    try:
        metadata = json.loads(bytes(entries[METADATA_NAME]).decode())
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ExportError(f"{path}: its {METADATA_NAME} metadata entry is damaged ({e}): export it again") from None
    anchors = entries.get(ANCHORS_NAME)
    return metadata, None if anchors is None else np.frombuffer(bytes(anchors), "<f4").reshape(-1, 4).copy()


def read_labels(path: str | os.PathLike) -> list[str]:
    """The class names of the label file a .tflite carries (what MediaPipe and Android Studio show)."""
    try:
        with zipfile.ZipFile(path) as archive:
            return archive.read(LABELS_FILE).decode().splitlines()
    except (zipfile.BadZipFile, KeyError) as e:
        raise ExportError(f"{path}: no {LABELS_FILE} packed in the file ({e})") from None
