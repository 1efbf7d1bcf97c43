"""Shared helpers for the side-by-side benchmarks: medians of repeated runs and machine facts."""

from __future__ import annotations

import os
import platform
import statistics
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
import torch

# The real test files (shared/assets/README.md): photos, Google's TFLite models, VOC samples.
ASSETS = Path(os.environ.get("MNV2_ASSETS", Path(__file__).resolve().parent.parent.parent / "shared" / "assets"))


@dataclass
class Section:
    """One benchmark's contribution to BENCHMARKS.md: a title, a Markdown body and the command that made it.
    `skipped`: nothing was measured here (e.g. no GPU), so bench.run keeps the section BENCHMARKS.md already has."""

    title: str
    body: str
    command: str
    skipped: bool = False


def median_seconds(fn: Callable[[], object], repeats: int = 10, warmup: int = 2) -> float:
    """Median wall time of `fn()` over `repeats` runs after `warmup` untimed runs."""
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def machine_summary() -> str:
    """Markdown lines naming the machine and library versions, so numbers are never read out of context."""
    import numpy
    import torchvision

    lines = [
        f"- machine: {platform.machine()}, {os.cpu_count()} logical CPUs, {platform.processor() or 'unknown CPU'}",
        f"- python {platform.python_version()}, torch {torch.__version__}, torchvision {torchvision.__version__}, "
        f"numpy {numpy.__version__}",
        f"- torch threads: {torch.get_num_threads()}",
    ]
    if torch.cuda.is_available():
        lines.append(f"- GPU: {torch.cuda.get_device_name(0)}")
    return "\n".join(lines)


# ---------------------------------------------------------------- helpers for the model benchmarks (appended)


def interleaved_seconds(
    candidates: dict[str, Callable[[], object]], rounds: int, warmup: int = 2
) -> dict[str, list[float]]:
    """Wall times of each candidate over `rounds` interleaved rounds (A B C, A B C, ...) after `warmup` untimed
    rounds, so a change in machine load during the run hits every candidate alike."""
    for _ in range(warmup):
        for fn in candidates.values():
            fn()
    times: dict[str, list[float]] = {key: [] for key in candidates}
    for _ in range(rounds):
        for key, fn in candidates.items():
            start = time.perf_counter()
            fn()
            times[key].append(time.perf_counter() - start)
    return times


MODEL_CONDITIONS = (
    "fp32, CPU. Our models run channels_last with channels_last inputs; torchvision's are measured in "
    "both memory formats and the faster is the reference."
)


def cpu_section(
    title: str, command: str, quick: bool, parts: Callable[[], list[str]], conditions: str = MODEL_CONDITIONS
) -> Section:
    """A CPU side-by-side section: the shared conditions first, then `parts()` (measured now), then the machine
    load before and after, since this machine is shared and the load explains noisy rows."""
    load_before = load_average()
    started = time.perf_counter()
    lines = [
        f"Threads: {torch.get_num_threads()}, {conditions} Candidates run interleaved (A B A B ...), so load changes "
        "hit all of them alike.",
        "",
        *parts(),
        f"Machine load: {load_before} at the start, {load_average()} at the end "
        f"({time.perf_counter() - started:.0f} s run{', --quick: few repeats, noisy' if quick else ''}).",
    ]
    return Section(title, "\n".join(lines), command)


def load_average() -> str:
    """The 1-, 5- and 15-minute load averages (what `uptime` prints) against the logical CPU count."""
    try:
        one, five, fifteen = os.getloadavg()
    except OSError:
        return "load average unavailable"
    return f"load average {one:.2f}, {five:.2f}, {fifteen:.2f} (1/5/15 min) on {os.cpu_count()} logical CPUs"


def markdown_table(header: list[str], rows: list[list[str]], align: str | None = None) -> str:
    """A Markdown table; `align` is one character per column ('l' or 'r'), left by default."""
    align = align or "l" * len(header)
    rule = ["---:" if a == "r" else "---" for a in align]
    return "\n".join("| " + " | ".join(cells) + " |" for cells in [header, rule, *rows])


OP_GROUPS: dict[str, tuple[str, ...]] = {
    "convolution": ("convolution", "conv2d", "conv_depthwise"),
    "batch norm": ("batch_norm",),
    "activations": ("hardtanh", "threshold", "relu", "hardswish", "hardsigmoid", "clamp", "sigmoid"),
}


def op_time_breakdown(fn: Callable[[], object], runs: int = 1) -> dict[str, float]:
    """Self CPU milliseconds per call of `fn`, summed over aten ops into OP_GROUPS (forward and backward together)
    plus "other" and "total", from torch.profiler: where a step's time goes."""
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU]) as prof:
        for _ in range(runs):
            fn()
    groups = {name: 0.0 for name in OP_GROUPS} | {"other": 0.0}
    for event in prof.key_averages():
        ms = event.self_cpu_time_total / 1000.0 / runs
        name = event.key.lower()
        group = next((g for g, keys in OP_GROUPS.items() if any(k in name for k in keys)), "other")
        groups[group] += ms
    groups["total"] = sum(groups.values())
    return groups


def layout(tensor: torch.Tensor) -> str:
    """How a 4-D tensor lies in memory: "channels_last", "NCHW", "either" (both hold: C or H×W is 1), or its strides."""
    if tensor.dim() != 4:
        return "—"
    last, nchw = tensor.is_contiguous(memory_format=torch.channels_last), tensor.is_contiguous()
    return "either" if last and nchw else "channels_last" if last else "NCHW" if nchw else f"strides {tensor.stride()}"


def op_calls(fn: Callable[[], object], groups: Sequence[str], runs: int = 3) -> dict:
    """Wall milliseconds of every aten op of the OP_GROUPS `groups` in a call of `fn` (forward and backward: the
    autograd engine runs CPU backward ops on the calling thread, inside the mode): "calls" maps
    "op|input shape|input layout" → [calls, ms], the median over `runs` calls (one large buffer's first touch can
    cost an op 3× in one step and nothing in the next); "subnormal" and "values" count the subnormal floats among
    those ops' first inputs (which slow elementwise kernels unless flushed to zero). A TorchDispatchMode sees each
    op as it runs, so the layout is the input's own."""
    from torch.utils._python_dispatch import TorchDispatchMode

    keys = tuple(k for g in groups for k in OP_GROUPS[g])
    tiny = torch.finfo(torch.float32).tiny
    per_run: list[dict[str, list]] = []
    subnormal = [0, 0]

    class Timer(TorchDispatchMode):
        def __torch_dispatch__(self, func, types, args=(), kwargs=None):  # noqa: ANN001
            name = func.overloadpacket.__name__
            if not any(k in name for k in keys):
                return func(*args, **(kwargs or {}))
            start = time.perf_counter()
            out = func(*args, **(kwargs or {}))
            ms = 1000.0 * (time.perf_counter() - start)
            first = next((a for a in args if isinstance(a, torch.Tensor)), None)
            shape = "×".join(map(str, first.shape)) if first is not None else "?"
            entry = per_run[-1].setdefault(f"{name}|{shape}|{layout(first) if first is not None else '—'}", [0, 0.0])
            entry[0], entry[1] = entry[0] + 1, entry[1] + ms
            if first is not None and first.is_floating_point():
                subnormal[0] += int(((first != 0) & (first.abs() < tiny)).sum())
                subnormal[1] += first.numel()
            return out

    for _ in range(runs):
        per_run.append({})
        with Timer():
            fn()
    calls = {
        key: [per_run[0].get(key, [0])[0], statistics.median(run.get(key, [0, 0.0])[1] for run in per_run)]
        for key in per_run[0]
    }
    return {"calls": calls, "subnormal": subnormal[0], "values": subnormal[1]}


def op_comparison(ours: dict[str, list], reference: dict[str, list], top: int = 12) -> tuple[str, str]:
    """A Markdown table of `op_calls` results side by side, matched by op and input shape (layouts shown per side),
    the `top` rows where ours costs most more than the reference first; and a line of per-op totals."""

    def by_op_shape(calls: dict[str, list]) -> dict[tuple[str, str], list]:
        merged: dict[tuple[str, str], list] = {}
        for key, (n, ms) in calls.items():
            op, shape, where = key.split("|")
            entry = merged.setdefault((op, shape), [0, 0.0, set()])
            entry[0], entry[1] = entry[0] + n, entry[1] + ms
            entry[2].add(where)
        return merged

    a, b = by_op_shape(ours), by_op_shape(reference)
    keys = sorted(set(a) | set(b), key=lambda k: b.get(k, [0, 0.0])[1] - a.get(k, [0, 0.0])[1])
    rows = []
    for op, shape in keys[:top]:
        mine, theirs = a.get((op, shape), [0, 0.0, set()]), b.get((op, shape), [0, 0.0, set()])
        ratio = f"{mine[1] / theirs[1]:.2f}×" if theirs[1] > 0 and mine[1] > 0 else "—"
        rows.append(
            [
                f"`{op}`",
                shape,
                ", ".join(sorted(mine[2])) or "—",
                ", ".join(sorted(theirs[2])) or "—",
                f"{mine[0]} / {theirs[0]}",
                f"{mine[1]:.1f}",
                f"{theirs[1]:.1f}",
                ratio,
            ]
        )
    totals = {}
    for side, merged in (("ours", a), ("reference", b)):
        for (op, _), (_n, ms, _) in merged.items():
            totals.setdefault(op, {}).setdefault(side, 0.0)
            totals[op][side] += ms
    summary = "; ".join(
        f"`{op}` {t.get('ours', 0):.0f} vs {t.get('reference', 0):.0f} ms"
        for op, t in sorted(totals.items(), key=lambda kv: -kv[1].get("ours", 0))
    )
    table = markdown_table(
        [
            "op",
            "input shape",
            "layout, ours",
            "layout, reference",
            "calls (ours / ref)",
            "ours ms",
            "reference ms",
            "ratio",
        ],
        rows,
        "llllrrrr",
    )
    return table, summary


def minor_page_faults(fn: Callable[[], object]) -> int:
    """Minor page faults of this process during one `fn()`: fresh memory pages the kernel had to map and zero."""
    import resource

    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    fn()
    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before


def call_in_subprocess(
    module: str, function: str, tuned: bool, env: dict[str, str] | None = None, **kwargs: object
) -> object:
    """`bench.<module>.<function>(**kwargs)` in a fresh Python process with this process's torch thread count and
    `env` added to the environment, after common.allocator.tune_allocator() when `tuned` (as a training run does);
    its result must be JSON-serialisable. A fresh process, because the allocator's state depends on everything a
    process ran."""
    import json
    import subprocess
    import sys
    from pathlib import Path

    marker = "BENCH-RESULT:"
    code = (
        f"import json, torch; torch.set_num_threads({torch.get_num_threads()}); "
        + ("from common.allocator import tune_allocator; tune_allocator(); " if tuned else "")
        + f"from bench.{module} import {function}; "
        f"print({marker!r} + json.dumps({function}(**json.loads({json.dumps(json.dumps(kwargs))}))))"
    )
    result = subprocess.run(
        [sys.executable, "-c", code],
        cwd=Path(__file__).resolve().parent.parent,
        env={**os.environ, **(env or {})},
        capture_output=True,
        text=True,
    )
    lines = [line for line in result.stdout.splitlines() if line.startswith(marker)]
    if result.returncode != 0 or not lines:
        tail = (result.stderr.strip().splitlines() or ["no output"])[-1]
        raise RuntimeError(f"bench.{module}.{function} in a subprocess failed (exit {result.returncode}): {tail}")
    return json.loads(lines[-1][len(marker) :])


def training_comparison(
    default: dict,
    tuned: dict | str,
    labels: dict[str, str],
    ours: Sequence[str],
    references: Sequence[str],
    target: float,
    profiled: dict[str, str],
) -> list[str]:
    """Markdown for a training-step comparison measured twice: with glibc's default malloc (`default`) and in
    processes that called common.allocator.tune_allocator() (`tuned`, or why it could not run). Each result holds
    "rate" (images/s per candidate key), "breakdown" (op_time_breakdown per key of `profiled`) and "faults" (minor
    page faults of one step per key of `profiled`). The reference is the fastest of `references`; each of `ours`
    must reach `target`× it; other keys are context."""
    from common.allocator import DESCRIPTION

    def reference(result: dict) -> float:
        return max(result["rate"][key] for key in references)

    def cells(result: dict | str, key: str) -> list[str]:
        if isinstance(result, str):
            return ["—", "—"]
        rate = result["rate"][key]
        return [f"{rate:.2f}" if rate < 10 else f"{rate:.1f}", f"{rate / reference(result):.2f}×"]

    def met(result: dict | str, key: str) -> str:
        if isinstance(result, str):
            return "—"
        return "yes" if result["rate"][key] >= target * reference(result) else "no"

    rows = []
    for key, label in labels.items():
        fastest_ref = key in references and default["rate"][key] == reference(default)
        rows.append(
            [
                label + (" (reference)" if fastest_ref else ""),
                *cells(default, key),
                *cells(tuned, key),
                f"≥ {target:.1f}×" if key in ours else "—",
                f"{met(default, key)}; {met(tuned, key)}" if key in ours else "—",
            ]
        )
    split = []
    for group in [*OP_GROUPS, "other", "total"]:
        row = [group]
        for result in (default, tuned):
            for key in profiled:
                b = None if isinstance(result, str) else result["breakdown"][key]
                row.append("—" if b is None else f"{b[group]:.0f} ({b[group] / b['total']:.0%})")
        split.append(row)
    split.append(
        [
            "minor page faults in the step",
            *["—" if isinstance(r, str) else str(r["faults"][k]) for r in (default, tuned) for k in profiled],
        ]
    )
    names = list(profiled.values())
    return [
        markdown_table(
            [
                "what",
                "images/s, default malloc",
                "ratio to reference",
                "images/s, tuned malloc",
                "ratio",
                "target",
                "met (default; tuned)",
            ],
            rows,
            "lrrrrll",
        ),
        "",
        'Every candidate trains in a fresh process that only trains. "Default malloc": glibc\'s defaults, which '
        'unmap freed large blocks, so every step page-faults its activations in again. "Tuned malloc": the '
        "process first calls `common.allocator.tune_allocator()` (" + DESCRIPTION + "), what a training run gets "
        "from train/ once the engine calls it at start-up"
        + (f" (not measured: {tuned})." if isinstance(tuned, str) else ".")
        + f" Repeats: {default['repeats']}"
        + ("." if isinstance(tuned, str) else f"; {tuned['repeats']}."),
        "",
        "Where one step's time goes (torch.profiler, self CPU ms of one step, forward and backward together; "
        "profiling adds some overhead):",
        "",
        markdown_table(["op group", *names, *(f"{n}, tuned malloc" for n in names)], split, "l" + "r" * 2 * len(names)),
    ]


# Training-step schedule: candidates whose steps are timed together (interleaved) and the slow ones timed on their own.
SLOW_CANDIDATES = ("tv_nchw", "ref_nchw")


def _first_call_seconds(fn: Callable[[], object]) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def time_training_steps(
    factories: dict[str, Callable[[], Callable[[], None]]], quick: bool, only: list[str] | None = None
) -> dict:
    """Build the step functions of `only` (default: all of `factories`), time them and profile one step of each
    fast one. Several fast candidates are interleaved step by step; a candidate alone (one per process) gets more
    warm-up steps so its allocator settles; SLOW_CANDIDATES get fewer steps, on their own. JSON-able result:
    "seconds" (per key), "first" (seconds of each key's first step: one-time costs such as torch.compile),
    "breakdown", "faults" and "ops" (op_calls of batch norm and activations; per fast key), "schedule" (words)."""
    keys = list(only or factories)
    fast = [k for k in keys if k not in SLOW_CANDIDATES]
    slow = [k for k in keys if k in SLOW_CANDIDATES]
    if len(fast) > 1:
        warmup, rounds = (1, 2) if quick else (2, 5)
    else:
        warmup, rounds = (1, 1) if quick else (3, 3)
    slow_warmup, slow_rounds = (1, 1) if quick else (1, 2)
    seconds: dict[str, list[float]] = {}
    first: dict[str, float] = {}
    breakdown: dict[str, dict[str, float]] = {}
    faults: dict[str, int] = {}
    ops: dict[str, dict[str, list]] = {}
    if fast:
        steps = {k: factories[k]() for k in fast}
        first |= {k: _first_call_seconds(step) for k, step in steps.items()}  # the first warm-up round
        seconds |= interleaved_seconds(steps, rounds, warmup - 1)
        for k, step in steps.items():
            breakdown[k] = op_time_breakdown(step)
            faults[k] = minor_page_faults(step)
            ops[k] = op_calls(step, ("batch norm", "activations"))
        del steps
    for k in slow:
        step = factories[k]()
        first[k] = _first_call_seconds(step)
        seconds |= interleaved_seconds({k: step}, slow_rounds, slow_warmup - 1)

    def steps_text(n: int) -> str:
        return f"{n} step" + ("s" if n != 1 else "")

    schedule = f"{steps_text(rounds)}{' interleaved' if len(fast) > 1 else ''} after {warmup} warm-up" + (
        f"; {', '.join(slow)}: {steps_text(slow_rounds)} after {slow_warmup} warm-up" if slow else ""
    )
    return {
        "seconds": seconds,
        "first": first,
        "breakdown": breakdown,
        "faults": faults,
        "ops": ops,
        "schedule": schedule,
    }


def training_step_runs(module: str, keys: list[str], quick: bool, batch: int) -> tuple[dict, dict | str]:
    """Time the training candidates of `bench.<module>.training_results(quick, only)` twice, in fresh processes
    that only train (as a training run would):

    - glibc's default malloc: one process per candidate and pass, the passes alternating (A B, A B), because one
      model's allocations reshape the heap the other then page-faults through; medians pool the passes;
    - after common.allocator.tune_allocator(): one process, candidates interleaved step by step.

    All processes share a fresh inductor cache, so in "first" (seconds of each candidate's first step) a compiled
    candidate compiles from scratch in the default result (its first pass) and from that warm cache in the tuned
    one. Each result (or, for the second, why it could not run) holds "rate" (images/s), "seconds", "first",
    "breakdown", "faults", "ops" and "repeats"; the default one also "per_process" (images/s of each process, the
    run-to-run spread)."""
    import tempfile

    passes = 1 if quick else 2
    fast = [k for k in keys if k not in SLOW_CANDIDATES]
    runs: list[dict] = []
    with tempfile.TemporaryDirectory() as cache:
        env = {"TORCHINDUCTOR_CACHE_DIR": cache}
        for _ in range(passes):
            for k in fast:
                runs.append(call_in_subprocess(module, "training_results", False, env, quick=quick, only=[k]))
        for k in keys:
            if k in SLOW_CANDIDATES:
                runs.append(call_in_subprocess(module, "training_results", False, env, quick=quick, only=[k]))
        try:
            tuned: dict | str = call_in_subprocess(module, "training_results", True, env, quick=quick, only=keys)
            tuned["repeats"] = f"tuned malloc: one process, {tuned['schedule']}"
        except RuntimeError as error:
            tuned = str(error)
    default: dict = {"seconds": {}, "first": {}, "breakdown": {}, "faults": {}, "ops": {}, "per_process": {}}
    for run in runs:  # pool the passes' steps; the first step of the first pass, profile and faults of the last
        for k, times in run["seconds"].items():
            default["seconds"].setdefault(k, []).extend(times)
            default["per_process"].setdefault(k, []).append(batch / statistics.median(times))
        default["first"] = run["first"] | default["first"]
        for part in ("breakdown", "faults", "ops"):
            default[part] |= run[part]
    default["repeats"] = (
        f"default malloc: each candidate alone in its own process, {passes} alternating "
        f"process{'es' if passes > 1 else ''} per candidate, each {runs[0]['schedule']}; "
        "median of the pooled steps"
    )
    for result in (default, tuned):
        if isinstance(result, dict):
            result["rate"] = {k: batch / statistics.median(t) for k, t in result["seconds"].items()}
    return default, tuned


def tensorflow_runner(graph_path: Path, image: np.ndarray) -> Callable[[], object] | str:
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
    fetches = [
        graph.get_tensor_by_name(f"{name}:0")
        for name in ("detection_boxes", "detection_scores", "detection_classes", "num_detections")
    ]
    feed = {graph.get_tensor_by_name("image_tensor:0"): image[None]}
    return lambda: session.run(fetches, feed)
