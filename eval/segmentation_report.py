"""The segmentation report of eval/voc_miou.py: Markdown, JSON, a confusion-matrix plot and prediction overlays.

    report.md              mIoU, pixel accuracy, mean class accuracy, per-class IoU table (NaN shown as "–")
    metrics.json           the same numbers (NaN → null), the raw confusion matrix and the run's details
    confusion_matrix.png   row-normalised (each ground-truth class sums to 1), class names on both axes
    overlay_NN.png         image | ground truth | prediction, side by side in the VOC palette, with a legend

Every file is written to a temporary name beside it and renamed, so a report is never half-written. Kept apart
from the CLI so that training or notebooks can write the same report from a ConfusionMatrix.
"""

from __future__ import annotations

import io
import json
import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np
import torch

from common.files import write_atomic
from common.labels import IGNORE_INDEX
from datasets.segmentation import voc_palette

DASH = "–"
_PALETTE = np.asarray(voc_palette(), dtype=np.uint8).reshape(256, 3)


@dataclass
class Overlay:
    """One image for the report: RGB uint8 H×W×3 and two class-index maps H×W (255 = ignore)."""

    image: np.ndarray
    truth: np.ndarray
    prediction: np.ndarray
    name: str = ""


def json_safe(value: Any) -> Any:
    """NaN/inf → None (JSON has no NaN), numpy/torch scalars and arrays → plain Python, recursively."""
    if isinstance(value, Mapping):
        return {str(k): json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [json_safe(v) for v in value]
    if isinstance(value, (np.ndarray, torch.Tensor)):
        return json_safe(value.tolist())
    if isinstance(value, Path):
        return str(value)
    if isinstance(value, (np.integer,)):
        return int(value)
    if isinstance(value, (float, np.floating)):
        return float(value) if math.isfinite(value) else None
    return value


def percent(value: float | None) -> str:
    """A fraction as a percentage with two decimals, "–" for NaN/None."""
    if value is None or not math.isfinite(value):
        return DASH
    return f"{100 * value:.2f}"


def _as_matrix(matrix: Any) -> np.ndarray:
    if hasattr(matrix, "matrix"):  # an eval.segmentation.ConfusionMatrix
        matrix = matrix.matrix
    if isinstance(matrix, torch.Tensor):
        matrix = matrix.detach().cpu().numpy()
    return np.asarray(matrix, dtype=np.int64)


def _png(fig) -> bytes:
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png")
    return buffer.getvalue()


def plot_confusion_matrix(matrix: np.ndarray, class_names: Sequence[str], path: Path) -> None:
    """Row-normalised confusion matrix (rows: ground truth, columns: prediction); classes absent from the
    ground truth are grey rows."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    k = len(class_names)
    rows = matrix.sum(axis=1, keepdims=True)
    with np.errstate(divide="ignore", invalid="ignore"):
        normalised = np.where(rows > 0, matrix / np.maximum(rows, 1), np.nan)
    side = min(max(4.5, 0.34 * k + 2.5), 30.0)
    fig, ax = plt.subplots(figsize=(side + 1.0, side), dpi=110)
    cmap = plt.get_cmap("Blues").with_extremes(bad="#dddddd")
    image = ax.imshow(np.ma.masked_invalid(normalised), cmap=cmap, vmin=0.0, vmax=1.0, interpolation="nearest")
    ax.set_xticks(range(k), labels=list(class_names), rotation=90, fontsize=7 if k > 12 else 9)
    ax.set_yticks(range(k), labels=list(class_names), fontsize=7 if k > 12 else 9)
    ax.set(xlabel="prediction", ylabel="ground truth", title="Confusion matrix (each row sums to 1)")
    if k <= 25:  # cell values in percent, where they are legible
        for i in range(k):
            for j in range(k):
                v = normalised[i, j]
                if np.isfinite(v) and v >= 0.005:
                    ax.text(
                        j,
                        i,
                        f"{100 * v:.0f}",
                        ha="center",
                        va="center",
                        fontsize=6 if k > 12 else 8,
                        color="white" if v > 0.5 else "black",
                    )
    fig.colorbar(image, ax=ax, fraction=0.046, pad=0.04)
    fig.tight_layout()
    data = _png(fig)
    plt.close(fig)
    write_atomic(path, data)


def colourise(mask: np.ndarray) -> np.ndarray:
    """Class-index map → RGB in the VOC palette (255 = ignore is VOC's cream border colour)."""
    return _PALETTE[np.clip(mask, 0, 255).astype(np.uint8)]


def render_overlay(overlay: Overlay, class_names: Sequence[str]) -> bytes:
    """image | ground truth | prediction with a gap between panels and a legend of the classes shown, as PNG."""
    from PIL import Image, ImageDraw, ImageFont

    image = np.asarray(overlay.image, dtype=np.uint8)
    truth, prediction = np.asarray(overlay.truth), np.asarray(overlay.prediction)
    height, width = image.shape[:2]
    gap = 4
    panels = [image, colourise(truth), colourise(prediction)]
    present = sorted({int(v) for v in np.unique(np.concatenate([truth.ravel(), prediction.ravel()]))})
    names = [
        (v, class_names[v] if v < len(class_names) else f"class {v}") if v != IGNORE_INDEX else (v, "ignore")
        for v in present
    ]
    line, per_row = 14, max(1, (3 * width + 2 * gap) // 110)
    legend_height = line * math.ceil(len(names) / per_row) + 4 + line  # + the panel titles
    canvas = Image.new("RGB", (3 * width + 2 * gap, height + legend_height), "white")
    draw = ImageDraw.Draw(canvas)
    font = ImageFont.load_default()
    for i, (panel, title) in enumerate(zip(panels, ("image", "ground truth", "prediction"), strict=True)):
        canvas.paste(Image.fromarray(np.ascontiguousarray(panel)), (i * (width + gap), line))
        draw.text((i * (width + gap) + 2, 1), title, fill="black", font=font)
    for n, (value, name) in enumerate(names):
        x, y = (n % per_row) * 110 + 2, height + line + 2 + (n // per_row) * line
        draw.rectangle([x, y + 2, x + 10, y + 11], fill=tuple(int(c) for c in _PALETTE[value]), outline="black")
        draw.text((x + 14, y), name[:16], fill="black", font=font)
    buffer = io.BytesIO()
    canvas.save(buffer, format="PNG")
    return buffer.getvalue()


def write_segmentation_report(
    metrics: Mapping[str, Any],
    class_names: Sequence[str],
    matrix: Any,
    out_dir: str | os.PathLike,
    title: str,
    overlays: Sequence[Overlay] = (),
    details: Mapping[str, Any] | None = None,
) -> Path:
    """Write the report (see the module docstring) into `out_dir` and return the path of report.md.

    `metrics` is `ConfusionMatrix.compute()`'s dict; `matrix` the ConfusionMatrix itself (or its K×K counts);
    `details` (checkpoint, data, scales, timing...) goes into metrics.json and a "Setup" list in report.md.
    """
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    counts = _as_matrix(matrix)
    k = len(class_names)
    if counts.shape != (k, k):
        raise ValueError(f"confusion matrix of shape {counts.shape} for {k} class names")
    iou = [float("nan") if v is None else float(v) for v in metrics["per_class_iou"]]
    gt_pixels = counts.sum(axis=1)
    with np.errstate(divide="ignore", invalid="ignore"):
        accuracy = np.diag(counts) / gt_pixels
    per_class = [
        {
            "name": name,
            "iou": iou[i],
            "accuracy": float(accuracy[i]),
            "gt_pixels": int(gt_pixels[i]),
            "predicted_pixels": int(counts[:, i].sum()),
        }
        for i, name in enumerate(class_names)
    ]
    details = dict(details or {})

    plot_confusion_matrix(counts, class_names, out_dir / "confusion_matrix.png")
    overlay_files = []
    for index, overlay in enumerate(overlays):
        name = f"overlay_{index:02d}.png"
        write_atomic(out_dir / name, render_overlay(overlay, class_names))
        overlay_files.append((name, overlay.name))

    summary = {
        "mIoU": metrics["mIoU"],
        "pixel_accuracy": metrics["pixel_accuracy"],
        "mean_class_accuracy": metrics["mean_class_accuracy"],
    }
    document = {
        **summary,
        "per_class_iou": iou,
        "per_class": per_class,
        "class_names": list(class_names),
        "confusion_matrix": counts.tolist(),
        "overlays": [f for f, _ in overlay_files],
        **details,
    }
    write_atomic(out_dir / "metrics.json", json.dumps(json_safe(document), indent=2, allow_nan=False) + "\n")

    absent = [c["name"] for c in per_class if not math.isfinite(c["iou"])]
    lines = [
        f"# {title}",
        "",
        "| metric | value (%) |",
        "|---|---:|",
        f"| mIoU | {percent(summary['mIoU'])} |",
        f"| pixel accuracy | {percent(summary['pixel_accuracy'])} |",
        f"| mean class accuracy | {percent(summary['mean_class_accuracy'])} |",
        "",
        f"mIoU is the mean over the {k - len(absent)} classes present in the ground truth or the predictions"
        + (f" ({', '.join(absent)}: neither, shown as {DASH})." if absent else "."),
        f"Pixels labelled {IGNORE_INDEX} (object borders, padding) are not counted.",
    ]
    if details:
        lines += ["", *setup_section(details)]
    lines += [
        "",
        "## Per-class IoU",
        "",
        "| class | IoU (%) | accuracy (%) | ground-truth pixels |",
        "|---|---:|---:|---:|",
        *(f"| {c['name']} | {percent(c['iou'])} | {percent(c['accuracy'])} | {c['gt_pixels']} |" for c in per_class),
        "",
        "## Confusion matrix",
        "",
        "![confusion matrix](confusion_matrix.png)",
    ]
    if overlay_files:
        lines += ["", "## Predictions", "", "image | ground truth | prediction (VOC palette)", ""]
        lines += [f"![{label or file}]({file})" + (f" {label}" if label else "") for file, label in overlay_files]
    report = out_dir / "report.md"
    write_atomic(report, "\n".join(lines) + "\n")
    return report


def setup_section(setup: Mapping[str, Any]) -> list[str]:
    """The "## Setup" list every evaluation report carries: one `- key: value` line per entry."""
    return ["## Setup", "", *(f"- {key.replace('_', ' ')}: {_text(value)}" for key, value in setup.items())]


def _text(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:g}"
    if isinstance(value, (list, tuple)):
        return ", ".join(_text(v) for v in value) if value else DASH
    return str(value)
