"""The one image decoder: odd but valid files become 8-bit RGB; missing and corrupt files raise naming the file."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from common.errors import DatasetError
from common.images import read_image
from datasets.errors import SkipCounter, SkippedSampleWarning


def gradient(height: int = 6, width: int = 8) -> np.ndarray:
    """An RGB image whose every pixel differs, so rotations and channel mix-ups show."""
    yy, xx = np.mgrid[:height, :width]
    return np.stack([xx * 30, yy * 40, (xx + yy) * 10], axis=2).astype(np.uint8)


def test_rgb_jpeg_png_round_trip(tmp_path):
    image = gradient()
    Image.fromarray(image).save(tmp_path / "a.png")
    out = read_image(tmp_path / "a.png")
    assert out.dtype == np.uint8 and out.shape == (6, 8, 3)
    np.testing.assert_array_equal(out, image)
    out.fill(0)  # writable: transforms may work in place


def test_grayscale_becomes_rgb(tmp_path):
    Image.fromarray(gradient()[:, :, 0], mode="L").save(tmp_path / "g.png")
    out = read_image(tmp_path / "g.png")
    assert out.shape == (6, 8, 3)
    np.testing.assert_array_equal(out[:, :, 1], gradient()[:, :, 0])


def test_rgba_drops_alpha(tmp_path):
    rgba = np.dstack([gradient(), np.full((6, 8), 7, np.uint8)])
    Image.fromarray(rgba, mode="RGBA").save(tmp_path / "a.png")
    np.testing.assert_array_equal(read_image(tmp_path / "a.png"), gradient())


def test_palette_with_transparency(tmp_path):
    image = Image.fromarray(gradient()).convert("P")
    image.info["transparency"] = 0
    image.save(tmp_path / "p.png", transparency=0)
    assert read_image(tmp_path / "p.png").shape == (6, 8, 3)


def test_sixteen_bit_grayscale_keeps_the_high_byte(tmp_path):
    values = np.array([[0, 256, 65535], [1000, 32768, 512]], np.uint16)
    Image.fromarray(values).save(tmp_path / "g16.png")
    assert Image.open(tmp_path / "g16.png").mode.startswith("I")
    out = read_image(tmp_path / "g16.png")
    assert out.dtype == np.uint8 and out.shape == (2, 3, 3)
    np.testing.assert_array_equal(out[:, :, 0], values >> 8)


def test_sixteen_bit_rgb(tmp_path):
    import cv2

    values = gradient().astype(np.uint16) * 257
    cv2.imwrite(str(tmp_path / "c16.png"), values[:, :, ::-1])  # OpenCV writes BGR
    np.testing.assert_array_equal(read_image(tmp_path / "c16.png"), gradient())


def test_exif_rotation_is_applied(tmp_path):
    image = Image.fromarray(gradient(6, 8))
    exif = Image.Exif()
    exif[0x0112] = 6  # "rotate 90 CW to display"
    image.save(tmp_path / "r.jpg", exif=exif, quality=100)
    out = read_image(tmp_path / "r.jpg")
    assert out.shape == (8, 6, 3)  # width and height swap
    expected = np.rot90(gradient(6, 8), k=-1)
    # JPEG is lossy: quality 100 with halved chroma moves this gradient by 4.1 levels on average; the wrong
    # rotation is off by 94, a mirror image by 54
    assert np.abs(out.astype(int) - expected.astype(int)).mean() < 8


def test_missing_file_names_the_path(tmp_path):
    with pytest.raises(DatasetError, match="nope.jpg: image file not found") as info:
        read_image(tmp_path / "nope.jpg")
    assert info.value.kind == "missing image"


@pytest.mark.parametrize("content", [b"", b"not an image at all", "truncated"])
def test_corrupt_file_names_the_path(tmp_path, content):
    path = tmp_path / "bad.jpg"
    if content == "truncated":
        Image.fromarray(gradient(64, 64)).save(path, quality=95)
        content = path.read_bytes()[: len(path.read_bytes()) // 2]
    path.write_bytes(content)
    with pytest.raises(DatasetError, match="bad.jpg: cannot decode image") as info:
        read_image(path)
    assert info.value.kind == "corrupt image"


def test_float_images_are_refused(tmp_path):
    Image.fromarray(np.zeros((4, 4), np.float32), mode="F").save(tmp_path / "f.tiff")
    with pytest.raises(DatasetError, match="f.tiff: 32-bit float"):
        read_image(tmp_path / "f.tiff")


def test_skip_counter_counts_and_summarises():
    counter = SkipCounter(max_warnings=1)
    with pytest.warns(SkippedSampleWarning, match="a.jpg"):
        counter.skip(DatasetError("a.jpg", "broken", kind="corrupt image"))
    counter.skip(DatasetError("b.jpg", "broken", kind="corrupt image"))
    counter.skip(DatasetError("c.json", "bad", kind="bad box"))
    assert counter.counts() == {"corrupt image": 2, "bad box": 1}
    assert counter.summary() == "skipped 3 samples (2 corrupt image, 1 bad box)"
    with pytest.raises(DatasetError):  # a wrong root or an empty dataset is never skippable
        counter.skip(DatasetError("root", "does not exist"))
    assert SkipCounter().summary() == "skipped 0 samples"
