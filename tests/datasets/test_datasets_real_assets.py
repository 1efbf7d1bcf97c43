"""The readers on real files: COCO's first 8 train2017 images (coco8) and 3 PASCAL VOC 2012 val images."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from common.errors import DatasetError
from datasets.coco import CocoDetection
from datasets.segmentation import SegmentationDataset, coco_voc_segmentation_samples, voc_segmentation_samples
from datasets.transforms import detection_train_transform, segmentation_train_transform


@pytest.fixture(scope="module")
def coco8(assets_dir):
    root = assets_dir / "coco8"
    if not (root / "instances_val.json").is_file():
        pytest.skip(f"real test asset {root} not found: put shared/assets beside the repo or set MNV2_ASSETS")
    return root


@pytest.fixture(scope="module")
def voc_samples(assets_dir):
    root = assets_dir / "voc_samples"
    if not (root / "SegmentationClass").is_dir():
        pytest.skip(f"real test asset {root} not found: put shared/assets beside the repo or set MNV2_ASSETS")
    return root


def test_coco8_reads_with_the_real_categories(coco8):
    train = CocoDetection(coco8 / "images" / "train", coco8 / "instances_train.json")
    val = CocoDetection(coco8 / "images" / "val", coco8 / "instances_val.json")
    assert train.ids == [9, 25, 30, 34] and val.ids == [36, 42, 49, 61]
    assert len(train.class_names) == 81 and train.class_names[1] == "person" and train.class_names[-1] == "toothbrush"
    assert train.label_to_cat[80] == 90 and train.cat_to_label[28] == 26  # COCO ids skip 12, 26, 29, ...
    assert sum(len(train[i][1]["labels"]) for i in range(4)) == 13
    assert sum(len(val[i][1]["labels"]) for i in range(4)) == 17
    image, target = val[0]  # 000000000036.jpg: a person under an umbrella, portrait 481x640
    assert image.shape == (3, 640, 481) and target["orig_size"].tolist() == [640, 481]
    assert sorted(val.class_names[label] for label in target["labels"].tolist()) == ["person", "umbrella"]
    umbrella = target["boxes"][target["labels"] == val.cat_to_label[28]][0]
    torch.testing.assert_close(umbrella, torch.tensor([0.0, 50.12, 457.68, 480.47]))
    tf_style = CocoDetection(coco8 / "images" / "val", coco8 / "instances_val.json", label_space="category_id")
    assert len(tf_style.class_names) == 91 and tf_style.class_names[90] == "toothbrush"
    assert sorted(tf_style[0][1]["labels"].tolist()) == [1, 28]


def test_coco8_through_the_ssd_pipeline(coco8):
    torch.manual_seed(0)
    data = CocoDetection(
        coco8 / "images" / "train", coco8 / "instances_train.json", detection_train_transform(320, "tf")
    )
    for index in range(len(data)):
        image, target = data[index]
        assert image.shape == (3, 320, 320) and -1 <= image.min() and image.max() <= 1
        assert (target["boxes"] >= 0).all() and (target["boxes"] <= 320).all()
        assert ((target["labels"] >= 1) & (target["labels"] <= 80)).all()


def test_coco8_has_no_masks_so_voc_conversion_says_so(coco8, tmp_path):
    with pytest.raises(DatasetError, match="instances_val.json: annotation id .* has no 'segmentation'"):
        coco_voc_segmentation_samples(coco8 / "images" / "val", coco8 / "instances_val.json", tmp_path, progress=False)


def test_voc_samples_segmentation(voc_samples):
    data = SegmentationDataset(voc_segmentation_samples(voc_samples, split=None), source=voc_samples)
    assert [s.id for s in data.samples] == ["vainf_1", "vainf_114", "vainf_23"]
    assert all(s.image.suffix == ".png" for s in data.samples)
    present = {}
    for index, sample in enumerate(data.samples):
        image, mask = data[index]
        assert image.shape == (3, 513, 513) and mask.shape == (513, 513)
        values = set(mask.unique().tolist())
        assert {0, 255} <= values
        present[sample.id] = values - {0, 255}
    assert present == {"vainf_1": {1}, "vainf_114": {3}, "vainf_23": {17}}  # aeroplane, bird, sheep


def test_voc_samples_through_the_deeplab_pipeline(voc_samples):
    torch.manual_seed(0)
    data = SegmentationDataset(
        voc_segmentation_samples(voc_samples, None), transform=segmentation_train_transform(normalization="tf")
    )
    image, mask = data[0]
    assert image.shape == (3, 513, 513) and mask.shape == (513, 513)
    assert set(np.unique(mask.numpy())) <= {0, 1, 255}
