"""Albumentations pipelines: boxes stay aligned with their labels and inside the image, degenerate ones go,
normalisation matches the weights, segmentation pads with ignore, and random state is per process; the evaluation
transforms feed the heads' own preprocessing."""

from __future__ import annotations

import albumentations as A
import numpy as np
import pytest
import torch
from tolerances import float32_rtol

from datasets.transforms import (
    IGNORE_INDEX,
    DetectionEvalTransform,
    MinIoURandomCrop,
    SegmentationEvalTransform,
    _Pipeline,
    detection_train_transform,
    mean_pixel,
    normalization_stats,
    segmentation_train_transform,
)
from deeplab_mobile import get_preset as deeplab_preset
from deeplab_mobile import preprocess_image as deeplab_preprocess
from ssdlite import SSDLITE320_COCO, SSDLITE_TF_COCO300, preprocess_image


def detection_eval_transform(size: int, preset=SSDLITE320_COCO) -> DetectionEvalTransform:
    """The evaluation transform training and eval/coco_map.py build: SSDLite's own preprocessing."""
    return DetectionEvalTransform(lambda image: preprocess_image(image, preset.derive(image_size=(size, size))))


def grey_boxes_scene() -> tuple[np.ndarray, dict[str, np.ndarray]]:
    """A 480x640 grey image with four non-overlapping boxes, box k painted grey level 50*(k+1), and a sub-pixel
    box that no resize can keep. Brightness/contrast jitter keeps grey levels in order; saturation/hue leave grey
    alone, so after any augmentation a box's centre must still be brighter than every lower-labelled box's."""
    image = np.full((480, 640, 3), 10, np.uint8)
    boxes = np.array(
        [[20, 30, 200, 220], [300, 40, 620, 200], [40, 260, 300, 460], [360, 250, 600, 470], [330, 220, 330.4, 221]],
        np.float32,
    )
    for k, (x0, y0, x1, y1) in enumerate(boxes[:4].astype(int)):
        image[y0:y1, x0:x1] = 50 * (k + 1)
    labels = np.array([1, 2, 3, 4, 5])
    return image, {"boxes": boxes, "labels": labels, "tag": labels * 10}


def test_train_transform_keeps_boxes_aligned_inside_and_drops_degenerate_ones():
    torch.manual_seed(0)
    transform = detection_train_transform(320, "tf")
    image, target = grey_boxes_scene()
    kept = 0
    for _ in range(60):
        tensor, out = transform(image, target)
        assert tensor.shape == (3, 320, 320) and tensor.dtype == torch.float32
        boxes, labels = out["boxes"], out["labels"]
        assert boxes.dtype == torch.float32 and labels.dtype == torch.int64 and boxes.shape == (len(labels), 4)
        assert (out["tag"] == labels * 10).all()
        assert 5 not in labels.tolist()  # the 0.4 px box is degenerate at any scale
        assert (boxes >= 0).all() and (boxes <= 320).all()
        assert ((boxes[:, 2:] - boxes[:, :2]) >= 1).all()
        centres = ((boxes[:, :2] + boxes[:, 2:]) / 2).long().clamp(0, 319)
        brightness = tensor[0, centres[:, 1], centres[:, 0]]
        order = labels.argsort()
        assert (brightness[order].diff() > 0).all(), (labels, brightness)
        kept += len(labels)
    assert 60 < kept < 4 * 60  # crops drop boxes sometimes, not always


def test_train_transform_varies_and_eval_transform_does_not():
    image, target = grey_boxes_scene()
    train = detection_train_transform(320)
    outputs = [train(image, target)[1]["boxes"] for _ in range(8)]
    assert any(o.shape != outputs[0].shape or not torch.equal(o, outputs[0]) for o in outputs[1:])
    evaluate = detection_eval_transform(320)
    first, second = evaluate(image, target), evaluate(image, target)
    assert torch.equal(first[0], second[0]) and torch.equal(first[1]["boxes"], second[1]["boxes"])


def test_eval_transform_scales_boxes_exactly_and_maps_back():
    image, target = grey_boxes_scene()
    _, out = detection_eval_transform(320)(image, target)
    torch.testing.assert_close(out["boxes"][0], torch.tensor([10.0, 20, 100, 146.6667]))
    assert out["labels"].tolist() == [1, 2, 3, 4, 5]  # eval keeps everything, even the sub-pixel box
    assert target["boxes"][0].tolist() == [20, 30, 200, 220]  # the sample is not changed in place
    tensor, none = detection_eval_transform(300)(image)
    assert tensor.shape == (3, 300, 300) and none is None


def test_normalisation_matches_the_weights():
    image = np.zeros((4, 4, 3), np.uint8)
    image[0, 0] = 255
    tf, _ = detection_eval_transform(32, SSDLITE_TF_COCO300)(image.repeat(8, 0).repeat(8, 1))
    assert tf[:, 12, 12].tolist() == [-1.0, -1.0, -1.0] and tf[:, 0, 0].tolist() == [1.0, 1.0, 1.0]
    imagenet, _ = detection_eval_transform(32)(image.repeat(8, 0).repeat(8, 1))
    mean, std = normalization_stats("imagenet")
    torch.testing.assert_close(imagenet[:, 12, 12], -torch.tensor(mean) / torch.tensor(std))
    assert mean_pixel("imagenet") == (124, 116, 104) and mean_pixel("tf") == (128, 128, 128)
    with pytest.raises(ValueError, match="unknown normalization 'caffe'"):
        SSDLITE320_COCO.derive(normalization="caffe")


def test_min_iou_crop_honours_its_threshold():
    crop = MinIoURandomCrop(min_ious=(0.7,))
    compose = A.Compose([crop], bbox_params=A.BboxParams(format="pascal_voc", label_fields=["i"]))
    image = np.zeros((200, 300, 3), np.uint8)
    box = np.array([[50, 40, 250, 180]], np.float32)
    sizes = set()
    for _ in range(40):
        out = compose(image=image, bboxes=box, i=[0])
        h, w = out["image"].shape[:2]
        sizes.add((h, w))
        x0, y0, x1, y1 = out["bboxes"][0]
        inter = (x1 - x0) * (y1 - y0)  # the box clipped to the crop
        iou = inter / (200 * 140 + h * w - inter)
        assert iou >= 0.7 - float32_rtol(8)  # the crop's constraint, both IoUs from float32 corners: 8 roundings
    assert len(sizes) > 5


def test_segmentation_train_pads_with_ignore_and_keeps_labels():
    torch.manual_seed(0)
    image = np.full((300, 400, 3), 200, np.uint8)
    mask = np.zeros((300, 400), np.uint8)
    mask[100:200, 100:300] = 7
    small = segmentation_train_transform(crop=513, scale=(0.5, 0.5))
    tensor, out = small(image, mask)
    assert tensor.shape == (3, 513, 513) and out.shape == (513, 513) and out.dtype == torch.int64
    assert set(out.unique().tolist()) == {0, 7, IGNORE_INDEX}
    assert (out != IGNORE_INDEX).sum() == 200 * 150  # the image scaled by exactly 0.5; the rest is padding
    _, std = normalization_stats("imagenet")
    # padding is the mean pixel to whole levels: within half a level of 0 after normalising
    assert tensor[:, out == IGNORE_INDEX].abs().max() <= 0.5 / 255 / min(std)
    assert tensor[:, out == 7].min() > 0.5  # the image's 200 normalises to ≥ 1.3 in every channel, padding to ~0
    big = segmentation_train_transform(crop=64)
    for _ in range(10):
        _, out = big(image, mask)
        assert out.shape == (64, 64) and set(out.unique().tolist()) <= {0, 7, IGNORE_INDEX}


def test_segmentation_eval_pads_bottom_right_only_and_keeps_the_mask_at_the_images_size():
    image = np.full((30, 40, 3), 255, np.uint8)
    mask = np.full((30, 40), 3, np.uint8)
    preset = deeplab_preset("tf_mnv2_pascal").derive(crop_size=64)
    tensor, out, region = SegmentationEvalTransform(lambda im: deeplab_preprocess(im, preset))(image, mask)
    assert tensor.shape == (3, 64, 64) and region == (30, 40) and out.shape == (30, 40) and (out == 3).all()
    assert (tensor[:, 30:] == 0).all() and (tensor[:, :, 40:] == 0).all()  # the mean exactly, as predict pads
    assert torch.allclose(tensor[:, :30, :40], torch.tensor(1.0))
    large = np.full((100, 80, 3), 255, np.uint8)  # "pad" brings a larger image down to the crop, aspect kept
    tensor, none, region = SegmentationEvalTransform(lambda im: deeplab_preprocess(im, preset))(large)
    assert tensor.shape == (3, 64, 64) and none is None and region == (64, 51)


def test_pipeline_decisions_are_independent_and_repeatable():
    """albumentations' own `seed=` gives every transform the same generator: flips would always coincide."""

    def decisions() -> list[tuple[bool, bool]]:
        compose = A.Compose([A.HorizontalFlip(p=0.5), A.VerticalFlip(p=0.5)])
        image = np.arange(4, dtype=np.uint8).reshape(2, 2, 1).repeat(3, axis=2)
        _Pipeline(compose)._seed_for_this_process()
        out = []
        for _ in range(32):
            result = compose(image=image)["image"][:, :, 0]
            out.append((bool(result[0, 0] in (1, 3)), bool(result[0, 0] in (2, 3))))
        return out

    torch.manual_seed(1)
    first = decisions()
    assert any(h != v for h, v in first) and any(h for h, _ in first) and any(v for _, v in first)
    torch.manual_seed(1)
    assert decisions() == first
