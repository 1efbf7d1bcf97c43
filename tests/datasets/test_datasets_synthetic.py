"""The embedded synthetic dataset: deterministic, the same objects in COCO and VOC form, readable by our readers."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import cv2
import numpy as np
import pytest
from pycocotools import mask as mask_utils
from pycocotools.coco import COCO

from datasets.segmentation import read_label_mask
from datasets.synthetic import (
    SYNTHETIC_CLASSES,
    SyntheticPaths,
    generate,
    main,
    synthetic_detection,
    synthetic_segmentation,
)
from datasets.voc import VOCDetection

# pycocotools 2.0.x decoding masks under NumPy 2 warns about __array__(copy=...); harmless here.
pytestmark = pytest.mark.filterwarnings("ignore:__array__ implementation:DeprecationWarning")


def digest(root: Path) -> dict[str, str]:
    return {
        str(p.relative_to(root)): hashlib.sha1(p.read_bytes()).hexdigest()
        for p in sorted(root.rglob("*"))
        if p.is_file()
    }


def test_same_seed_same_files_whatever_the_worker_count(tmp_path, synthetic_root):
    again = generate(tmp_path / "again", num_train=12, num_val=4, seed=3, size=128, workers=2, progress=False)
    assert digest(again.root) == digest(synthetic_root)
    other = generate(tmp_path / "other", num_train=12, num_val=4, seed=4, size=128, workers=1, progress=False)
    assert digest(other.root).keys() == digest(synthetic_root).keys()
    assert (
        digest(other.root)["coco/annotations/instances_train.json"]
        != digest(synthetic_root)["coco/annotations/instances_train.json"]
    )


def test_layout(synthetic_root):
    paths = SyntheticPaths(synthetic_root)
    assert len(list(paths.coco_images("train").glob("*.jpg"))) == 12
    assert len(list(paths.coco_images("val").glob("*.jpg"))) == 4
    voc = paths.voc_root
    assert len(list((voc / "JPEGImages").glob("*.jpg"))) == 16
    assert len(list((voc / "Annotations").glob("*.xml"))) == 16
    assert len(list((voc / "SegmentationClass").glob("*.png"))) == 16
    for kind in ("Main", "Segmentation"):
        lines = {s: (voc / "ImageSets" / kind / f"{s}.txt").read_text().split() for s in ("train", "val", "trainval")}
        assert len(lines["train"]) == 12 and len(lines["val"]) == 4
        assert lines["trainval"] == lines["train"] + lines["val"]
    params = json.loads((synthetic_root / "synthetic.json").read_text())
    assert params["seed"] == 3 and params["classes"] == list(SYNTHETIC_CLASSES)
    assert not list(synthetic_root.parent.glob(".*partial*"))  # the temporary tree was renamed into place


def test_coco_side_loads_with_pycocotools_and_our_reader(synthetic_root):
    paths = SyntheticPaths(synthetic_root)
    coco = COCO(str(paths.coco_annotations("train")))
    assert [c["name"] for c in coco.loadCats(coco.getCatIds())] == list(SYNTHETIC_CLASSES)
    assert len(coco.getImgIds()) == 12 and all(coco.getAnnIds(imgIds=i) for i in coco.getImgIds())
    for ann in coco.loadAnns(coco.getAnnIds()):
        assert coco.annToMask(ann).sum() == ann["area"] > 0
    data = synthetic_detection(synthetic_root, "val")
    assert data.class_names == ["background", *SYNTHETIC_CLASSES] and len(data) == 4
    image, target = data[0]
    assert image.shape == (3, 128, 128) and len(target["labels"]) >= 1


def test_voc_side_matches_the_coco_side(synthetic_root):
    coco = synthetic_detection(synthetic_root, "train")
    voc = VOCDetection(SyntheticPaths(synthetic_root).voc_root, "train", classes=SYNTHETIC_CLASSES)
    assert len(voc) == len(coco) == 12
    for index in range(len(coco)):
        coco_record, voc_record = coco.records[index], voc.records[index]
        assert int(voc_record.image_id) == coco_record.image_id
        np.testing.assert_array_equal(voc_record.boxes, coco_record.boxes)
        np.testing.assert_array_equal(voc_record.labels, coco_record.labels)


def test_masks_agree_with_the_instances(synthetic_root):
    paths = SyntheticPaths(synthetic_root)
    coco = COCO(str(paths.coco_annotations("train")))
    seen = set()
    for image_id in coco.getImgIds():
        name = coco.imgs[image_id]["file_name"].replace(".jpg", ".png")
        mask = read_label_mask(paths.voc_root / "SegmentationClass" / name)
        assert set(np.unique(mask)) <= {0, 1, 2, 3, 4, 5, 255} and 255 in mask
        for ann in coco.loadAnns(coco.getAnnIds(imgIds=image_id)):
            inside = mask[coco.annToMask(ann) > 0]
            labelled = inside[inside != 255]
            assert (labelled == ann["category_id"]).all()  # every instance pixel carries its class or "ignore"
            assert len(labelled) > 0  # the 255 outline band may cover most of a thin star at 128 px, not all
            seen.add(ann["category_id"])
        assert set(np.unique(mask)) - {0, 255} == {
            a["category_id"] for a in coco.loadAnns(coco.getAnnIds(imgIds=image_id))
        }
    assert seen == {1, 2, 3, 4, 5}
    data = synthetic_segmentation(synthetic_root, "val")
    image, target = data[0]
    assert image.shape == (3, 128, 128) and target.shape == (128, 128)


def test_hue_tells_the_class_but_does_not_find_objects(tmp_path):
    """Format 2: an object's hue band names its class, yet background and clutter wear the same hues, so a head
    must still learn where objects are."""
    paths = generate(tmp_path / "d", num_train=40, num_val=1, seed=0, size=96, workers=1, progress=False)
    from common.images import read_image

    centres = np.arange(len(SYNTHETIC_CLASSES)) * 180 // len(SYNTHETIC_CLASSES)  # OpenCV hue, 0..180

    def band_distance(hue: np.ndarray) -> np.ndarray:  # [N] hues -> [N, classes] circular distance
        return np.abs((hue[:, None] - centres[None] + 90) % 180 - 90)

    coco = COCO(str(paths.coco_annotations("train")))
    named, class_coloured_ground = [], []
    for image_id in coco.getImgIds():
        image = read_image(paths.coco_images("train") / coco.imgs[image_id]["file_name"])
        hsv = cv2.cvtColor(image, cv2.COLOR_RGB2HSV).astype(int)
        objects = np.zeros(image.shape[:2], bool)
        for ann in coco.loadAnns(coco.getAnnIds(imgIds=image_id)):
            inside = mask_utils.decode(ann["segmentation"]) > 0
            objects |= inside
            votes = np.bincount(band_distance(hsv[..., 0][inside]).argmin(1), minlength=len(centres))
            named.append(votes.argmax() + 1 == ann["category_id"])
        ground = hsv[~objects]
        class_coloured_ground.append(((band_distance(ground[:, 0]).min(1) <= 6) & (ground[:, 1] >= 120)).mean())
    assert len(named) > 80
    assert np.mean(named) >= 0.95  # the pixels' majority hue band is the class
    assert np.mean(class_coloured_ground) >= 0.1  # about a fifth of non-object pixels wear a class colour


def test_cli(tmp_path, capsys, synthetic_root):
    with pytest.raises(SystemExit) as info:
        main(["--help"])
    assert info.value.code == 0 and "--num-train" in capsys.readouterr().out
    assert (
        main(
            [
                "--out",
                str(tmp_path / "cli"),
                "--num-train",
                "3",
                "--num-val",
                "1",
                "--size",
                "64",
                "--quiet",
                "--workers",
                "1",
            ]
        )
        == 0
    )
    assert "wrote 3 train + 1 val images" in capsys.readouterr().out
    assert len(list((tmp_path / "cli" / "voc" / "JPEGImages").glob("*.jpg"))) == 4
    with pytest.raises(SystemExit) as info:
        main(["--out", str(tmp_path / "cli"), "--quiet"])
    assert info.value.code == 2 and "pass overwrite=True (--overwrite)" in capsys.readouterr().err


def test_an_older_format_is_redrawn_with_its_own_counts(tmp_path, capsys):
    from datasets.sources import ensure_synthetic
    from datasets.synthetic import FORMAT_VERSION

    root = generate(tmp_path / "d", num_train=3, num_val=2, seed=1, size=64, workers=1, progress=False).root
    info = json.loads((root / "synthetic.json").read_text())
    (root / "synthetic.json").write_text(json.dumps({**info, "version": FORMAT_VERSION - 1}))
    assert ensure_synthetic(root) == root
    assert "redrawing the synthetic dataset" in capsys.readouterr().out
    assert json.loads((root / "synthetic.json").read_text()) == info
    assert len(list((root / "coco" / "train").glob("*.jpg"))) == 3
    ensure_synthetic(root)  # current format: left alone
    assert capsys.readouterr().out == ""
