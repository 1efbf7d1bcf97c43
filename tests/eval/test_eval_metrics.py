"""Metric code shared by the evaluators: COCO mAP via pycocotools, VOC AP, the streaming confusion matrix."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
from pycocotools.coco import COCO

from eval.coco_report import STAT_NAMES, evaluate_coco, write_coco_report
from eval.segmentation import ConfusionMatrix
from eval.voc_ap import ImageDetections, ImageGroundTruth, average_precision, voc_detection_ap


def make_coco(tmp_path) -> COCO:
    images = [{"id": i, "width": 100, "height": 100, "file_name": f"{i}.jpg"} for i in (1, 2)]
    cats = [{"id": 3, "name": "car"}, {"id": 7, "name": "train"}]
    anns = [
        {"id": 1, "image_id": 1, "category_id": 3, "bbox": [10, 10, 40, 40], "area": 1600, "iscrowd": 0},
        {"id": 2, "image_id": 2, "category_id": 7, "bbox": [50, 20, 30, 60], "area": 1800, "iscrowd": 0},
        {"id": 3, "image_id": 2, "category_id": 3, "bbox": [5, 5, 20, 20], "area": 400, "iscrowd": 0},
    ]
    path = tmp_path / "gt.json"
    path.write_text(json.dumps({"images": images, "categories": cats, "annotations": anns}))
    return COCO(str(path))


def test_coco_perfect_detections_score_one_and_report_is_written(tmp_path):
    gt = make_coco(tmp_path)
    dets = [
        {"image_id": a["image_id"], "category_id": a["category_id"], "bbox": a["bbox"], "score": 0.9}
        for a in gt.dataset["annotations"]
    ]
    result = evaluate_coco(gt, dets)
    assert result.stats["AP"] == pytest.approx(1.0) and result.stats["AP50"] == pytest.approx(1.0)
    assert {c["name"]: c["AP"] for c in result.per_class} == {"car": pytest.approx(1.0), "train": pytest.approx(1.0)}
    report = write_coco_report(result, tmp_path / "out", "test", detections=dets)
    text = report.read_text()
    assert "| AP @[IoU=0.50:0.95, area=all, maxDets=100] | 1.000 |" in text and "| car | 2 |" in text
    assert json.loads((tmp_path / "out" / "metrics.json").read_text())["stats"]["AP"] == pytest.approx(1.0)
    assert (tmp_path / "out" / "pr_curve.png").read_bytes()[:4] == b"\x89PNG"


def test_coco_wrong_class_and_no_detections(tmp_path):
    gt = make_coco(tmp_path)
    wrong = [{"image_id": 1, "category_id": 7, "bbox": [10, 10, 40, 40], "score": 0.9}]
    assert evaluate_coco(gt, wrong).stats["AP"] == 0.0
    empty = evaluate_coco(gt, [])
    assert set(empty.stats) == set(STAT_NAMES) and all(v == 0.0 for v in empty.stats.values())


def test_average_precision_metrics():
    recall = np.array([0.5, 0.5, 1.0])
    precision = np.array([1.0, 0.5, 0.66666667])
    # Area: 0.5 × 1.0 + 0.5 × 0.667; 11-point: 6 points at 1.0 and 5 at 0.667.
    assert average_precision(recall, precision, use_07_metric=False) == pytest.approx(0.5 + 0.5 * 2 / 3)
    assert average_precision(recall, precision, use_07_metric=True) == pytest.approx((6 + 5 * 2 / 3) / 11)


def test_voc_ap_difficult_objects_are_neither_hits_nor_misses():
    gt = [
        ImageGroundTruth(
            torch.tensor([[0, 0, 10, 10], [20, 20, 30, 30.0]]), torch.tensor([1, 1]), torch.tensor([False, True])
        )
    ]
    only_easy = [ImageDetections(torch.tensor([[0, 0, 10, 10.0]]), torch.tensor([0.9]), torch.tensor([1]))]
    with_difficult_hit = [
        ImageDetections(
            torch.tensor([[20, 20, 30, 30], [0, 0, 10, 10.0]]), torch.tensor([0.95, 0.9]), torch.tensor([1, 1])
        )
    ]
    duplicate = [
        ImageDetections(
            torch.tensor([[0, 0, 10, 10], [0, 0, 10, 10.0]]), torch.tensor([0.95, 0.9]), torch.tensor([1, 1])
        )
    ]
    assert voc_detection_ap(only_easy, gt, 2) == [pytest.approx(1.0)]
    assert voc_detection_ap(with_difficult_hit, gt, 2) == [pytest.approx(1.0)]
    # The duplicate is a false positive after the hit: precision 1 up to recall 1 still → AP 1; swap the order:
    assert voc_detection_ap(duplicate, gt, 2, use_07_metric=False) == [pytest.approx(1.0)]
    late_hit = [
        ImageDetections(
            torch.tensor([[50, 50, 60, 60], [0, 0, 10, 10.0]]), torch.tensor([0.95, 0.9]), torch.tensor([1, 1])
        )
    ]
    assert voc_detection_ap(late_hit, gt, 2, use_07_metric=False) == [pytest.approx(0.5)]
    assert math.isnan(voc_detection_ap(only_easy, gt, 3)[1])  # class 2 has no ground truth


def test_confusion_matrix_ignores_255_and_computes_iou():
    cm = ConfusionMatrix(3)
    target = torch.tensor([[0, 0, 1, 1], [2, 2, 255, 255]])
    prediction = torch.tensor([[0, 1, 1, 1], [2, 0, 2, 2]])
    cm.update(prediction, target)
    assert cm.matrix.sum() == 6
    metrics = cm.compute()
    # class 0: tp 1, gt 2, pred 2 → 1/3; class 1: tp 2, gt 2, pred 3 → 2/3; class 2: tp 1, gt 2, pred 1 → 1/2
    assert metrics["per_class_iou"] == pytest.approx([1 / 3, 2 / 3, 1 / 2])
    assert metrics["mIoU"] == pytest.approx((1 / 3 + 2 / 3 + 1 / 2) / 3)
    assert metrics["pixel_accuracy"] == pytest.approx(4 / 6)


def test_confusion_matrix_rejects_unknown_ids_and_shape_mismatch():
    cm = ConfusionMatrix(3)
    with pytest.raises(ValueError, match=r"\[7\] are outside 0..2"):
        cm.update(torch.zeros(2, 2, dtype=torch.long), torch.tensor([[0, 7], [1, 255]]))
    with pytest.raises(ValueError, match="shape"):
        cm.update(torch.zeros(2, 2, dtype=torch.long), torch.zeros(2, 3, dtype=torch.long))


def test_class_names_match_by_name_across_coco_and_voc_spellings():
    from common.labels import match_class_names

    voc = ["background", "aeroplane", "Person", "tvmonitor", "pottedplant", "cow", "N/A"]
    coco = ["background", "person", "airplane", "N/A", "potted  plant", "tv", "giraffe"]
    assert match_class_names(voc, coco) == {0: 0, 1: 2, 2: 1, 3: 5, 4: 4}  # cow and the N/A slots stay out
    assert match_class_names(coco, voc) == {0: 0, 1: 2, 2: 1, 4: 4, 5: 3}
    assert match_class_names(["background", "dog", "dog"], ["background", "dog"]) == {0: 0, 1: 1}
