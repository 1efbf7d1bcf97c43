"""COCO detection: category maps both ways, crowd handling, empty images, and every bad-data case."""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from common.errors import DatasetError
from datasets.coco import CocoDetection
from datasets.errors import SkipCounter, SkippedSampleWarning

# Non-contiguous ids on purpose: labels must be 1..K and map back.
CATEGORIES = [{"id": 3, "name": "cat"}, {"id": 7, "name": "dog"}, {"id": 12, "name": "zebra"}]
W, H = 40, 30


def ann(ann_id: int, image_id: int, cat: int, bbox: list[float], iscrowd: int = 0) -> dict:
    return {
        "id": ann_id,
        "image_id": image_id,
        "category_id": cat,
        "bbox": bbox,
        "area": bbox[2] * bbox[3],
        "iscrowd": iscrowd,
    }


def write_coco(
    root: Path, annotations: list[dict], images: list[dict] | None = None, categories: list[dict] = CATEGORIES
) -> tuple[Path, Path]:
    """A tiny COCO dataset: images 1-3 (W x H JPEGs a/b/c.jpg) unless given, and their instances JSON."""
    images = (
        images
        if images is not None
        else [{"id": i, "file_name": f"{n}.jpg", "width": W, "height": H} for i, n in ((1, "a"), (2, "b"), (3, "c"))]
    )
    image_dir = root / "images"
    image_dir.mkdir(parents=True, exist_ok=True)
    for info in images:
        Image.new("RGB", (info["width"], info["height"]), (90, 120, 150)).save(image_dir / info["file_name"])
    ann_file = root / "instances.json"
    ann_file.write_text(json.dumps({"images": images, "annotations": annotations, "categories": categories}))
    return image_dir, ann_file


GOOD = [ann(1, 1, 3, [2, 3, 10, 8]), ann(2, 1, 12, [20, 5, 15, 20]), ann(3, 3, 7, [0, 0, 40, 30])]


def test_category_maps_round_trip_and_names_come_from_the_file(tmp_path):
    data = CocoDetection(*write_coco(tmp_path, GOOD))
    assert data.class_names == ["background", "cat", "dog", "zebra"]
    assert data.label_to_cat == {1: 3, 2: 7, 3: 12}
    assert all(data.label_to_cat[data.cat_to_label[c]] == c for c in (3, 7, 12))
    image, target = data[0]
    assert image.shape == (3, H, W) and image.dtype == torch.float32 and 0 <= image.min() <= image.max() <= 1
    assert target["labels"].tolist() == [1, 3]
    torch.testing.assert_close(target["boxes"], torch.tensor([[2.0, 3, 12, 11], [20, 5, 35, 25]]))
    assert target["image_id"] == 1 and target["orig_size"].tolist() == [H, W]
    results = data.to_coco_results(1, target["boxes"], [0.9, 0.8], target["labels"].tolist())
    assert [r["category_id"] for r in results] == [3, 12]
    assert results[1]["bbox"] == pytest.approx([20, 5, 15, 20])


def test_results_load_into_cocoeval(tmp_path):
    from pycocotools.cocoeval import COCOeval

    data = CocoDetection(*write_coco(tmp_path, GOOD))
    results = []
    for index in range(len(data)):
        _, target = data[index]
        results += data.to_coco_results(
            target["image_id"], target["boxes"], [1.0] * len(target["labels"]), target["labels"].tolist()
        )
    evaluator = COCOeval(data.coco, data.coco.loadRes(results), "bbox")
    evaluator.params.imgIds = data.ids
    evaluator.evaluate()
    evaluator.accumulate()
    evaluator.summarize()
    assert evaluator.stats[0] == pytest.approx(1.0)  # ground truth fed back scores a perfect AP


def test_crowd_regions_are_not_training_targets_but_stay_for_evaluation(tmp_path):
    data = CocoDetection(*write_coco(tmp_path, [*GOOD, ann(4, 1, 7, [0, 0, 30, 25], iscrowd=1)]))
    _, target = data[0]
    assert target["labels"].tolist() == [1, 3]
    assert [a["iscrowd"] for a in data.coco.imgToAnns[1]] == [0, 0, 1]


def test_images_without_annotations_are_kept_unless_dropped(tmp_path):
    files = write_coco(tmp_path, GOOD)
    data = CocoDetection(*files)
    assert data.ids == [1, 2, 3]
    _, target = data[1]
    assert target["boxes"].shape == (0, 4) and target["labels"].shape == (0,)
    assert CocoDetection(*files, drop_empty=True).ids == [1, 3]


def test_boxes_slightly_outside_are_clipped(tmp_path):
    data = CocoDetection(*write_coco(tmp_path, [ann(1, 1, 3, [-1.5, -0.5, 12, 31.4])]))
    torch.testing.assert_close(data[0][1]["boxes"], torch.tensor([[0.0, 0.0, 10.5, 30.0]]))


@pytest.mark.parametrize(
    "bbox, problem",
    [
        ([5, 5, 0, 10], "zero or negative width or height"),
        ([5, 5, 10, -3], "zero or negative width or height"),
        ([30, 5, 20, 10], "outside the 40x30 image"),
        ([-10, 5, 20, 10], "outside the 40x30 image"),
        ([5, 5, float("nan"), 10], "non-finite"),
    ],
)
def test_bad_boxes_raise_naming_file_and_annotation(tmp_path, bbox, problem):
    files = write_coco(tmp_path, [*GOOD, ann(99, 3, 7, bbox)])
    with pytest.raises(DatasetError, match=problem) as info:
        CocoDetection(*files)
    message = str(info.value)
    assert str(files[1]) in message and "annotation id 99" in message and "c.jpg" in message
    assert info.value.kind == "bad box"


def test_unknown_category_raises_naming_file_and_annotation(tmp_path):
    files = write_coco(tmp_path, [*GOOD, ann(42, 1, 5, [1, 1, 5, 5])])
    with pytest.raises(DatasetError, match=r"annotation id 42 \(image id 1, a.jpg\) has unknown category id 5"):
        CocoDetection(*files)


def test_skip_option_drops_bad_images_with_a_warning_and_a_count(tmp_path):
    files = write_coco(tmp_path, [*GOOD, ann(42, 1, 5, [1, 1, 5, 5]), ann(43, 3, 3, [0, 0, 0, 0])])
    skip = SkipCounter()
    with pytest.warns(SkippedSampleWarning) as caught:
        data = CocoDetection(*files, skip=skip)
    assert ["annotation id 42" in str(w.message) for w in caught] == [True, False]
    assert "annotation id 43" in str(caught[1].message)
    assert data.ids == [2]  # image 1 (unknown category) and 3 (empty box) are gone, not relabelled
    assert skip.counts() == {"unknown category": 1, "bad box": 1}


def test_missing_image_file(tmp_path):
    image_dir, ann_file = write_coco(tmp_path, GOOD)
    (image_dir / "c.jpg").unlink()
    with pytest.raises(DatasetError, match=r"c.jpg: image file not found \(listed as image id 3"):
        CocoDetection(image_dir, ann_file)
    skip = SkipCounter()
    with pytest.warns(SkippedSampleWarning):
        assert CocoDetection(image_dir, ann_file, skip=skip).ids == [1, 2]
    assert skip.counts() == {"missing image": 1}


def test_corrupt_image_fails_on_load_or_is_skipped(tmp_path):
    image_dir, ann_file = write_coco(tmp_path, GOOD)
    (image_dir / "a.jpg").write_bytes(b"\xff\xd8 garbage")
    data = CocoDetection(image_dir, ann_file)
    with pytest.raises(DatasetError, match="a.jpg: cannot decode image"):
        data[0]
    skip = SkipCounter()
    data = CocoDetection(image_dir, ann_file, skip=skip)
    with pytest.warns(SkippedSampleWarning):
        assert data[0] is None
    assert data[2] is not None and skip.summary() == "skipped 1 samples (1 corrupt image)"


def test_image_size_differing_from_the_annotations(tmp_path):
    image_dir, ann_file = write_coco(tmp_path, GOOD)
    Image.new("RGB", (W + 10, H)).save(image_dir / "a.jpg")
    with pytest.raises(DatasetError, match="a.jpg: decoded image is 50x30 but the annotations say 40x30"):
        CocoDetection(image_dir, ann_file)[0]


def test_wrong_paths_and_malformed_files(tmp_path):
    image_dir, ann_file = write_coco(tmp_path, GOOD)
    with pytest.raises(DatasetError, match="image folder does not exist"):
        CocoDetection(tmp_path / "nowhere", ann_file)
    with pytest.raises(DatasetError, match="annotation file not found"):
        CocoDetection(image_dir, tmp_path / "missing.json")
    broken = tmp_path / "broken.json"
    broken.write_text("{ not json")
    with pytest.raises(DatasetError, match="broken.json: is not valid JSON"):
        CocoDetection(image_dir, broken)


def test_empty_dataset(tmp_path):
    image_dir, ann_file = write_coco(tmp_path, [], images=[])
    with pytest.raises(DatasetError, match="instances.json: contains no usable images"):
        CocoDetection(image_dir, ann_file)
    image_dir, ann_file = write_coco(tmp_path / "b", [])
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # nothing skipped, so no warning
        with pytest.raises(DatasetError, match="contains no usable images"):
            CocoDetection(image_dir, ann_file, drop_empty=True)


def test_custom_classes_work_without_code_changes(tmp_path):
    categories = [{"id": 1, "name": "widget"}, {"id": 2, "name": "gadget"}]
    data = CocoDetection(*write_coco(tmp_path, [ann(1, 1, 2, [1, 1, 5, 5])], categories=categories))
    assert data.class_names == ["background", "widget", "gadget"]
    assert data[0][1]["labels"].tolist() == [2]
    assert np.isclose(data[0][1]["boxes"].numpy(), [[1, 1, 6, 6]]).all()


def test_category_id_label_space_for_tf_and_torchvision_weights(tmp_path):
    data = CocoDetection(*write_coco(tmp_path, GOOD), label_space="category_id")
    assert len(data.class_names) == 13 and data.class_names[7] == "dog" and data.class_names[5] == "N/A"
    assert data[0][1]["labels"].tolist() == [3, 12]
    assert data.to_coco_results(1, torch.zeros(1, 4), [0.5], [12])[0]["category_id"] == 12
