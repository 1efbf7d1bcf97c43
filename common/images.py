"""Images in: the one decoder every reader uses (any common file in, 8-bit RGB out, or an error naming the file),
in-memory image checks for inference, and the input normalisation tables the weights expect.

Pillow rather than OpenCV because Pillow refuses truncated files (OpenCV returns a partly grey image with only a
log line), and it exposes EXIF orientation, which we apply so pixels match what annotation tools showed.
"""

from __future__ import annotations

from os import PathLike
from pathlib import Path
from typing import Literal, Sequence

import numpy as np
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
        raise DatasetError(path, "image file not found", "Check the image folder and the file name in the "
                           "annotations", kind="missing image") from None
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


def _to_rgb8(image: Image.Image, path: Path) -> np.ndarray:
    if image.mode == "RGB":
        return np.array(image)
    if image.mode in _SIXTEEN_BIT_MODES:
        gray = (np.clip(np.asarray(image, dtype=np.int64), 0, 65535) >> 8).astype(np.uint8)
        return np.repeat(gray[:, :, None], 3, axis=2)
    if image.mode == "F":
        raise DatasetError(path, "32-bit float pixels are not a supported image format",
                           "Convert the file to 8-bit RGB", kind="corrupt image")
    if image.mode == "P" and "transparency" in image.info:
        image = image.convert("RGBA")
    return np.array(image.convert("RGB"))


def _corrupt(path: Path, exc: BaseException) -> DatasetError:
    return DatasetError(path, f"cannot decode image ({exc})", "Replace or remove the file", kind="corrupt image")


def as_rgb(image: np.ndarray) -> np.ndarray:
    """An in-memory image for inference, H×W, H×W×1 (gray), H×W×3 or H×W×4 (alpha dropped) uint8 → H×W×3."""
    if not isinstance(image, np.ndarray) or image.dtype != np.uint8:
        kind = image.dtype if isinstance(image, np.ndarray) else type(image).__name__
        raise ValueError(f"expected an 8-bit image (numpy uint8 H×W×C), got {kind}: convert it to uint8 first")
    if image.ndim == 2:
        image = image[..., None]
    if image.ndim != 3 or image.shape[2] not in (1, 3, 4) or min(image.shape[:2]) < 1:
        raise ValueError(f"expected an image of shape H×W, H×W×1, H×W×3 or H×W×4 (gray, RGB, RGBA), "
                         f"got {list(image.shape)}")  # fmt: skip
    if image.shape[2] == 1:
        return np.repeat(image, 3, axis=2)
    return image[..., :3]


def resize_rgb_batch(images: Sequence[np.ndarray], size: tuple[int, int]) -> tuple[np.ndarray, list[tuple[int, int]]]:
    """In-memory images (any `as_rgb` input) stretched to `size` (h, w) with PIL bilinear, as TF's exporters
    resize: a uint8 N×H×W×3 stack and each image's original (h, w)."""
    height, width = size
    rgb = [as_rgb(image) for image in images]
    resized = [image if image.shape[:2] == (height, width)
               else np.asarray(Image.fromarray(image).resize((width, height), Image.BILINEAR)) for image in rgb]
    return np.stack(resized), [image.shape[:2] for image in rgb]
