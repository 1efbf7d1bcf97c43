"""Video demo: SSDLite boxes and/or Mobile DeepLabv3 masks drawn on a video file, a webcam, an image folder or
one image, with a legend of the classes shown and the running FPS.

    python -m demo.video --source clip.mp4 --det ssdlite.pt --out runs/video/clip.mp4
    python -m demo.video --source clip.mp4 --det pedestrian.pt --seg deeplab_tf.pt --out both.mp4 --stride 2
    python -m demo.video --source photos/ --seg deeplab_tf.pt --save-images runs/video/photos --contact-sheet sheet.png
    python -m demo.video --source 0 --det pedestrian.pt --show        # webcam: q, Esc or Ctrl-C stops

Models are any checkpoint of this suite's, trained or imported (tools/import_tf_detection.py,
tools/import_tf_segmentation.py), a weights name, or an on-device .tflite from `tools.export --format tflite`
(fp32 or int8, run in the LiteRT interpreter). Frames are resized (--resize) before inference, so a smaller output is also faster.
Nothing opens a window unless --show is given. The video is written to a hidden temporary file beside --out and
renamed at the end: Ctrl-C on a file or folder source deletes it (--out keeps its previous content, if any); on a
webcam, Ctrl-C is the normal way to stop, so the video of the frames so far is finished and kept.
"""

from __future__ import annotations

import argparse
import contextlib
import itertools
import os
import sys
import time
from collections import Counter, deque
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable, Iterator, Sequence

import cv2
import numpy as np
from tqdm import tqdm

from common.cli import check_device_flag, new_parser, run_cli
from common.distributed import resolve_device
from common.errors import Interrupted, UserError
from demo.annotator import Annotated, Annotator, load_annotator
from demo.overlay import draw_fps, save_contact_sheet, write_png
from demo.sources import AtomicVideoWriter, Frame, Source, open_source

THUMBNAIL_SIDE = 320  # longest side of the frames kept for the contact sheet


class FpsMeter:
    """Frames per second over about the last second: follows changes in load, and is not fooled by a batch of
    frames all finishing at once."""

    def __init__(self, window: float = 1.0) -> None:
        self.window = window
        self._marks: deque[tuple[float, int]] = deque([(time.perf_counter(), 0)])

    def update(self, frames: int) -> float:
        now = time.perf_counter()
        self._marks.append((now, self._marks[-1][1] + frames))
        while len(self._marks) > 2 and now - self._marks[1][0] >= self.window:
            self._marks.popleft()
        (start, first), (end, last) = self._marks[0], self._marks[-1]
        return (last - first) / (end - start) if end > start else 0.0


class FrameSampler:
    """Up to `count` thumbnails spread evenly over a run whose length may be unknown (a webcam): keep every
    `step`-th frame, and when more than `count` are kept, drop every other one and double the step."""

    def __init__(self, count: int) -> None:
        self.count, self.step = count, 1
        self.frames: list[np.ndarray] = []
        self._seen = 0

    def add(self, image: np.ndarray) -> None:
        if self._seen % self.step == 0:
            scale = THUMBNAIL_SIDE / max(image.shape[:2])
            small = image if scale >= 1 else cv2.resize(image, None, fx=scale, fy=scale, interpolation=cv2.INTER_AREA)
            self.frames.append(small)
            if len(self.frames) > self.count:
                self.frames, self.step = self.frames[::2], self.step * 2
        self._seen += 1


class Window:
    """The --show window. Whether one can open is checked before any work, so a headless run stops at once."""

    def __init__(self, title: str) -> None:
        if sys.platform.startswith("linux") and not (os.environ.get("DISPLAY") or os.environ.get("WAYLAND_DISPLAY")):
            raise UserError(
                "--show: no display here (neither DISPLAY nor WAYLAND_DISPLAY is set): drop --show and "
                "write the result with --out or --save-images"
            )
        try:
            cv2.namedWindow(title, cv2.WINDOW_NORMAL)
        except cv2.error:
            raise UserError(
                "--show: this OpenCV has no GUI support (the suite installs opencv-python-headless): drop "
                "--show and use --out, or run in an environment with opencv-python"
            ) from None
        self.title = title

    def show(self, rgb: np.ndarray) -> bool:
        """Display a frame; False once the user asks to stop (q, Esc, or the window closed)."""
        cv2.imshow(self.title, cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR))
        key = cv2.waitKey(1) & 0xFF
        return key not in (ord("q"), 27) and cv2.getWindowProperty(self.title, cv2.WND_PROP_VISIBLE) >= 1

    def close(self) -> None:
        cv2.destroyWindow(self.title)


def resize_spec(text: str) -> float:
    """--resize: a scale factor up to 4 (0.5 halves), or the longest side in pixels from 16 (an integer)."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
    if 0 < value <= 4 or (value >= 16 and value.is_integer()):
        return value
    raise argparse.ArgumentTypeError(f"{text}: give a scale factor in (0, 4] or a longest side of at least 16 pixels")


def resized(rgb: np.ndarray, spec: float | None) -> np.ndarray:
    """The frame at its --resize size (area averaging when shrinking, so small outputs do not alias)."""
    if spec is None:
        return rgb
    scale = spec if spec <= 4 else spec / max(rgb.shape[:2])
    if scale == 1:
        return rgb
    size = (max(1, round(rgb.shape[1] * scale)), max(1, round(rgb.shape[0] * scale)))
    return cv2.resize(rgb, size, interpolation=cv2.INTER_AREA if scale < 1 else cv2.INTER_LINEAR)


@dataclass
class DemoResult:
    """What a run did, for the summary and for callers such as `make demo`."""

    frames: int
    seconds: float
    out: Path | None = None  # the annotated video
    image_dir: Path | None = None  # the annotated images
    contact_sheet: Path | None = None
    samples: list[np.ndarray] = field(default_factory=list)  # annotated thumbnails spread over the run
    classes: Counter[str] = field(default_factory=Counter)  # frames in which each class was drawn

    @property
    def fps(self) -> float:
        return self.frames / self.seconds if self.seconds > 0 else 0.0


def build_parser() -> argparse.ArgumentParser:
    parser = new_parser("python -m demo.video", __doc__)
    g = parser.add_argument_group("input")
    g.add_argument(
        "--source",
        required=True,
        metavar="SRC",
        help="a video file, a webcam index (0, 1, ...), a folder of images or one image",
    )
    g.add_argument(
        "--stride",
        type=int,
        default=1,
        metavar="N",
        help="process every Nth frame (yolov5: --vid-stride); the video keeps real speed (default: 1)",
    )
    g.add_argument("--max-frames", type=int, default=None, metavar="N", help="stop after N processed frames")
    g.add_argument(
        "--resize",
        type=resize_spec,
        default=None,
        metavar="S",
        help="resize frames before inference and output: a scale factor up to 4 (0.5) or the longest side "
        "in pixels (640)",
    )
    g = parser.add_argument_group("models (at least one)")
    g.add_argument(
        "--det",
        metavar="CKPT",
        help="SSDLite checkpoint (trained or imported), weights name (e.g. ssdlite_pedestrian) or exported .tflite",
    )
    g.add_argument(
        "--seg",
        metavar="CKPT",
        help="Mobile DeepLabv3 checkpoint (trained or imported), weights name "
        "(e.g. deeplab_coral_voc) or exported .tflite",
    )
    g.add_argument(
        "--score-threshold",
        type=float,
        default=0.3,
        metavar="T",
        help="smallest detection score drawn (yolov5: --conf-thres) (default: 0.3)",
    )
    g = parser.add_argument_group("run")
    g.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N (default: auto: CUDA if present)")
    g.add_argument("--half", action="store_true", help="fp16 inference (autocast); CUDA only")
    g.add_argument(
        "--batch-size",
        "--batch",
        type=int,
        default=1,
        metavar="N",
        help="frames per model call: for GPU throughput; on a CPU 1 is fastest (default: 1)",
    )
    g.add_argument("--quiet", action="store_true", help="no progress bar")
    g = parser.add_argument_group("output (at least one)")
    g.add_argument("--out", type=Path, metavar="PATH", help="annotated video (.mp4)")
    g.add_argument("--codec", default="mp4v", metavar="FOURCC", help="--out codec (default: mp4v)")
    g.add_argument(
        "--save-images", type=Path, metavar="DIR", help="image sources: write each annotated image as DIR/<name>.png"
    )
    g.add_argument("--show", action="store_true", help="show the frames in a window (needs a display; q stops)")
    g.add_argument("--contact-sheet", type=Path, metavar="PNG", help="a grid of annotated frames spread over the run")
    g.add_argument(
        "--sheet-frames",
        type=int,
        default=8,
        metavar="N",
        help="frames on the contact sheet, and kept in the result of run() (default: 8)",
    )
    return parser


def check_arguments(parser: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    if args.det is None and args.seg is None:
        parser.error("no model: pass --det CKPT (SSDLite boxes), --seg CKPT (DeepLab masks), or both")
    if not (args.out or args.save_images or args.show or args.contact_sheet):
        parser.error("no output: pass --out VIDEO.mp4, --save-images DIR, --contact-sheet PNG or --show")
    for flag in ("stride", "batch_size", "max_frames", "sheet_frames"):
        value = getattr(args, flag)
        if value is not None and value < 1:
            parser.error(f"--{flag.replace('_', '-')} must be at least 1, got {value}")
    if not 0 <= args.score_threshold <= 1:
        parser.error(f"--score-threshold must be between 0 and 1, got {args.score_threshold}")
    if len(args.codec) != 4:
        parser.error(f"--codec {args.codec!r}: a FourCC is 4 characters, e.g. mp4v, avc1, MJPG")
    check_device_flag(parser, args.device)


def batches(frames: Iterable[Frame], size: int) -> Iterator[list[Frame]]:
    iterator = iter(frames)
    while batch := list(itertools.islice(iterator, size)):
        yield batch


def annotated_frames(
    source: Source, annotator: Annotator, args: argparse.Namespace
) -> Iterator[tuple[Frame, Annotated]]:
    """Each frame of the source (up to --max-frames) with its annotations and the running FPS drawn, computed
    --batch-size frames at a time."""
    meter = FpsMeter()
    for batch in batches(itertools.islice(source, args.max_frames), args.batch_size):
        annotated = annotator([resized(frame.rgb, args.resize) for frame in batch])
        fps = meter.update(len(batch))
        for frame, result in zip(batch, annotated, strict=True):
            draw_fps(result.image, fps)
            yield frame, result


def process(args: argparse.Namespace) -> DemoResult:
    """The demo loop: read, annotate a batch, then write, save, show and sample each frame."""
    device = resolve_device(args.device)
    if args.half and device.type != "cuda":
        raise UserError(
            f"--half: fp16 inference runs on CUDA only, and the device is {device}: drop --half "
            "(or pass --device cuda on a machine with a GPU)"
        )
    with contextlib.ExitStack() as stack:
        source: Source = open_source(args.source, args.stride)
        stack.callback(source.close)
        if args.save_images and not source.images:
            raise UserError(
                f"--save-images: only for image sources (a folder or one image); --source "
                f"{args.source} is a video: use --out"
            )
        window = Window(f"demo.video: {args.source}") if args.show else None
        if window:
            stack.callback(window.close)
        annotator = load_annotator(args.det, args.seg, device, args.half, args.score_threshold)
        writer = stack.enter_context(AtomicVideoWriter(args.out, source.fps, args.codec)) if args.out else None
        if args.save_images:
            args.save_images.mkdir(parents=True, exist_ok=True)
        total = source.total if args.max_frames is None else min(source.total or args.max_frames, args.max_frames)
        bar = stack.enter_context(tqdm(total=total, unit="frame", desc="demo.video", disable=args.quiet))
        sampler, classes, frames = FrameSampler(args.sheet_frames), Counter[str](), 0
        start = time.perf_counter()
        try:
            for frame, result in annotated_frames(source, annotator, args):
                classes.update(result.classes)
                if writer:
                    writer.write(result.image)
                if args.save_images:
                    write_png(args.save_images / f"{frame.name}.png", result.image)
                sampler.add(result.image)
                frames += 1
                bar.update()
                if window and not window.show(result.image):
                    break
        except KeyboardInterrupt:
            bar.close()  # before the message, not after it
            if not source.live:  # leaving the `with` deletes the partial video
                kept = f": the partial video was deleted, --out {args.out} is as it was" if args.out else ""
                raise Interrupted(f"interrupted by Ctrl-C after {frames} frames{kept}") from None
            print("\nstopped by Ctrl-C", file=sys.stderr)  # the normal end of a webcam run
        seconds = time.perf_counter() - start
        result = DemoResult(frames, seconds, image_dir=args.save_images, samples=sampler.frames, classes=classes)
        if writer and writer.frames:
            result.out = writer.commit()
        if args.contact_sheet and sampler.frames:
            result.contact_sheet = save_contact_sheet(sampler.frames, args.contact_sheet)
    print_summary(result, args, annotator.runtimes)
    return result


def print_summary(result: DemoResult, args: argparse.Namespace, runtimes: dict[str, str]) -> None:
    models = "; ".join(f"{flag} {runtime}" for flag, runtime in runtimes.items())
    print(
        f"processed {result.frames} frames in {result.seconds:.1f} s: {result.fps:.1f} FPS on average "
        f"({models}; --batch-size {args.batch_size}, --stride {args.stride})"
    )
    seen = ", ".join(f"{name} ({count})" for name, count in result.classes.most_common())
    print(f"classes drawn (frames): {seen or 'none'}")
    if result.out:
        print(f"video: {result.out}")
    if result.image_dir:
        print(f"images: {result.image_dir}")
    if result.contact_sheet:
        print(f"contact sheet: {result.contact_sheet}")


def run(argv: Sequence[str] | None = None) -> DemoResult:
    """The demo as a function (for `make demo`): errors are one `error:` line on stderr and SystemExit(2)."""
    return run_cli(build_parser(), argv, check_arguments, process)


def main(argv: Sequence[str] | None = None) -> int:
    """The demo; errors are one `error:` line and exit 2, Ctrl-C one line and exit 130 (common.cli.run_cli)."""
    run(argv)
    return 0


if __name__ == "__main__":
    sys.exit(main())
