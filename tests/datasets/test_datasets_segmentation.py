"""Segmentation data: palette PNGs, SBD .mat files, trainaug, COCO→VOC masks with their cache, bad masks."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import scipy.io
import torch
from PIL import Image

from common.errors import DatasetError
from datasets.errors import SkipCounter, SkippedSampleWarning
from datasets.segmentation import (
    COCO_TO_VOC,
    SegmentationDataset,
    SegSample,
    coco_voc_segmentation_samples,
    read_label_mask,
    sbd_samples,
    trainaug_samples,
    voc_segmentation_samples,
    write_label_png,
)

H, W = 12, 16


def label_map() -> np.ndarray:
    mask = np.zeros((H, W), np.uint8)
    mask[2:6, 3:9] = 12  # dog
    mask[7:10, 10:15] = 15  # person
    mask[6, :] = 255  # a VOC-style border
    return mask


def write_voc_seg(root: Path, masks: dict[str, np.ndarray], splits: dict[str, list[str]] | None = None) -> Path:
    for sub in ("JPEGImages", "SegmentationClass", "ImageSets/Segmentation"):
        (root / sub).mkdir(parents=True, exist_ok=True)
    for image_id, mask in masks.items():
        Image.new("RGB", (mask.shape[1], mask.shape[0]), (1, 2, 3)).save(root / "JPEGImages" / f"{image_id}.jpg")
        write_label_png(root / "SegmentationClass" / f"{image_id}.png", mask)
    for split, ids in (splits or {}).items():
        (root / "ImageSets" / "Segmentation" / f"{split}.txt").write_text("\n".join(ids) + "\n")
    return root


def write_sbd(root: Path, masks: dict[str, np.ndarray], splits: dict[str, list[str]]) -> Path:
    """SBD's layout: img/*.jpg, cls/*.mat holding a GTcls struct, train.txt and val.txt."""
    (root / "img").mkdir(parents=True, exist_ok=True)
    (root / "cls").mkdir(parents=True, exist_ok=True)
    for image_id, mask in masks.items():
        Image.new("RGB", (mask.shape[1], mask.shape[0])).save(root / "img" / f"{image_id}.jpg")
        boundaries = np.empty((20, 1), object)
        boundaries[:, 0] = [np.zeros(mask.shape, np.uint8)] * 20
        gt = {
            "Segmentation": mask,
            "Boundaries": boundaries,
            "CategoriesPresent": np.unique(mask[mask > 0]).astype(np.uint8),
        }
        scipy.io.savemat(root / "cls" / f"{image_id}.mat", {"GTcls": gt})
    for split, ids in splits.items():
        (root / f"{split}.txt").write_text("\n".join(ids) + "\n")
    return root


def test_palette_png_round_trip_uses_the_voc_colours(tmp_path):
    write_label_png(tmp_path / "m.png", label_map())
    with Image.open(tmp_path / "m.png") as image:
        assert image.mode == "P"
        assert image.getpalette()[3:6] == [128, 0, 0]  # class 1 (aeroplane) is dark red in VOC
        assert tuple(image.convert("RGB").getpixel((3, 2))) == (64, 0, 128)  # class 12 (dog)
    np.testing.assert_array_equal(read_label_mask(tmp_path / "m.png"), label_map())


def test_voc_segmentation_samples_and_dataset(tmp_path):
    root = write_voc_seg(tmp_path / "VOC2012", {"a": label_map(), "b": label_map()}, {"train": ["b"]})
    assert [s.id for s in voc_segmentation_samples(root, None)] == ["a", "b"]
    data = SegmentationDataset(voc_segmentation_samples(root, "train"))
    assert len(data) == 1
    image, mask = data[0]
    assert image.shape == (3, H, W) and mask.dtype == torch.int64
    np.testing.assert_array_equal(mask.numpy(), label_map())


def test_sbd_mat_reading(tmp_path):
    mask = label_map()
    mask[6, :] = 0  # SBD has no border label
    root = write_sbd(tmp_path / "sbd", {"2008_000002": mask}, {"train": ["2008_000002"]})
    loaded = read_label_mask(root / "cls" / "2008_000002.mat")
    assert loaded.dtype == np.uint8
    np.testing.assert_array_equal(loaded, mask)
    data = SegmentationDataset(sbd_samples(root, "train"))
    np.testing.assert_array_equal(data[0][1].numpy(), mask)


def test_sbd_mat_without_gtcls(tmp_path):
    scipy.io.savemat(tmp_path / "x.mat", {"something": np.zeros(3)})
    with pytest.raises(DatasetError, match="x.mat: is not an SBD cls .mat"):
        read_label_mask(tmp_path / "x.mat")


def test_trainaug_is_sbd_plus_voc_train_minus_voc_val(tmp_path):
    masks = {i: label_map() for i in ("a", "b", "c", "d", "e")}
    voc = write_voc_seg(
        tmp_path / "VOC2012", {i: masks[i] for i in ("a", "b", "c")}, {"train": ["a", "b"], "val": ["c"]}
    )
    sbd = write_sbd(
        tmp_path / "sbd", {i: masks[i] for i in ("b", "c", "d", "e")}, {"train": ["b", "c", "d"], "val": ["e"]}
    )
    for i in ("d", "e"):  # SBD images are VOC images: VOC2012/JPEGImages holds them all
        Image.new("RGB", (W, H)).save(voc / "JPEGImages" / f"{i}.jpg")
    samples = {s.id: s for s in trainaug_samples(voc, sbd)}
    assert sorted(samples) == ["a", "b", "d", "e"]  # c is in VOC val
    assert samples["b"].mask.suffix == ".png" and samples["d"].mask.suffix == ".mat"
    assert samples["d"].image.parent == voc / "JPEGImages"


def test_bad_masks_raise_naming_the_file_or_are_skipped(tmp_path):
    wrong_value = label_map()
    wrong_value[0, 0] = 21
    masks = {"ok": label_map(), "value": wrong_value, "size": label_map()}
    root = write_voc_seg(tmp_path / "voc", masks)
    Image.new("RGB", (W + 1, H)).save(root / "JPEGImages" / "size.jpg")
    Image.new("RGB", (W, H)).save(root / "SegmentationClass" / "rgb.png")
    Image.new("RGB", (W, H)).save(root / "JPEGImages" / "rgb.jpg")
    data = SegmentationDataset(voc_segmentation_samples(root, None))
    by_id = {s.id: i for i, s in enumerate(data.samples)}
    assert data[by_id["ok"]] is not None
    with pytest.raises(DatasetError, match=r"value.png: mask holds values \[21\] that are neither"):
        data[by_id["value"]]
    with pytest.raises(DatasetError, match=r"size.png: mask is 16x12 but its image size.jpg is 17x12"):
        data[by_id["size"]]
    with pytest.raises(DatasetError, match="rgb.png: mask has mode RGB"):
        data[by_id["rgb"]]
    assert SegmentationDataset(data.samples, num_classes=22)[by_id["value"]] is not None

    skip = SkipCounter()
    data = SegmentationDataset(data.samples, skip=skip)
    with pytest.warns(SkippedSampleWarning):
        results = [data[i] for i in range(len(data))]
    assert sum(r is None for r in results) == 3
    assert skip.counts() == {"size mismatch": 1, "bad mask": 2}


def test_missing_files_empty_and_wrong_root(tmp_path):
    root = write_voc_seg(tmp_path / "voc", {"a": label_map(), "b": label_map()})
    (root / "JPEGImages" / "a.jpg").unlink()
    (root / "SegmentationClass" / "b.png").unlink()
    samples = [
        SegSample("a", root / "JPEGImages/a.jpg", root / "SegmentationClass/a.png"),
        SegSample("b", root / "JPEGImages/b.jpg", root / "SegmentationClass/b.png"),
    ]
    with pytest.raises(DatasetError, match=r"a.jpg: image file not found \(paired with"):
        SegmentationDataset(samples)
    with pytest.raises(DatasetError, match=r"b.png: mask file not found"):
        SegmentationDataset(samples[1:])
    skip = SkipCounter()
    with pytest.warns(SkippedSampleWarning), pytest.raises(DatasetError, match="no usable image/mask pairs"):
        SegmentationDataset(samples, skip=skip, source=root)
    assert skip.counts() == {"missing image": 1, "bad mask": 1}
    with pytest.raises(DatasetError, match="is not a VOC folder"):
        voc_segmentation_samples(tmp_path / "elsewhere")


def square(x: float, y: float, size: float) -> list[list[float]]:
    return [[x, y, x + size, y, x + size, y + size, x, y + size]]


def write_coco_seg(root: Path) -> tuple[Path, Path]:
    """Image 1: a person with a dog on it, a giraffe (not VOC) and a crowd of people; image 2: only a giraffe."""
    (root / "images").mkdir(parents=True)
    for name in ("one.jpg", "two.jpg"):
        Image.new("RGB", (60, 50)).save(root / "images" / name)
    crowd = np.zeros((50, 60), np.uint8)
    crowd[40:50, 0:20] = 1
    from pycocotools import mask as mask_utils

    crowd_rle = mask_utils.encode(np.asfortranarray(crowd))
    crowd_rle["counts"] = crowd_rle["counts"].decode()
    annotations = [
        {
            "id": 1,
            "image_id": 1,
            "category_id": 1,
            "segmentation": square(5, 5, 30),
            "area": 900.0,
            "bbox": [5, 5, 30, 30],
            "iscrowd": 0,
        },
        {
            "id": 2,
            "image_id": 1,
            "category_id": 18,
            "segmentation": square(10, 10, 10),
            "area": 100.0,
            "bbox": [10, 10, 10, 10],
            "iscrowd": 0,
        },
        {
            "id": 3,
            "image_id": 1,
            "category_id": 25,
            "segmentation": square(40, 5, 15),
            "area": 225.0,
            "bbox": [40, 5, 15, 15],
            "iscrowd": 0,
        },
        {
            "id": 4,
            "image_id": 1,
            "category_id": 1,
            "segmentation": crowd_rle,
            "area": 200.0,
            "bbox": [0, 40, 20, 10],
            "iscrowd": 1,
        },
        {
            "id": 5,
            "image_id": 2,
            "category_id": 25,
            "segmentation": square(1, 1, 40),
            "area": 1600.0,
            "bbox": [1, 1, 40, 40],
            "iscrowd": 0,
        },
    ]
    ann_file = root / "instances.json"
    ann_file.write_text(
        json.dumps(
            {
                "images": [
                    {"id": 1, "file_name": "one.jpg", "width": 60, "height": 50},
                    {"id": 2, "file_name": "two.jpg", "width": 60, "height": 50},
                ],
                "annotations": annotations,
                "categories": [{"id": 1, "name": "person"}, {"id": 18, "name": "dog"}, {"id": 25, "name": "giraffe"}],
            }
        )
    )
    return root / "images", ann_file


def test_coco_to_voc_masks_and_cache_reuse(tmp_path, monkeypatch):
    image_dir, ann_file = write_coco_seg(tmp_path)
    cache = tmp_path / "cache"
    samples = coco_voc_segmentation_samples(image_dir, ann_file, cache, min_area=500, progress=False)
    assert [s.id for s in samples] == ["one"]  # "two" has no VOC-class pixels
    mask = read_label_mask(samples[0].mask)
    assert mask.shape == (50, 60)
    assert mask[7, 7] == COCO_TO_VOC["person"] == 15
    assert mask[15, 15] == COCO_TO_VOC["dog"] == 12  # the small dog stays on top of the large person
    assert mask[10, 45] == 0  # giraffe is not a VOC class: background
    assert mask[45, 5] == 255  # crowd of a VOC class: ignore
    assert set(np.unique(mask)) == {0, 12, 15, 255}

    from pycocotools.coco import COCO

    def no_rasterising(*args, **kwargs):
        raise AssertionError("the cache should have been used")

    monkeypatch.setattr(COCO, "annToMask", no_rasterising)
    again = coco_voc_segmentation_samples(image_dir, ann_file, cache, min_area=500, progress=False)
    assert again == samples
    assert not list(samples[0].mask.parent.glob(".*.tmp"))  # no temporary files left behind
    data = SegmentationDataset(again)
    assert data[0][1].shape == (50, 60)


def test_coco_to_voc_without_segmentation_or_with_unknown_category(tmp_path):
    image_dir, ann_file = write_coco_seg(tmp_path)
    content = json.loads(ann_file.read_text())
    del content["annotations"][1]["segmentation"]
    ann_file.write_text(json.dumps(content))
    with pytest.raises(DatasetError, match=r"annotation id 2 \(image id 1\) has no 'segmentation'"):
        coco_voc_segmentation_samples(image_dir, ann_file, tmp_path / "cache", progress=False)
    content["annotations"][0]["category_id"] = 99
    ann_file.write_text(json.dumps(content))
    with pytest.raises(DatasetError, match=r"annotation id 1 \(image id 1\) has unknown category id 99"):
        coco_voc_segmentation_samples(image_dir, ann_file, tmp_path / "cache", progress=False)
