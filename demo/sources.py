"""Frames in and out for the video demo: the `--source` readers (video file, webcam, image folder, one image) and
the video writer that only ever shows a complete file under its final name.

Every failure to open is a UserError naming the flag and the file, in one line: OpenCV and FFmpeg print their own
warnings straight to the process's stderr, so those are muted while a file or camera is being opened.
"""

from __future__ import annotations

import contextlib
import math
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import cv2
import numpy as np

from common.cli import native_stderr_captured
from common.errors import UserError
from common.files import atomic_path
from common.images import IMAGE_SUFFIXES, read_image
from demo.overlay import letterbox

IMAGE_FPS = 5.0  # frame rate of a video made from images, with or without --stride: each shows for 0.2 s
DEFAULT_FPS = 30.0  # for cameras and files that do not say


@dataclass(frozen=True)
class Frame:
    name: str  # image file stem, or frame_NNNNNN for videos
    rgb: np.ndarray  # H×W×3 uint8


class VideoSource:
    """A video file or a webcam read through cv2.VideoCapture. The frames --stride skips are grabbed but never
    decoded to pixels, which is most of the cost of reading them."""

    images = False

    def __init__(self, capture: cv2.VideoCapture, description: str, live: bool, stride: int) -> None:
        ok, first = capture.read()
        if not ok:
            capture.release()
            raise UserError(
                f"--source {description}: opened, but no frame could be decoded: check that it plays "
                "(a damaged file, or a camera used by another program?)"
            )
        self._capture, self._first, self.stride, self.live = capture, first, stride, live
        self.description = description
        fps = capture.get(cv2.CAP_PROP_FPS)
        # The rate of the frames it yields, so that a video of them plays at the source's speed.
        self.fps = (fps if math.isfinite(fps) and 0 < fps <= 1000 else DEFAULT_FPS) / stride
        count = int(capture.get(cv2.CAP_PROP_FRAME_COUNT)) if not live else 0
        self.total: int | None = math.ceil(count / stride) if count > 0 else None  # frames it will yield

    def __iter__(self) -> Iterator[Frame]:
        bgr, index, yielded = self._first, 0, 0
        while True:
            yield Frame(f"frame_{index:06d}", cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB))
            yielded += 1
            for _ in range(self.stride - 1):
                if not self._capture.grab():
                    return self._warn_if_short(yielded)
            index += self.stride
            ok, bgr = self._capture.read()
            if not ok:
                return self._warn_if_short(yielded)

    def _warn_if_short(self, yielded: int) -> None:
        """A file that stops decoding before the frame count its header gives is truncated or damaged: the output
        then covers only part of it, which must not pass unnoticed."""
        if self.total is not None and yielded < self.total:
            warnings.warn(
                f"--source {self.description}: only {yielded} of the {self.total} frames its header "
                "announces could be decoded (a truncated or damaged file?); the output covers those",
                stacklevel=2,
            )

    def close(self) -> None:
        self._capture.release()


class ImageSource:
    """Image files in name order, decoded by datasets.images.read_image (Pillow: EXIF rotation applied,
    truncated files refused)."""

    images = True
    live = False
    fps = IMAGE_FPS

    def __init__(self, paths: list[Path], stride: int) -> None:
        self._paths = paths[::stride]
        stems = [p.stem for p in self._paths]
        # Output images are named after their inputs; a.jpg beside a.png keeps its suffix in the name.
        self._names = stems if len(set(stems)) == len(stems) else [p.name for p in self._paths]
        self.total: int | None = len(self._paths)

    def __iter__(self) -> Iterator[Frame]:
        for path, name in zip(self._paths, self._names, strict=True):
            yield Frame(name, read_image(path))

    def close(self) -> None:
        pass


Source = VideoSource | ImageSource


def open_source(spec: str, stride: int = 1) -> Source:
    """What `--source spec` names: an image folder, an image file, a video file, or a webcam index ("0")."""
    path = Path(spec)
    if path.is_dir():
        images = sorted(p for p in path.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file())
        if not images:
            raise UserError(
                f"--source {spec}: no images ({' '.join(IMAGE_SUFFIXES)}) in this folder: "
                "point it at a folder of images, one image, a video file or a webcam index"
            )
        return ImageSource(images, stride)
    if path.is_file():
        if path.suffix.lower() in IMAGE_SUFFIXES:
            return ImageSource([path], stride)
        with native_stderr_captured():
            capture = cv2.VideoCapture(str(path))
        if not capture.isOpened():
            raise UserError(
                f"--source {spec}: OpenCV cannot read this video (unknown format or codec, or a damaged "
                f"file): check that it plays, or re-encode it, e.g. ffmpeg -i {spec} -c:v libx264 "
                "out.mp4"
            )
        return VideoSource(capture, spec, live=False, stride=stride)
    if spec.isdigit():
        with native_stderr_captured():
            capture = cv2.VideoCapture(int(spec))
        if not capture.isOpened():
            raise UserError(
                f"--source {spec}: no webcam at index {spec} could be opened: check that one is "
                "connected and not in use by another program, or try another index"
            )
        return VideoSource(capture, f"webcam {spec}", live=True, stride=stride)
    raise UserError(f"--source {spec}: no such file or folder (a webcam is given by its index, e.g. --source 0)")


class AtomicVideoWriter:
    """A video written to a temporary file beside `path` and renamed to `path` by `commit()`; leaving the `with`
    block without committing (an error, Ctrl-C) deletes it, so `path` only ever holds a complete video, and a
    previous file there survives a failed run. The first frame sets the size (rounded down to even numbers, which
    MPEG-4 needs); later frames of another size are letterboxed into it."""

    def __init__(self, path: str | Path, fps: float, codec: str = "mp4v") -> None:
        self.path, self.fps, self.codec = Path(path), fps, codec
        self.frames = 0
        self.size: tuple[int, int] | None = None  # (width, height)
        self._file = contextlib.ExitStack()  # holds common.files.atomic_path once the first frame opens the file
        self._writer: cv2.VideoWriter | None = None

    def __enter__(self) -> AtomicVideoWriter:
        return self

    def __exit__(self, *exc: object) -> None:
        self.discard()

    def _open(self, height: int, width: int) -> cv2.VideoWriter:
        self.size = (max(2, width - width % 2), max(2, height - height % 2))
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise UserError(f"{self.path}: cannot create its folder ({e.strerror})") from None
        tmp = self._file.enter_context(atomic_path(self.path))
        with native_stderr_captured():
            writer = cv2.VideoWriter(str(tmp), cv2.VideoWriter_fourcc(*self.codec), self.fps, self.size)
        if not writer.isOpened():
            raise UserError(
                f"{self.path}: OpenCV cannot write a '{self.path.suffix}' video with codec "
                f"{self.codec!r} here (unknown codec or container, or a read-only folder): write a "
                ".mp4 file with codec mp4v, or .avi with MJPG"
            )
        return writer

    def write(self, rgb: np.ndarray) -> None:
        if self._writer is None:
            self._writer = self._open(*rgb.shape[:2])
        assert self.size is not None
        self._writer.write(cv2.cvtColor(letterbox(rgb, self.size), cv2.COLOR_RGB2BGR))
        self.frames += 1

    def commit(self) -> Path:
        """Finish the file (the container's index is written on release) and give it its final name."""
        if self._writer is None:
            raise UserError(f"{self.path}: no frames to write")
        self._writer.release()
        self._writer = None
        self._file.close()  # atomic_path renames the finished file over `path`
        return self.path

    def discard(self) -> None:
        if self._writer is not None:
            self._writer.release()
            self._writer = None
        self._file.__exit__(_Discarded, _Discarded(), None)  # atomic_path deletes the temporary file


class _Discarded(Exception):
    """Passed to atomic_path's exit so that it deletes the unfinished video rather than renaming it."""
