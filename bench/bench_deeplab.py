"""Mobile DeepLabv3 (mnv2_os16) on the CPU beside torchvision's MobileNetV3 segmentation models, measured in the
same run: inference at 513×513 against lraspp_mobilenet_v3_large and deeplabv3_mobilenet_v3_large, and a training
step at crop 513 against deeplabv3_mobilenet_v3_large.

Batch 1, fp32, eval mode and torch.inference_mode for latency; the thread count is bench.run's (2 by default).
Our models run in channels_last with channels_last inputs; torchvision's are measured both in NCHW and
channels_last (weights and input) and the faster one is the reference. Latency candidates are interleaved in this
process; training steps run in fresh subprocesses that only train, with glibc's default malloc and after
common.allocator.tune_allocator() (see bench.common.training_step_runs).
"""

from __future__ import annotations

import copy
import statistics
from typing import Callable

import torch
import torch.nn.functional as F

from bench.common import (
    Section,
    cpu_section,
    interleaved_seconds,
    markdown_table,
    time_training_steps,
    training_comparison,
    training_step_runs,
)
from bench.models import SEGMENTATION_CLASSES, engine_sgd, our_deeplab, random_masks, torchvision_segmentation

TITLE = "Mobile DeepLabv3: inference and training beside torchvision"
COMMAND = "python -m bench.run --only deeplab"
CL = torch.channels_last
SIZE = 513
TRAIN_BATCH = 4


def _ms(seconds: list[float]) -> float:
    return 1000.0 * statistics.median(seconds)


def _met(ok: bool) -> str:
    return "yes" if ok else "no"


# ---------------------------------------------------------------- 1. inference


def _inference_section(quick: bool) -> list[str]:
    from backbone.predictor import fuse_for_inference
    from tools.complexity import measure

    x = torch.randn(1, 3, SIZE, SIZE, generator=torch.Generator().manual_seed(0))  # a normalised image
    x_cl = x.contiguous(memory_format=CL)
    ours = our_deeplab(train=False)
    fused = fuse_for_inference(ours)
    references = {}
    for name in ("lraspp", "deeplabv3"):
        nchw = torchvision_segmentation(name, train=False)
        references[f"{name}_nchw"] = (nchw, x)
        references[f"{name}_cl"] = (copy.deepcopy(nchw).to(memory_format=CL), x_cl)
    madds = {"ours": measure(ours, (SIZE, SIZE)).madds / 1e9}
    for name in ("lraspp", "deeplabv3"):
        madds[name] = measure(references[f"{name}_nchw"][0], (SIZE, SIZE)).madds / 1e9

    candidates: dict[str, Callable[[], object]] = {
        "ours": lambda: ours(x_cl),
        "fused": lambda: fused(x_cl),
        # torchvision's segmentation models return {"out": logits at the input size}, as ours returns logits.
        **{key: (lambda m=model, i=inp: m(i)["out"]) for key, (model, inp) in references.items()},
    }
    rounds, warmup = (3, 1) if quick else (20, 3)
    with torch.inference_mode():
        times = interleaved_seconds(candidates, rounds, warmup)
    ms = {key: _ms(t) for key, t in times.items()}
    best = {name: min((f"{name}_nchw", f"{name}_cl"), key=ms.__getitem__) for name in ("lraspp", "deeplabv3")}
    lr, dl = ms[best["lraspp"]], ms[best["deeplabv3"]]
    fmt = {"nchw": "NCHW", "cl": "channels_last"}
    rows = []
    for name, title in (("lraspp", "lraspp_mobilenet_v3_large"), ("deeplabv3", "deeplabv3_mobilenet_v3_large")):
        for variant in ("nchw", "cl"):
            key = f"{name}_{variant}"
            rows.append(
                [
                    f"torchvision {title}, {fmt[variant]}" + (" (reference)" if best[name] == key else ""),
                    f"{ms[key]:.1f}",
                    f"{madds[name]:.2f}",
                    f"{ms[key] / lr:.2f}×",
                    f"{ms[key] / dl:.2f}×",
                    "—",
                    "—",
                ]
            )
    fastest = min(("ours", "fused"), key=ms.__getitem__)
    for key, label in (
        ("ours", "ours, mnv2_os16, eager, channels_last"),
        ("fused", "ours, mnv2_os16, eager + `fuse_for_inference` (BN folded, channels_last)"),
    ):
        target = key == fastest
        rows.append(
            [
                label + (" (our fastest path)" if target else ""),
                f"{ms[key]:.1f}",
                f"{madds['ours']:.2f}",
                f"{ms[key] / lr:.2f}×",
                f"{ms[key] / dl:.2f}×",
                "≤ 1.0× lraspp, ≤ 0.6× deeplabv3" if target else "—",
                f"{_met(ms[key] <= lr)}, {_met(ms[key] <= 0.6 * dl)}" if target else "—",
            ]
        )
    return [
        f"### 1. Inference, {SIZE}×{SIZE}, {SEGMENTATION_CLASSES} classes, batch 1: logits at the input size",
        "",
        markdown_table(
            ["what", "median ms", "G MAdds", "ratio to lraspp", "ratio to deeplabv3", "target", "met"], rows, "lrrrrll"
        ),
        "",
        f"Median of {rounds} interleaved rounds after {warmup} warm-up rounds. Input: one normalised "
        f"{SIZE}×{SIZE} tensor (channels_last for ours and for torchvision's channels_last variants, whose weights "
        "are converted too); every model returns bilinearly upsampled logits at the input size. Random weights "
        "(torchvision: weights=None, weights_backbone=None; segmentation time does not depend on them). "
        "Multiply-adds from torch.utils.flop_counter.",
    ]


# ---------------------------------------------------------------- 2. training step


def training_results(quick: bool, only: list[str] | None = None) -> dict:
    """Time training steps of `only` (default: all candidates) in this process; see time_training_steps. Called
    in fresh subprocesses by training_step_runs, so the result is JSON-able."""
    from common.labels import IGNORE_INDEX
    from deeplab_mobile import segmentation_loss

    gen = torch.Generator().manual_seed(0)
    images = torch.randn(TRAIN_BATCH, 3, SIZE, SIZE, generator=gen)
    masks = random_masks(gen, TRAIN_BATCH, SIZE, SEGMENTATION_CLASSES)  # 10% ignored pixels (VOC boundaries, padding)

    def tv_loss(out: dict, target: torch.Tensor) -> torch.Tensor:
        return F.cross_entropy(out["out"], target, ignore_index=IGNORE_INDEX)

    def stepper(
        build: Callable[[], torch.nn.Module], memory_format: torch.memory_format, loss_fn: Callable
    ) -> Callable[[], Callable[[], None]]:
        def make() -> Callable[[], None]:
            model = build().to(memory_format=memory_format)
            x = images.contiguous(memory_format=memory_format)
            opt = engine_sgd(model)

            def step() -> None:
                loss = loss_fn(model(x), masks)
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()

            return step

        return make

    factories = {
        "ours": stepper(lambda: our_deeplab(train=True), CL, segmentation_loss),
        "tv_cl": stepper(lambda: torchvision_segmentation("deeplabv3", train=True), CL, tv_loss),
        "tv_nchw": stepper(lambda: torchvision_segmentation("deeplabv3", train=True), torch.contiguous_format, tv_loss),
    }
    return time_training_steps(factories, quick, only)


def _training_section(quick: bool) -> list[str]:
    default, tuned = training_step_runs("bench_deeplab", ["ours", "tv_cl", "tv_nchw"], quick, TRAIN_BATCH)
    tv = "torchvision deeplabv3_mobilenet_v3_large (aux_loss off), cross-entropy ignore 255"
    labels = {
        "tv_nchw": f"{tv}, NCHW",
        "tv_cl": f"{tv}, channels_last",
        "ours": "ours, mnv2_os16 + segmentation_loss (cross-entropy ignore 255), channels_last",
    }
    return [
        f"### 2. Training step, batch {TRAIN_BATCH}, crop {SIZE}×{SIZE}, CPU: forward + loss + backward + SGD step",
        "",
        *training_comparison(
            default,
            tuned,
            labels,
            ("ours",),
            ("tv_cl", "tv_nchw"),
            1.0,
            {"ours": "ours", "tv_cl": "torchvision, channels_last"},
        ),
        "",
        "The reference is the faster torchvision format. Random normalised images, random masks with 10% ignored "
        "pixels; SGD momentum 0.9 Nesterov, weight decay 4e-5 for both; train-mode BatchNorm and dropout.",
    ]


def run(quick: bool) -> Section:
    return cpu_section(TITLE, COMMAND, quick, lambda: [*_inference_section(quick), "", *_training_section(quick), ""])
