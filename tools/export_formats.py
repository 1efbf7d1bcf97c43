"""Writing an export graph to ONNX and TorchScript with its metadata, and verifying the files against eager PyTorch
before they are put in place: each file is written under a temporary name (common.files.atomic_path) and renamed
only when every requested file is written and agrees.

The metadata (preset, image size, mean/std, class names, SSDLite's NMS settings) is stored as JSON values: ONNX
`metadata_props`, TorchScript extra file config.txt. `read_metadata` never runs the file: a TorchScript archive is a
zip, and loading it with torch.jit.load would run the TorchScript code inside (a module's `__setstate__`, for one),
so the config.txt entry is read with zipfile.
"""

from __future__ import annotations

import contextlib
import json
import os
import warnings
import zipfile
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from backbone.predictor import fuse_for_inference
from common.errors import EXIT_CHECK_FAILED
from common.files import atomic_path
from tools.export_graphs import ATOL, ExportError, ExportGraph, Outputs, require

SUFFIXES = {"onnx": ".onnx", "torchscript": ".torchscript"}  # yolov5's names
TORCHSCRIPT_METADATA = "config.txt"


def add_onnx_metadata(proto: Any, metadata: Mapping[str, Any]) -> None:
    """Store each entry of `metadata` as a JSON value in the ONNX model's metadata_props."""
    for key, value in metadata.items():
        proto.metadata_props.add(key=key, value=json.dumps(value))


def torchscript_extra_files(metadata: Mapping[str, Any]) -> dict[str, str]:
    """The `_extra_files` argument of torch.jit.save that carries `metadata`."""
    return {TORCHSCRIPT_METADATA: json.dumps(metadata)}


def read_metadata(path: str | os.PathLike) -> dict[str, Any]:
    """The metadata of an exported .onnx or .torchscript file, read without running anything in it."""
    path = Path(path)
    if path.suffix == SUFFIXES["onnx"]:
        proto = require("onnx").load(str(path), load_external_data=False)
        return {entry.key: json.loads(entry.value) for entry in proto.metadata_props}
    return json.loads(_torchscript_entry(path))


def _torchscript_entry(path: Path) -> bytes:
    """The bytes of `<archive>/extra/config.txt` (torch.jit.save names the top folder after the file it wrote)."""
    try:
        with zipfile.ZipFile(path) as archive:
            names = [n for n in archive.namelist() if n.split("/")[1:] == ["extra", TORCHSCRIPT_METADATA]]
            if len(names) != 1:
                raise ExportError(
                    f"{path}: a TorchScript file without one extra/{TORCHSCRIPT_METADATA} entry: "
                    "not written by tools.export; export the checkpoint again"
                )
            return archive.read(names[0])
    except (zipfile.BadZipFile, OSError) as e:
        raise ExportError(f"{path}: not a readable TorchScript file ({e})") from e


DEFAULT_OPSET = 17  # yolov5's default, read by every current ONNX Runtime
# 11: the first opset with Pad and Resize sizes computed in the graph (TF "SAME" padding, align_corners);
# 20: the newest the TorchScript-based exporter writes.
OPSETS = range(11, 21)
FORMATS = ("onnx", "torchscript")
INPUT_NAME = "images"


@dataclass(frozen=True)
class Check:
    """One exported file against eager PyTorch at one batch size."""

    format: str
    batch: int
    diffs: dict[str, float]  # max abs difference of each float output (inf: another shape)
    agrees: bool  # post-processing (NMS or argmax) gives the same result
    summary: str

    @property
    def ok(self) -> bool:
        return self.agrees and all(d <= ATOL for d in self.diffs.values())


class VerificationError(ExportError):
    """An exported file disagrees with eager PyTorch; nothing was written. The entry point prints the table of
    checks (`details`) before the error line, and exits 1."""

    exit_status = EXIT_CHECK_FAILED

    def __init__(self, checks: list[Check]) -> None:
        self.checks = checks
        self.details = format_table(checks)
        formats = sorted({c.format for c in checks if not c.ok})
        super().__init__(
            f"the {' and '.join(formats)} file disagrees with eager PyTorch (table above), so nothing was written; "
            "--no-verify writes the files anyway, for inspection"
        )


@contextlib.contextmanager
def quiet_torchscript() -> Iterator[None]:
    """Tracing fixes the spatial size by design (TF "SAME" padding is computed from it),
    which is what the TracerWarnings say, and torch 2.15 flags TorchScript and the ONNX exporter built on it as
    deprecated; the verification is the check that matters, so these warnings would only bury its table."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", torch.jit.TracerWarning)
        warnings.simplefilter("ignore", DeprecationWarning)
        warnings.simplefilter("ignore", FutureWarning)
        yield


def write_onnx(graph: nn.Module, example: torch.Tensor, path: Path, opset: int, metadata: Mapping) -> None:
    """ONNX with a dynamic batch axis on the input and every output, metadata as JSON values.

    The TorchScript-based exporter (dynamo=False), although torch 2.15 defaults to the torch.export-based one:
    both give the same numbers on these models, but the new one needs onnxscript, takes about 10 s per model
    instead of under 1 s, and writes the weights to a separate .data file, so one atomic rename would become two.
    """
    onnx = require("onnx")
    names = (INPUT_NAME, *graph.output_names)
    with quiet_torchscript(), torch.no_grad():
        torch.onnx.export(
            graph,
            (example,),
            str(path),
            dynamo=False,
            opset_version=opset,
            input_names=[INPUT_NAME],
            output_names=list(graph.output_names),
            dynamic_axes={name: {0: "batch"} for name in names},
        )
    proto = onnx.load(str(path))
    add_onnx_metadata(proto, metadata)
    onnx.checker.check_model(proto)
    onnx.save(proto, str(path))


def write_torchscript(graph: nn.Module, example: torch.Tensor, path: Path, metadata: Mapping) -> None:
    """A traced module (no Python control flow is left to script), metadata in the extra file config.txt."""
    with quiet_torchscript(), torch.no_grad():
        module = torch.jit.trace(graph, example, check_trace=False)
        torch.jit.save(module, str(path), _extra_files=torchscript_extra_files(metadata))


def _onnx_runner(path: Path) -> Callable[[torch.Tensor], Outputs]:
    ort = require("onnxruntime")
    options = ort.SessionOptions()
    options.intra_op_num_threads = torch.get_num_threads()  # the threads eager PyTorch gets, not every core
    session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    return lambda x: tuple(torch.from_numpy(out) for out in session.run(None, {INPUT_NAME: x.numpy()}))


def _torchscript_runner(path: Path) -> Callable[[torch.Tensor], Outputs]:
    with quiet_torchscript():
        module = torch.jit.load(str(path))
    return lambda x: tuple(module(x))


RUNNERS = {"onnx": _onnx_runner, "torchscript": _torchscript_runner}


def _max_diff(expected: torch.Tensor, actual: torch.Tensor) -> float:
    if expected.shape != actual.shape:
        return float("inf")
    return float((expected - actual).abs().max())


@torch.no_grad()
def verify(graph: ExportGraph, files: Mapping[str, Path], images: Sequence[np.ndarray]) -> list[Check]:
    """Each file against the eager, unfused model on `images`, at batch 1 and at batch len(images) (the dynamic
    axis): raw outputs, then NMS or argmax on both."""
    runners = {fmt: RUNNERS[fmt](path) for fmt, path in files.items()}
    checks = []
    for batch in [images[:1], images] if len(images) > 1 else [images]:
        x, sizes = graph.prepare(batch)
        expected = graph(x)
        for fmt, run in runners.items():
            actual = run(x)
            diffs = {
                name: _max_diff(e, a)
                for name, e, a in zip(graph.output_names, expected, actual, strict=True)
                if e.is_floating_point()
            }
            agrees, summary = graph.agreement(expected, actual, sizes)
            checks.append(Check(fmt, len(batch), diffs, agrees, summary))
    return checks


def format_table(checks: Sequence[Check]) -> str:
    """The differences, one row per file and batch size."""
    names = list(checks[0].diffs)
    header = ["format", "batch", *(f"max|Δ| {name}" for name in names), "after post-processing", "result"]
    rows = [
        [c.format, str(c.batch), *(f"{c.diffs[n]:.1e}" for n in names), c.summary, "ok" if c.ok else "FAIL"]
        for c in checks
    ]
    table = [header, *rows]
    widths = [max(len(row[i]) for row in table) for i in range(len(header))]
    return "\n".join(
        "  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)).rstrip() for row in table
    )


def export(
    graph: ExportGraph,
    formats: Sequence[str],
    out_dir: Path,
    name: str,
    opset: int = DEFAULT_OPSET,
    images: Sequence[np.ndarray] = (),
) -> tuple[list[Path], list[Check]]:
    """Write `name`.onnx / `name`.torchscript in `out_dir` from the BN-folded model and, given `images`, verify them
    first; files are only put in place once all are written and agree (else VerificationError)."""
    targets = {fmt: out_dir / f"{name}{SUFFIXES[fmt]}" for fmt in formats}
    deploy = fuse_for_inference(graph)
    example = torch.zeros(2, 3, *graph.image_size)  # batch 2, so that no size of 1 is taken for a constant
    metadata = graph.metadata()
    with contextlib.ExitStack() as stack:
        staged = {fmt: stack.enter_context(atomic_path(path)) for fmt, path in targets.items()}
        for fmt, tmp in staged.items():
            if fmt == "onnx":
                write_onnx(deploy, example, tmp, opset, metadata)
            else:
                write_torchscript(deploy, example, tmp, metadata)
        checks = verify(graph, staged, images) if len(images) else []
        if not all(check.ok for check in checks):
            raise VerificationError(checks)
    return list(targets.values()), checks
