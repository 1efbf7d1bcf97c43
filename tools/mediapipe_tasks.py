"""A .tflite run the way app developers run it: Google's MediaPipe Tasks (`vision.ObjectDetector`,
`vision.ImageSegmenter`; the same C++ graphs run on Android, iOS and the web), in a subprocess with a time limit.

A model MediaPipe refuses can crash its process (a native abort) or, reportedly, hang it, so the suite never loads
MediaPipe into its own process: `detect` and `segment` start `python -m tools.mediapipe_tasks`, hand it the images
in an .npz file, and read its answers (and its timings) back from another. The export's check (tools/export_litert.py),
`make demo`'s scores of the shipped files and the deploy benchmark all go through here.

MediaPipe resizes the image to the model's input itself (stretched, aspect not kept), runs the model, decodes the
SSD boxes against the anchors in the file's metadata and keeps the best-scoring class of each box, suppressing
boxes that overlap by IoU > 0.3 whatever their class; masks come back at the image's size.
"""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from tools.export_graphs import ExportError
from tools.litert_metadata import INSTALL_MEDIAPIPE

TIME_LIMIT_S = 300  # a few hundred images at most; a hung graph ends here
MAX_DETECTIONS = 100  # as the suite's presets keep


def available() -> bool:
    """Whether MediaPipe Tasks can be run here (the mediapipe wheel is installed)."""
    return importlib.util.find_spec("mediapipe") is not None


def detect(
    path: str | Path, images: Sequence[np.ndarray], score_threshold: float, timings: list[float] | None = None
) -> list[dict[str, np.ndarray | list[str]]]:
    """ObjectDetector on each uint8 RGB image: per image {"boxes" [N, 4] (x0, y0, x1, y1) pixels, "scores" [N],
    "names" [N]}, best first. `timings` gets the seconds of each detect call (MediaPipe's resize included)."""
    found = _run("detect", path, images, {"score_threshold": score_threshold, "max_results": MAX_DETECTIONS}, timings)
    return [
        {
            "boxes": found[f"boxes{i}"].reshape(-1, 4),
            "scores": found[f"scores{i}"],
            "names": [str(n) for n in found[f"names{i}"]],
        }
        for i in range(len(images))
    ]


def segment(path: str | Path, images: Sequence[np.ndarray], timings: list[float] | None = None) -> list[np.ndarray]:
    """ImageSegmenter's category mask (uint8 class ids at the image's size) of each uint8 RGB image."""
    found = _run("segment", path, images, {}, timings)
    return [found[f"mask{i}"] for i in range(len(images))]


def _run(
    task: str, path: str | Path, images: Sequence[np.ndarray], options: dict[str, Any], timings: list[float] | None
) -> dict[str, np.ndarray]:
    if not available():
        raise ExportError(f"MediaPipe Tasks is not installed: {INSTALL_MEDIAPIPE}")
    with tempfile.TemporaryDirectory() as folder:
        request, answer = Path(folder) / "images.npz", Path(folder) / "answer.npz"
        np.savez(request, **{f"image{i}": np.ascontiguousarray(image[..., :3]) for i, image in enumerate(images)})
        command = [
            sys.executable,
            "-m",
            "tools.mediapipe_tasks",
            task,
            str(path),
            str(request),
            str(answer),
            json.dumps(options),
        ]
        try:
            result = subprocess.run(
                command, capture_output=True, text=True, timeout=TIME_LIMIT_S, cwd=Path(__file__).resolve().parents[1]
            )
        except subprocess.TimeoutExpired:
            raise ExportError(
                f"{path}: MediaPipe Tasks did not answer within {TIME_LIMIT_S} s (a hung graph)"
            ) from None
        if result.returncode != 0 or not answer.is_file():
            raise ExportError(f"{path}: MediaPipe Tasks refused it: {_reason(result)}")
        with np.load(answer) as found:
            answers = {key: found[key] for key in found.files}
    if timings is not None:
        timings.extend(answers.pop("seconds").tolist())
    return answers


def _reason(result: subprocess.CompletedProcess) -> str:
    """The refusal in one line: MediaPipe's own error (the last exception, with the lines that continue its message,
    e.g. "Unsupported output tensor type:INT64"), or how the process ended. What Python prints while shutting the
    task down after the error ("Exception ignored in ... __del__") is not the reason, so it is cut off first."""
    text = result.stderr.split("Exception ignored")[0]
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    starts = [i for i, line in enumerate(lines) if "Error" in line.split(":")[0] or line.startswith(("E0", "F0"))]
    if starts:
        said = " ".join(lines[starts[-1] :])
        return said if len(said) <= 400 else f"{said[:150]} ... {said[-200:]}"
    return f"its process ended with status {result.returncode} ({lines[-1][:200] if lines else 'no message'})"


def _serve(task: str, model: str, request: str, answer: str, options: dict[str, Any]) -> None:
    """The subprocess side: run the task on every image of `request`, write the answers (and seconds) to `answer`."""
    import mediapipe as mp
    from mediapipe.tasks.python import vision
    from mediapipe.tasks.python.core.base_options import BaseOptions

    base = BaseOptions(model_asset_path=model)
    with np.load(request) as stored:
        images = [stored[f"image{i}"] for i in range(len(stored.files))]
    out: dict[str, Any] = {}
    seconds = []
    if task == "detect":
        settings = vision.ObjectDetectorOptions(base_options=base, **options)
        with vision.ObjectDetector.create_from_options(settings) as detector:
            for i, image in enumerate(images):
                start = time.perf_counter()
                result = detector.detect(mp.Image(image_format=mp.ImageFormat.SRGB, data=image))
                seconds.append(time.perf_counter() - start)
                boxes = [
                    [
                        d.bounding_box.origin_x,
                        d.bounding_box.origin_y,
                        d.bounding_box.origin_x + d.bounding_box.width,
                        d.bounding_box.origin_y + d.bounding_box.height,
                    ]
                    for d in result.detections
                ]
                out[f"boxes{i}"] = np.asarray(boxes, np.float32).reshape(-1, 4)
                out[f"scores{i}"] = np.asarray([d.categories[0].score for d in result.detections], np.float32)
                out[f"names{i}"] = np.asarray([d.categories[0].category_name or "" for d in result.detections], str)
    else:
        settings = vision.ImageSegmenterOptions(
            base_options=base, output_category_mask=True, output_confidence_masks=False
        )
        with vision.ImageSegmenter.create_from_options(settings) as segmenter:
            for i, image in enumerate(images):
                start = time.perf_counter()
                result = segmenter.segment(mp.Image(image_format=mp.ImageFormat.SRGB, data=image))
                seconds.append(time.perf_counter() - start)
                out[f"mask{i}"] = result.category_mask.numpy_view().copy().reshape(image.shape[:2])
    np.savez(answer, seconds=np.asarray(seconds), **out)


if __name__ == "__main__":
    _serve(sys.argv[1], sys.argv[2], sys.argv[3], sys.argv[4], json.loads(sys.argv[5]))
