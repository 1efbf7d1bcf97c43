"""COCO box mAP with pycocotools and its report: the 12 COCOeval numbers, per-class AP, a PR plot.

Kept apart from the CLI (eval/coco_map.py) so training can evaluate in-process with the same code.
"""

from __future__ import annotations

import contextlib
import io
import json
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

import numpy as np
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval

from common.files import write_atomic
from eval.segmentation_report import json_safe, setup_section

STAT_NAMES = (
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
STAT_TITLES = (
    "AP @[IoU=0.50:0.95, area=all, maxDets=100]",
    "AP @[IoU=0.50, area=all, maxDets=100]",
    "AP @[IoU=0.75, area=all, maxDets=100]",
    "AP @[IoU=0.50:0.95, area=small, maxDets=100]",
    "AP @[IoU=0.50:0.95, area=medium, maxDets=100]",
    "AP @[IoU=0.50:0.95, area=large, maxDets=100]",
    "AR @[IoU=0.50:0.95, area=all, maxDets=1]",
    "AR @[IoU=0.50:0.95, area=all, maxDets=10]",
    "AR @[IoU=0.50:0.95, area=all, maxDets=100]",
    "AR @[IoU=0.50:0.95, area=small, maxDets=100]",
    "AR @[IoU=0.50:0.95, area=medium, maxDets=100]",
    "AR @[IoU=0.50:0.95, area=large, maxDets=100]",
)


@dataclass
class CocoResult:
    stats: dict[str, float]
    per_class: list[dict[str, float | str]] = field(default_factory=list)
    precision: np.ndarray | None = None  # COCOeval's [T, R, K, A, M] array, -1 where undefined
    num_images: int = 0
    num_detections: int = 0


def evaluate_coco(
    coco_gt: COCO, detections: list[dict], image_ids: list[int] | None = None, category_ids: list[int] | None = None
) -> CocoResult:
    """Run COCOeval (bbox) on `detections` in COCO result format (COCO category ids, xywh boxes), over
    `category_ids` only when given (the categories a detector knows)."""
    image_ids = sorted(coco_gt.getImgIds()) if image_ids is None else image_ids
    if not detections:
        return CocoResult({name: 0.0 for name in STAT_NAMES}, num_images=len(image_ids))
    with contextlib.redirect_stdout(io.StringIO()):  # pycocotools prints progress chatter
        coco_dt = coco_gt.loadRes(detections)
        evaluator = COCOeval(coco_gt, coco_dt, "bbox")
        evaluator.params.imgIds = image_ids
        if category_ids is not None:
            evaluator.params.catIds = sorted(category_ids)
        evaluator.evaluate()
        evaluator.accumulate()
        evaluator.summarize()
    stats = {name: max(0.0, float(v)) for name, v in zip(STAT_NAMES, evaluator.stats, strict=True)}
    precision = evaluator.eval["precision"]  # [IoU thresholds, recall points, classes, areas, max dets]
    per_class = []
    for k, cat_id in enumerate(evaluator.params.catIds):
        p_all, p50 = precision[:, :, k, 0, -1], precision[0, :, k, 0, -1]
        if (p_all > -1).any():
            per_class.append(
                {
                    "category_id": int(cat_id),
                    "name": coco_gt.cats[cat_id]["name"],
                    "AP": float(p_all[p_all > -1].mean()),
                    "AP50": float(p50[p50 > -1].mean()) if (p50 > -1).any() else 0.0,
                    "instances": len(coco_gt.getAnnIds(imgIds=image_ids, catIds=[cat_id], iscrowd=False)),
                }
            )
    return CocoResult(stats, per_class, precision, len(image_ids), len(detections))


def plot_precision_recall(result: CocoResult, path: Path) -> None:
    """Class-averaged precision–recall curves at IoU 0.5, 0.75 and averaged over 0.5:0.95."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5.5, 4.5), dpi=120)
    recall = np.linspace(0, 1, 101)
    if result.precision is not None:
        p = np.where(result.precision[:, :, :, 0, -1] > -1, result.precision[:, :, :, 0, -1], np.nan)
        curves = (("IoU 0.50", p[0]), ("IoU 0.75", p[5]), ("IoU 0.50:0.95", np.nanmean(p, axis=0)))
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", category=RuntimeWarning)  # classes without ground truth are all-NaN
            for label, curve in curves:
                ax.plot(recall, np.nanmean(curve, axis=1), label=label)
    ax.set(
        xlabel="recall",
        ylabel="precision",
        xlim=(0, 1),
        ylim=(0, 1.01),
        title=f"COCO box PR (AP {result.stats['AP']:.3f}, AP50 {result.stats['AP50']:.3f})",
    )
    ax.grid(alpha=0.3)
    ax.legend(loc="lower left")
    fig.tight_layout()
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png")
    plt.close(fig)
    write_atomic(path, buffer.getvalue())


def write_coco_report(
    result: CocoResult,
    out_dir: Path,
    title: str,
    detections: list[dict] | None = None,
    setup: Mapping[str, Any] | None = None,
) -> Path:
    """report.md, metrics.json, pr_curve.png (and detections.json when given) in `out_dir`; `setup` (how the
    evaluation ran: checkpoint, input, thresholds, data) is listed under the title and kept in metrics.json."""
    out_dir.mkdir(parents=True, exist_ok=True)
    if detections is not None:
        write_atomic(out_dir / "detections.json", json.dumps(detections))
    metrics = {
        "stats": result.stats,
        "per_class": result.per_class,
        "num_images": result.num_images,
        "num_detections": result.num_detections,
        **({"setup": dict(setup)} if setup else {}),
    }
    write_atomic(out_dir / "metrics.json", json.dumps(json_safe(metrics), indent=2) + "\n")
    plot_precision_recall(result, out_dir / "pr_curve.png")
    lines = [
        f"# {title}",
        "",
        *([*setup_section(setup), ""] if setup else []),
        f"{result.num_images} images, {result.num_detections} detections. COCO box metrics from pycocotools:",
        "",
        "| metric | value |",
        "|---|---:|",
        *(f"| {t} | {result.stats[n]:.3f} |" for n, t in zip(STAT_NAMES, STAT_TITLES, strict=True)),
        "",
        "![precision-recall](pr_curve.png)",
        "",
        "## Per-class AP",
        "",
        "| class | instances | AP | AP50 |",
        "|---|---:|---:|---:|",
        *(
            f"| {c['name']} | {c['instances']} | {c['AP']:.3f} | {c['AP50']:.3f} |"
            for c in sorted(result.per_class, key=lambda c: -c["AP"])
        ),
    ]
    report = out_dir / "report.md"
    write_atomic(report, "\n".join(lines) + "\n")
    return report
