"""VOC detection: 1-based boxes, `difficult` flags, the 07+12 union and the bad-data cases."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from PIL import Image

from common.errors import DatasetError
from datasets.errors import SkipCounter, SkippedSampleWarning
from datasets.voc import VOC_CLASSES, VOCDetection, voc_detection_union

W, H = 50, 40


def voc_object(name: str, box: tuple[int, int, int, int], difficult: int = 0) -> str:
    x0, y0, x1, y1 = box
    return (
        f"<object><name>{name}</name><difficult>{difficult}</difficult><bndbox><xmin>{x0}</xmin>"
        f"<ymin>{y0}</ymin><xmax>{x1}</xmax><ymax>{y1}</ymax></bndbox></object>"
    )


def write_voc(root: Path, images: dict[str, list[str]], split: str = "trainval") -> Path:
    """A VOC year folder: one W x H JPEG and one XML per image id, and ImageSets/Main/<split>.txt."""
    for sub in ("Annotations", "JPEGImages", "ImageSets/Main"):
        (root / sub).mkdir(parents=True, exist_ok=True)
    for image_id, objects in images.items():
        Image.new("RGB", (W, H), (10, 200, 30)).save(root / "JPEGImages" / f"{image_id}.jpg")
        (root / "Annotations" / f"{image_id}.xml").write_text(
            f"<annotation><filename>{image_id}.jpg</filename><size><width>{W}</width><height>{H}</height>"
            f"<depth>3</depth></size>{''.join(objects)}</annotation>"
        )
    (root / "ImageSets" / "Main" / f"{split}.txt").write_text("\n".join(images) + "\n")
    return root


def test_twenty_classes():
    assert len(VOC_CLASSES) == 20 and VOC_CLASSES[0] == "aeroplane" and VOC_CLASSES[-1] == "tvmonitor"


def test_boxes_labels_and_difficult_flags(tmp_path):
    root = write_voc(
        tmp_path / "VOC2007",
        {"000001": [voc_object("dog", (1, 1, 10, 20)), voc_object("person", (5, 6, 50, 40), difficult=1)]},
    )
    data = VOCDetection(root)
    assert data.class_names[0] == "background" and data.class_names[12] == "dog"
    image, target = data[0]
    assert image.shape == (3, H, W)
    torch.testing.assert_close(target["boxes"], torch.tensor([[0.0, 0, 10, 20], [4, 5, 50, 40]]))  # 1-based
    assert target["labels"].tolist() == [12, 15]
    assert target["difficult"].tolist() == [False, True]
    assert target["image_id"] == "000001"
    _, target = VOCDetection(root, keep_difficult=False)[0]
    assert target["labels"].tolist() == [12] and target["difficult"].tolist() == [False]


def test_07_plus_12_union(tmp_path):
    write_voc(tmp_path / "VOC2007", {"000001": [voc_object("cat", (1, 1, 9, 9))]})
    write_voc(
        tmp_path / "VOC2012",
        {"2008_000001": [voc_object("bus", (2, 2, 8, 8))], "2008_000002": [voc_object("car", (3, 3, 7, 7))]},
    )
    union = voc_detection_union(tmp_path)
    assert len(union) == 3
    assert [union[i][1]["image_id"] for i in range(3)] == ["000001", "2008_000001", "2008_000002"]
    assert [union[i][1]["labels"].item() for i in range(3)] == [8, 6, 7]


def test_custom_classes(tmp_path):
    root = write_voc(tmp_path / "voc", {"a": [voc_object("star", (1, 1, 9, 9))]})
    with pytest.raises(DatasetError, match=r"a.xml: object 0 has unknown class 'star'") as info:
        VOCDetection(root)
    assert info.value.kind == "unknown category"
    assert VOCDetection(root, classes=("ring", "star"))[0][1]["labels"].tolist() == [2]


@pytest.mark.parametrize(
    "box, problem",
    [
        ((10, 10, 5, 20), "zero or negative"),
        ((1, 1, 80, 20), "outside the 50x40 image"),
    ],
)
def test_bad_boxes_raise_or_skip(tmp_path, box, problem):
    root = write_voc(tmp_path / "voc", {"a": [voc_object("dog", box)], "b": [voc_object("cat", (1, 1, 5, 5))]})
    with pytest.raises(DatasetError, match=rf"a.xml: object 0 \(dog\): box .* {problem}"):
        VOCDetection(root)
    skip = SkipCounter()
    with pytest.warns(SkippedSampleWarning):
        data = VOCDetection(root, skip=skip)
    assert len(data) == 1 and data[0][1]["image_id"] == "b" and skip.counts() == {"bad box": 1}


def test_slightly_outside_box_is_clipped(tmp_path):
    root = write_voc(tmp_path / "voc", {"a": [voc_object("dog", (0, 1, 51, 40))]})
    torch.testing.assert_close(VOCDetection(root)[0][1]["boxes"], torch.tensor([[0.0, 0, 50, 40]]))


def test_malformed_xml_and_missing_image(tmp_path):
    root = write_voc(tmp_path / "voc", {"a": [voc_object("dog", (1, 1, 5, 5))]})
    (root / "JPEGImages" / "a.jpg").unlink()
    with pytest.raises(DatasetError, match=r"a.jpg: image file not found"):
        VOCDetection(root)
    (root / "Annotations" / "a.xml").write_text("<annotation><size>")
    with pytest.raises(DatasetError, match="a.xml: is not a VOC annotation"):
        VOCDetection(root)


def test_wrong_root_missing_split_and_empty_split(tmp_path):
    with pytest.raises(DatasetError, match="VOC folder does not exist.*VOCdevkit/VOC2007"):
        VOCDetection(tmp_path / "VOCdevkit")
    root = write_voc(tmp_path / "voc", {"a": []})
    with pytest.raises(DatasetError, match=r"ImageSets/Main/test.txt: split list not found"):
        VOCDetection(root, "test")
    (root / "ImageSets" / "Main" / "empty.txt").write_text("\n")
    with pytest.raises(DatasetError, match="empty.txt: lists no images"):
        VOCDetection(root, "empty")
