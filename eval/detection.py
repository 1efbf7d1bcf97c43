"""Detection evaluation shared by training (periodic validation) and the eval/coco_map.py and eval/voc_map.py
entry points: run a detector over a loader, gather the detections of every torchrun process, score them.

COCO-format sets are scored by pycocotools (eval/coco_report.py); VOC sets by the VOC07 / VOC2010+ AP
(eval/voc_ap.py), with `difficult` objects ignored.
"""

from __future__ import annotations

from pathlib import Path
from typing import Iterator

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from datasets.coco import CocoDetection
from datasets.voc import VOCDetection
from eval.coco_report import CocoResult, evaluate_coco, write_coco_report
from eval.voc_ap import ImageDetections, ImageGroundTruth, voc_detection_ap
from ssdlite.model import SSDLite
from ssdlite.postprocess import Detections, postprocess_with_preset
from train.distributed import DistInfo, gather_objects


@torch.inference_mode()
def detect(model: SSDLite, loader: DataLoader, device: torch.device, progress: bool = False,
           ) -> Iterator[tuple[dict, Detections]]:  # fmt: skip
    """(target, detections) per image; boxes in the pixels of the image file (the target's `orig_size`).
    Runs without autograd whatever the caller's mode, so any caller (trainer, CLI, notebook) may use it."""
    from tqdm import tqdm

    preset = model.preset
    anchors = model.anchors(preset.image_size, device)
    for batch in tqdm(loader, desc="detect", disable=not progress, dynamic_ncols=True):
        if batch is None:  # every sample of the batch was skipped by the dataset's skip policy
            continue
        images, targets = batch
        box_regression, class_logits = model(images.to(device, non_blocking=True))
        sizes = [tuple(int(v) for v in t["orig_size"]) for t in targets]
        detections = postprocess_with_preset(box_regression, class_logits, anchors, sizes, preset)
        for target, found in zip(targets, detections):
            yield target, {k: v.cpu() for k, v in found.items()}


def base_dataset(dataset: Dataset) -> Dataset:
    """The reader behind a Subset (evaluation on part of a set keeps the reader's metadata)."""
    while hasattr(dataset, "dataset"):
        dataset = dataset.dataset
    return dataset


def evaluate_coco_detections(model: SSDLite, loader: DataLoader, dist: DistInfo, out_dir: Path | None = None,
                             title: str = "COCO evaluation", progress: bool = False) -> CocoResult | None:  # fmt: skip
    """COCO mAP of `model` on a CocoDetection loader; rank 0 gets the result (and the report in `out_dir`)."""
    dataset = base_dataset(loader.dataset)
    if not isinstance(dataset, CocoDetection):
        raise ValueError(f"COCO evaluation needs a COCO-format dataset, got {type(dataset).__name__}")
    results, image_ids = [], []
    for target, found in detect(model, loader, dist.device, progress):
        image_ids.append(int(target["image_id"]))
        results += dataset.to_coco_results(target["image_id"], found["boxes"], found["scores"].tolist(),
                                           found["labels"].tolist())  # fmt: skip
    gathered = gather_objects((results, image_ids))
    if not dist.is_main:
        return None
    results = [r for part, _ in gathered for r in part]
    image_ids = sorted({i for _, ids in gathered for i in ids})
    result = evaluate_coco(dataset.coco, results, image_ids)
    if out_dir is not None:
        write_coco_report(result, out_dir, title, detections=results)
    return result


def evaluate_voc_detections(model: SSDLite, loader: DataLoader, dist: DistInfo, use_07_metric: bool = True,
                            progress: bool = False) -> dict[str, float | list[float]] | None:  # fmt: skip
    """VOC mAP (07 11-point or 2010+ area) on a VOCDetection loader; rank 0 gets {"mAP", "per_class_ap"}."""
    dataset = base_dataset(loader.dataset)
    records = {r.image_id: r for r in getattr(dataset, "records", [])}
    if not isinstance(dataset, VOCDetection):
        raise ValueError(f"VOC evaluation needs a VOCDetection dataset, got {type(dataset).__name__}")
    pairs = []
    for target, found in detect(model, loader, dist.device, progress):
        record = records[target["image_id"]]
        truth = ImageGroundTruth(torch.from_numpy(record.boxes), torch.from_numpy(record.labels),
                                 torch.from_numpy(record.extra["difficult"]))  # fmt: skip
        pairs.append((truth, ImageDetections(found["boxes"], found["scores"], found["labels"])))
    gathered = [p for part in gather_objects(pairs) for p in part]
    if not dist.is_main:
        return None
    aps = voc_detection_ap([d for _, d in gathered], [g for g, _ in gathered], len(dataset.class_names),
                           use_07_metric=use_07_metric)  # fmt: skip
    return {"mAP": float(np.nanmean(aps)), "per_class_ap": aps}
