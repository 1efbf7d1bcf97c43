"""A short video of the synthetic dataset's validation scenes, so `make demo` can run the video demo offline without
shipping a video file: each scene is held for a while under a slow zoom and pan (a Ken Burns move), which gives
the models moving content and the video codec something better than a slide show.

    python -m demo.synthetic_video --out runs/demo/synthetic.mp4 [--data-root data/synthetic --seconds 8 --fps 15]
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import cv2
import numpy as np

from common.cli import new_parser, run_cli
from common.errors import UserError
from common.images import read_image
from datasets.sources import DEFAULT_SYNTHETIC_ROOT, ensure_synthetic
from datasets.synthetic import SyntheticPaths
from demo.sources import AtomicVideoWriter

ZOOM = 1.25  # how far each scene zooms in while it is on screen


def ken_burns(image: np.ndarray, progress: float, move: int) -> np.ndarray:
    """`image` zoomed by 1..ZOOM as `progress` goes 0..1, drifting towards one of four corners (`move` % 4) and
    zooming in or out (`move` // 4 % 2); sub-pixel (bilinear), so the motion is smooth."""
    h, w = image.shape[:2]
    progress = progress if move // 4 % 2 == 0 else 1 - progress
    zoom = 1 + (ZOOM - 1) * progress
    sign_x, sign_y = (1, 1, -1, -1)[move % 4], (1, -1, 1, -1)[move % 4]
    # The view's centre moves as far as the zoom allows without showing anything outside the image.
    cx = (w - 1) / 2 + sign_x * progress * (w / 2) * (1 - 1 / zoom)
    cy = (h - 1) / 2 + sign_y * progress * (h / 2) * (1 - 1 / zoom)
    to_source = np.float32([[1 / zoom, 0, cx - (w - 1) / (2 * zoom)], [0, 1 / zoom, cy - (h - 1) / (2 * zoom)]])
    return cv2.warpAffine(
        image, to_source, (w, h), flags=cv2.INTER_LINEAR | cv2.WARP_INVERSE_MAP, borderMode=cv2.BORDER_REFLECT
    )


def write_synthetic_video(
    root: str | Path, out_path: str | Path, seconds: float = 8.0, fps: float = 15.0, hold: float = 1.0
) -> Path:
    """Write `seconds` of video from the val images of the synthetic dataset at `root`, each scene on screen for
    `hold` seconds (the images repeat if there are too few), with 'mp4v' into a temporary file renamed to
    `out_path` once complete. Returns `out_path`."""
    images = sorted(SyntheticPaths(Path(root)).coco_images("val").glob("*.jpg"))
    if not images:
        raise UserError(
            f"{root}: no synthetic val images in coco/val: draw the dataset first "
            "(python -m datasets.synthetic --out DIR)"
        )
    if seconds <= 0 or fps <= 0 or hold <= 0:
        raise ValueError(f"seconds, fps and hold must be positive, got {seconds}, {fps}, {hold}")
    per_scene = max(1, round(hold * fps))
    with AtomicVideoWriter(out_path, fps, "mp4v") as writer:
        for t in range(max(1, round(seconds * fps))):
            scene, step = divmod(t, per_scene)
            if step == 0:
                image = read_image(images[scene % len(images)])
            writer.write(ken_burns(image, step / per_scene, scene))
        return writer.commit()


def main(argv: list[str] | None = None) -> int:
    parser = new_parser("python -m demo.synthetic_video", __doc__)
    parser.add_argument("--out", type=Path, required=True, help="the video to write (.mp4)")
    parser.add_argument(
        "--data-root",
        type=Path,
        default=DEFAULT_SYNTHETIC_ROOT,
        help=f"synthetic dataset folder, drawn there if absent (default: {DEFAULT_SYNTHETIC_ROOT})",
    )
    parser.add_argument("--seconds", type=float, default=8.0, help="length (default: 8)")
    parser.add_argument("--fps", type=float, default=15.0, help="frame rate (default: 15)")
    parser.add_argument("--hold", type=float, default=1.0, help="seconds each scene stays on screen (default: 1)")

    def check(parser: argparse.ArgumentParser, args: argparse.Namespace) -> None:
        for flag in ("seconds", "fps", "hold"):
            if getattr(args, flag) <= 0:
                parser.error(f"--{flag} must be positive, got {getattr(args, flag)}")

    def body(args: argparse.Namespace) -> Path:
        return write_synthetic_video(ensure_synthetic(args.data_root), args.out, args.seconds, args.fps, args.hold)

    print(f"wrote {run_cli(parser, argv, check, body)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
