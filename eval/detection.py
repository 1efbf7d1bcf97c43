"""Detection evaluation shared by training (periodic validation) and the eval/coco_map.py and eval/voc_map.py
entry points: run a detector over a loader, gather the detections of every torchrun process, score them.

COCO-format sets are scored by pycocotools (eval/coco_report.py); VOC sets by the VOC07 / VOC2010+ AP
(eval/voc_ap.py), with `difficult` objects ignored.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, Sequence

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from common.distributed import DistInfo, gather_objects
from common.labels import UNUSED_CLASS, canonical_class_name, match_class_names
from datasets.coco import CocoDetection
from datasets.voc import VOCDetection
from eval.coco_report import CocoResult, evaluate_coco, write_coco_report
from eval.voc_ap import ImageDetections, ImageGroundTruth, voc_detection_ap
from ssdlite.detector import detect_inputs
from ssdlite.model import SSDLite
from ssdlite.postprocess import Detections


def detect(
    model: SSDLite,
    loader: DataLoader,
    progress: bool = False,
    *,
    score_threshold: float | None = None,
    nms_iou: float | None = None,
) -> Iterator[tuple[dict, Detections]]:
    """(target, detections) per image, through the detector's own path (`ssdlite.detect_inputs` on the inputs of
    `DetectionEvalTransform`), so they are what `Detector` returns for the same files; boxes in the pixels of the
    image file (the target's `orig_size`), thresholds the preset's unless given."""
    from tqdm import tqdm

    for batch in tqdm(loader, desc="detect", disable=not progress, dynamic_ncols=True):
        if batch is None:  # every sample of the batch was skipped by the dataset's skip policy
            continue
        images, targets = batch
        sizes = [tuple(int(v) for v in t["orig_size"]) for t in targets]
        found = detect_inputs(model, images, sizes, score_threshold=score_threshold, nms_iou=nms_iou)
        for target, one in zip(targets, found, strict=True):
            yield target, {k: v.cpu() for k, v in one.items()}


@dataclass(frozen=True)
class LabelMatch:
    """A detector's labels on a dataset's, matched by class name: model label → dataset label, and the classes
    only one side has (left out of the score)."""

    to_dataset: dict[int, int]
    model_only: list[str]
    dataset_only: list[str]

    @property
    def positional(self) -> bool:
        """Every class of the dataset found at the model's same label: labels can be read as they are."""
        return not self.dataset_only and all(i == j for i, j in self.to_dataset.items())

    def apply(self, found: Detections) -> Detections:
        """The detections of the classes both know, relabelled to the dataset's labels."""
        labels = found["labels"].tolist()
        keep = torch.tensor([label in self.to_dataset for label in labels], dtype=torch.bool)
        mapped = [self.to_dataset[label] for label in labels if label in self.to_dataset]
        return {**{key: value[keep] for key, value in found.items()}, "labels": torch.tensor(mapped, dtype=torch.int64)}

    def describe(self, dataset_names: Sequence[str]) -> dict[str, str]:
        """Report lines: the classes scored and those left out on either side."""
        scored = [dataset_names[j] for j in sorted(self.to_dataset.values())]

        def listed(names: list[str], what: str) -> str:
            return f"{len(names)} {what}: {', '.join(names)}" if names else "none"

        return {
            "classes_scored": listed(scored, "known to both"),
            "left_out_of_the_data": listed(self.dataset_only, "the checkpoint does not know"),
            "left_out_of_the_checkpoint": listed(self.model_only, "the data does not have"),
        }


def match_labels(model_names: Sequence[str], dataset_names: Sequence[str]) -> LabelMatch | None:
    """Match a detector's class names (index 0 = background) onto a dataset's by name (common.labels: any case,
    COCO↔VOC aliases); None when they share no class."""
    pairs = {i: j for i, j in match_class_names(model_names, dataset_names).items() if i > 0 and j > 0}
    if not pairs:
        return None

    def unmatched(names: Sequence[str], matched: set[int]) -> list[str]:
        return [
            name
            for k, name in enumerate(names)
            if k > 0 and k not in matched and canonical_class_name(name) != UNUSED_CLASS
        ]

    return LabelMatch(pairs, unmatched(model_names, set(pairs)), unmatched(dataset_names, set(pairs.values())))


def base_dataset(dataset: Dataset) -> Dataset:
    """The reader behind a Subset (evaluation on part of a set keeps the reader's metadata)."""
    while hasattr(dataset, "dataset"):
        dataset = dataset.dataset
    return dataset


def evaluate_coco_detections(
    model: SSDLite,
    loader: DataLoader,
    dist: DistInfo,
    out_dir: Path | None = None,
    title: str = "COCO evaluation",
    progress: bool = False,
) -> CocoResult | None:
    """COCO mAP of `model` on a CocoDetection loader (the preset's post-processing); rank 0 gets the result (and
    the report in `out_dir`)."""
    dataset = base_dataset(loader.dataset)
    if not isinstance(dataset, CocoDetection):
        raise ValueError(f"COCO evaluation needs a COCO-format dataset, got {type(dataset).__name__}")
    results, image_ids = [], []
    for target, found in detect(model, loader, progress):
        image_ids.append(int(target["image_id"]))
        results += dataset.to_coco_results(
            target["image_id"], found["boxes"], found["scores"].tolist(), found["labels"].tolist()
        )
    gathered = gather_objects((results, image_ids))
    if not dist.is_main:
        return None
    results = [r for part, _ in gathered for r in part]
    image_ids = sorted({i for _, ids in gathered for i in ids})
    result = evaluate_coco(dataset.coco, results, image_ids)
    if out_dir is not None:
        write_coco_report(result, out_dir, title, detections=results)
    return result


def evaluate_voc_detections(
    model: SSDLite, loader: DataLoader, dist: DistInfo, use_07_metric: bool = True, progress: bool = False
) -> dict[str, float | list[float]] | None:
    """VOC mAP (07 11-point or 2010+ area) on a VOCDetection loader; rank 0 gets {"mAP", "per_class_ap"}."""
    dataset = base_dataset(loader.dataset)
    records = {r.image_id: r for r in getattr(dataset, "records", [])}
    if not isinstance(dataset, VOCDetection):
        raise ValueError(f"VOC evaluation needs a VOCDetection dataset, got {type(dataset).__name__}")
    pairs = []
    for target, found in detect(model, loader, progress):
        record = records[target["image_id"]]
        truth = ImageGroundTruth(
            torch.from_numpy(record.boxes), torch.from_numpy(record.labels), torch.from_numpy(record.extra["difficult"])
        )
        pairs.append((truth, ImageDetections(found["boxes"], found["scores"], found["labels"])))
    gathered = [p for part in gather_objects(pairs) for p in part]
    if not dist.is_main:
        return None
    aps = voc_detection_ap(
        [d for _, d in gathered], [g for g, _ in gathered], len(dataset.class_names), use_07_metric=use_07_metric
    )
    return {"mAP": float(np.nanmean(aps)), "per_class_ap": aps}
