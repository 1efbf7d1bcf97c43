"""Images in: the one decoder every reader uses (any common file in, 8-bit RGB out, or an error naming the file),
in-memory image checks for inference, and the input normalisation tables the weights expect.

Pillow rather than OpenCV because Pillow refuses truncated files (OpenCV returns a partly grey image with only a
log line), and it exposes EXIF orientation, which we apply so pixels match what annotation tools showed.
"""

from __future__ import annotations

from os import PathLike
from pathlib import Path
from typing import Literal, Sequence

import cv2
import numpy as np
import torch
from PIL import ExifTags, Image, ImageOps, UnidentifiedImageError

from common.errors import DatasetError

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp")  # what a folder of images may hold

Normalization = Literal["tf", "imagenet"]
# "tf": the official TensorFlow MobileNetV2/SSDLite/DeepLab weights see pixels scaled to [-1, 1];
# "imagenet": torchvision's weights see ImageNet mean/std normalised pixels.
NORMALIZATIONS: dict[str, tuple[tuple[float, float, float], tuple[float, float, float]]] = {
    "tf": ((0.5, 0.5, 0.5), (0.5, 0.5, 0.5)),
    "imagenet": ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225)),
}


def normalization_stats(kind: Normalization) -> tuple[tuple[float, float, float], tuple[float, float, float]]:
    """(mean, std) on the [0, 1] pixel scale for the weights in use."""
    if kind not in NORMALIZATIONS:
        raise ValueError(f"unknown normalization {kind!r}: choose one of {sorted(NORMALIZATIONS)}")
    return NORMALIZATIONS[kind]


_SIXTEEN_BIT_MODES = {"I;16", "I;16B", "I;16L", "I;16N", "I"}


def read_image(path: str | PathLike[str]) -> np.ndarray:
    """Decode `path` to a writable HxWx3 uint8 RGB array with EXIF orientation applied.

    Grayscale and palette images are expanded to RGB, alpha is dropped (as torchvision's `ImageReadMode.RGB` does),
    16-bit images keep their 8 most significant bits.
    """
    path = Path(path)
    try:
        image = Image.open(path)
    except FileNotFoundError:
        raise DatasetError(
            path,
            "image file not found",
            "Check the image folder and the file name in the annotations",
            kind="missing image",
        ) from None
    except (UnidentifiedImageError, OSError, Image.DecompressionBombError) as exc:
        raise _corrupt(path, exc) from None
    with image:
        try:
            image.load()
        except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as exc:
            raise _corrupt(path, exc) from None
        if image.getexif().get(ExifTags.Base.Orientation, 1) != 1:
            image = ImageOps.exif_transpose(image)
        return _to_rgb8(image, path)


def check_image_file(path: str | PathLike[str]) -> None:
    """Raise the DatasetError `read_image` would, as cheaply as a file allows: the header read (format, size)
    without decoding the pixels, and a JPEG's or PNG's end marker looked for in its last bytes, which a truncated
    copy lacks. A training run checks its validation images so before the first epoch (docs/training.md)."""
    path = Path(path)
    try:
        with Image.open(path) as image:
            kind = image.format
        with open(path, "rb") as f:
            f.seek(max(0, path.stat().st_size - 64))
            tail = f.read()
    except FileNotFoundError:
        raise DatasetError(
            path,
            "image file not found",
            "Check the image folder and the file name in the annotations",
            kind="missing image",
        ) from None
    except (UnidentifiedImageError, OSError, Image.DecompressionBombError) as exc:
        raise _corrupt(path, exc) from None
    ends = {"JPEG": b"\xff\xd9", "PNG": b"IEND"}.get(kind or "")
    if ends is not None and ends not in tail:
        raise _corrupt(path, f"the {kind} data stops before its end marker: a truncated copy?")


def _to_rgb8(image: Image.Image, path: Path) -> np.ndarray:
    if image.mode == "RGB":
        return np.array(image)
    if image.mode in _SIXTEEN_BIT_MODES:
        gray = (np.clip(np.asarray(image, dtype=np.int64), 0, 65535) >> 8).astype(np.uint8)
        return np.repeat(gray[:, :, None], 3, axis=2)
    if image.mode == "F":
        raise DatasetError(
            path,
            "32-bit float pixels are not a supported image format",
            "Convert the file to 8-bit RGB",
            kind="corrupt image",
        )
    if image.mode == "P" and "transparency" in image.info:
        image = image.convert("RGBA")
    return np.array(image.convert("RGB"))


def _corrupt(path: Path, exc: BaseException | str) -> DatasetError:
    return DatasetError(path, f"cannot decode image ({exc})", "Replace or remove the file", kind="corrupt image")


def as_rgb(image: np.ndarray) -> np.ndarray:
    """An in-memory image for inference, H×W, H×W×1 (gray), H×W×3 or H×W×4 (alpha dropped) uint8 → H×W×3."""
    if not isinstance(image, np.ndarray) or image.dtype != np.uint8:
        kind = image.dtype if isinstance(image, np.ndarray) else type(image).__name__
        raise ValueError(f"expected an 8-bit image (numpy uint8 H×W×C), got {kind}: convert it to uint8 first")
    if image.ndim == 2:
        image = image[..., None]
    if image.ndim != 3 or image.shape[2] not in (1, 3, 4) or min(image.shape[:2]) < 1:
        raise ValueError(
            f"expected an image of shape H×W, H×W×1, H×W×3 or H×W×4 (gray, RGB, RGBA), got {list(image.shape)}"
        )
    if image.shape[2] == 1:
        return np.repeat(image, 3, axis=2)
    return image[..., :3]


def check_image_list(images: object) -> Sequence[np.ndarray]:
    """The argument of `Detector` / `Segmenter` / `predict`: a list (or tuple) of images. A bare array would be
    read row by row as images, so it is a TypeError that says how to pass one image."""
    if isinstance(images, np.ndarray):
        raise TypeError(
            f"expected a list of images, got one array of shape {list(images.shape)}: pass [image] for "
            "one image (each H×W, H×W×1, H×W×3 or H×W×4 uint8)"
        )
    if not isinstance(images, (list, tuple)):
        raise TypeError(
            f"expected a list of images (each a uint8 array H×W, H×W×1, H×W×3 or H×W×4), got {type(images).__name__}"
        )
    return images


ResizeMethod = Literal["tf_bilinear", "tf_bilinear_aligned", "opencv_linear"]
# How a model's input is resized, recorded in its preset: the resize it was trained with.
# "tf_bilinear": TF1 `tf.image.resize_bilinear` (align_corners=False, half_pixel_centers=False: source = dest × scale),
#   the TF Object Detection API's resizer (Google's SSDLite graphs); float output, no low-pass filter.
# "tf_bilinear_aligned": the same with align_corners=True, TF DeepLab's `resize_to_range` (its export graph).
# "opencv_linear": cv2.INTER_LINEAR (half-pixel centres, no low-pass filter), albumentations' `A.Resize`, so the
#   training pipeline's resize for models trained here.
RESIZE_METHODS = ("tf_bilinear", "tf_bilinear_aligned", "opencv_linear")


def check_resize_method(method: str) -> None:
    if method not in RESIZE_METHODS:
        raise ValueError(f"unknown resize method {method!r}: choose one of {', '.join(RESIZE_METHODS)}")


def _tf_axis(src: int, dst: int, aligned: bool) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """TF1 ResizeBilinear's source rows (low, high) and the weight of the high one, for one axis."""
    scale = (src - 1) / (dst - 1) if aligned and dst > 1 else src / dst
    where = np.arange(dst, dtype=np.float32) * np.float32(scale)
    low = np.floor(where).astype(np.int64)
    high = np.minimum(low + 1, src - 1)
    return np.minimum(low, src - 1), high, (where - low).astype(np.float32)


def resize_pixels(image: np.ndarray, size: tuple[int, int], method: ResizeMethod) -> np.ndarray:
    """An H×W×3 uint8 image resized to `size` (h, w) by `method`: float32 pixels on the 0..255 scale (TF's resize
    outputs floats and the graph normalises them unrounded; OpenCV's stays 8-bit and is then widened)."""
    check_resize_method(method)
    height, width = size
    if image.shape[:2] == (height, width):
        return image.astype(np.float32)
    if method == "opencv_linear":
        return cv2.resize(image, (width, height), interpolation=cv2.INTER_LINEAR).astype(np.float32)
    aligned = method == "tf_bilinear_aligned"
    y0, y1, wy = _tf_axis(image.shape[0], height, aligned)
    x0, x1, wx = _tf_axis(image.shape[1], width, aligned)
    wx = wx[None, :, None]
    lerped = []  # TF's order: along x within the two source rows, then between them along y
    for rows in (image[y0], image[y1]):  # only the rows used, widened to float: a huge photo is never copied whole
        left = rows[:, x0].astype(np.float32)
        lerped.append(left + (rows[:, x1].astype(np.float32) - left) * wx)
    top, bottom = lerped
    return top + (bottom - top) * wy[:, None, None]


def resize_batch(
    images: Sequence[np.ndarray], size: tuple[int, int], method: ResizeMethod
) -> tuple[np.ndarray, list[tuple[int, int]]]:
    """In-memory images (any `as_rgb` input) stretched to `size` (h, w) by `method` (aspect not kept, like TF's
    fixed-shape resizer): a float32 N×H×W×3 stack on the 0..255 scale and each image's original (h, w)."""
    rgb = [as_rgb(image) for image in images]
    return np.stack([resize_pixels(image, size, method) for image in rgb]), [image.shape[:2] for image in rgb]


def normalized_tensor(pixels: np.ndarray, kind: Normalization) -> torch.Tensor:
    """Float pixels on the 0..255 scale, H×W×3 or N×H×W×3, → the network's normalised CHW / NCHW float tensor:
    the one normalisation every input path (evaluation transform, predict, export checks, LiteRT) applies."""
    mean, std = (np.asarray(v, np.float32) * np.float32(255.0) for v in normalization_stats(kind))
    x = torch.from_numpy(np.ascontiguousarray((np.asarray(pixels, np.float32) - mean) / std))
    return x.permute(2, 0, 1).contiguous() if x.ndim == 3 else x.permute(0, 3, 1, 2).contiguous()
