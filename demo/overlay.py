"""Drawing on RGB uint8 frames for the video demo and `make demo`: masks blended in, boxes with class names and
scores, a legend of the classes shown, the running FPS, a contact sheet of frames, and atomic PNG writes.

Colours come from one table, the VOC palette of eval's overlays (PALETTE), for masks (blend) and boxes alike, so a
class has the same colour on its mask, its box and in the legend, and the same colour here as in the evaluation
reports.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Mapping, Sequence

import cv2
import numpy as np

from common.files import atomic_path
from eval.segmentation_report import colourise

PALETTE: np.ndarray = colourise(np.arange(256))  # 256×3 uint8, class index → RGB
Colour = tuple[int, int, int]
_FONT = cv2.FONT_HERSHEY_SIMPLEX


def write_png(path: Path, rgb: np.ndarray) -> None:
    """Atomic PNG write (temp file + rename)."""
    with atomic_path(path) as tmp:
        cv2.imwrite(str(tmp), cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR))


def colour_mask(mask: np.ndarray) -> np.ndarray:
    """Class-index mask → RGB in the VOC palette."""
    return PALETTE[mask]


def blend(image: np.ndarray, mask: np.ndarray, alpha: float = 0.5) -> np.ndarray:
    """The mask's colours over `image` at `alpha`, where it labels a class (not background 0 nor ignore 255)."""
    coloured = colour_mask(mask)
    labelled = ((mask > 0) & (mask < 255))[..., None]
    return np.where(labelled, (image * (1 - alpha) + coloured * alpha).astype(np.uint8), image)


def class_colours(names: Sequence[str], segmentation_names: Sequence[str] = ()) -> list[Colour]:
    """The colour of each detection class: that of the segmentation class of the same name when there is one
    (the pedestrian detector's "person" is index 1, VOC's is 15), else the palette entry of its own index."""
    return [
        _rgb(PALETTE[segmentation_names.index(name) if name in segmentation_names else i % 256])
        for i, name in enumerate(names)
    ]


def _rgb(colour: np.ndarray) -> Colour:
    return int(colour[0]), int(colour[1]), int(colour[2])


def _text_style(image: np.ndarray) -> tuple[float, int]:
    """Font scale and stroke that stay legible from 160-pixel thumbnails to 4K frames."""
    scale = max(0.35, min(image.shape[:2]) / 900)
    return scale, max(1, round(scale * 2))


def _ink(background: Colour) -> Colour:
    """Black or white text, whichever reads better on `background`."""
    r, g, b = background
    return (0, 0, 0) if 0.299 * r + 0.587 * g + 0.114 * b > 140 else (255, 255, 255)


def _label(image: np.ndarray, text: str, x: int, y: int, colour: Colour) -> None:
    """`text` on a filled box of `colour` whose top-left corner is (x, y), moved inside the image."""
    scale, stroke = _text_style(image)
    (w, h), base = cv2.getTextSize(text, _FONT, scale, stroke)
    x = min(max(0, x), max(0, image.shape[1] - w - 4))
    y = min(max(0, y), max(0, image.shape[0] - h - base - 4))
    cv2.rectangle(image, (x, y), (x + w + 4, y + h + base + 4), colour, -1)
    cv2.putText(image, text, (x + 2, y + h + 2), _FONT, scale, _ink(colour), stroke, cv2.LINE_AA)


def draw_detections(
    image: np.ndarray,
    boxes: np.ndarray,
    scores: np.ndarray,
    labels: np.ndarray,
    names: Sequence[str],
    colours: Sequence[Colour],
) -> None:
    """Boxes (x0, y0, x1, y1 pixels) in their class colour, "name 0.91" above each (inside when at the top)."""
    _, stroke = _text_style(image)
    thickness = max(2, stroke)
    for (x0, y0, x1, y1), score, label in zip(np.round(boxes).astype(int), scores, labels, strict=True):
        colour = colours[label]
        cv2.rectangle(image, (x0, y0), (x1, y1), colour, thickness, cv2.LINE_AA)
        text = f"{names[label]} {score:.2f}"
        (_, h), base = cv2.getTextSize(text, _FONT, *_text_style(image))
        top = y0 - h - base - 4
        _label(image, text, x0, top if top >= 0 else y0 + thickness, colour)


def draw_legend(image: np.ndarray, entries: Mapping[str, Colour]) -> None:
    """A swatch and the name of each class drawn in this frame, top right on a darkened panel."""
    if not entries:
        return
    scale, stroke = _text_style(image)
    sizes = [cv2.getTextSize(name, _FONT, scale, stroke)[0] for name in entries]
    line = max(h for _, h in sizes) + 8
    swatch = line - 6
    width = swatch + 12 + max(w for w, _ in sizes)
    x0 = max(0, image.shape[1] - width - 8)
    y1 = min(image.shape[0], 4 + line * len(entries) + 4)
    panel = image[4:y1, x0 : image.shape[1] - 4]
    panel[:] = panel // 3  # darken in place: the legend reads on any background
    for i, (name, colour) in enumerate(entries.items()):
        y = 8 + i * line
        cv2.rectangle(image, (x0 + 4, y), (x0 + 4 + swatch, y + swatch), colour, -1)
        cv2.putText(image, name, (x0 + swatch + 10, y + swatch - 1), _FONT, scale, (255, 255, 255), stroke, cv2.LINE_AA)


def draw_fps(image: np.ndarray, fps: float) -> None:
    """The running frame rate, bottom left: the top holds the legend and the labels of boxes touching the top."""
    _label(image, f"{fps:.1f} FPS", 4, image.shape[0], (0, 0, 0))


def letterbox(image: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """`image` scaled to fit (width, height) with its aspect kept, centred on black: one size for every tile of a
    contact sheet and every frame of a video, whatever the inputs' sizes."""
    width, height = size
    h, w = image.shape[:2]
    if (w, h) == (width, height):
        return image
    scale = min(width / w, height / h)
    nw, nh = max(1, min(width, round(w * scale))), max(1, min(height, round(h * scale)))
    canvas = np.zeros((height, width, 3), np.uint8)
    y, x = (height - nh) // 2, (width - nw) // 2
    canvas[y : y + nh, x : x + nw] = cv2.resize(image, (nw, nh), interpolation=cv2.INTER_AREA)
    return canvas


def contact_sheet(frames: Sequence[np.ndarray], columns: int = 4, gap: int = 4) -> np.ndarray:
    """The frames in a grid on white, each fitted into the first frame's size."""
    if not frames:
        raise ValueError("a contact sheet needs at least one frame")
    h, w = frames[0].shape[:2]
    columns = min(columns, len(frames))
    rows = math.ceil(len(frames) / columns)
    sheet = np.full((rows * h + (rows - 1) * gap, columns * w + (columns - 1) * gap, 3), 255, np.uint8)
    for i, frame in enumerate(frames):
        y, x = (i // columns) * (h + gap), (i % columns) * (w + gap)
        sheet[y : y + h, x : x + w] = letterbox(frame, (w, h))
    return sheet


def save_contact_sheet(frames: Sequence[np.ndarray], path: str | Path, columns: int = 4) -> Path:
    """Write `contact_sheet(frames)` as a PNG, atomically (never a half-written file under `path`)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    write_png(path, contact_sheet(frames, columns))
    return path
