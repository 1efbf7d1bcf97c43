"""bench/bench_gpu.py on the CPU at tiny sizes (the measurement code runs anywhere, so it is tested without a GPU),
and the no-GPU path: a skipped section that keeps the GPU rows BENCHMARKS.md already has."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch

from bench import bench_gpu
from bench import run as bench_run

pytestmark = pytest.mark.slow  # processes and training runs: not in `make check`'s fast lane

SIZES = {"ssdlite": 128, "deeplab": 128}
TRAIN_BATCHES = {"ssdlite": (2, 3), "deeplab": (2,)}  # two training batches for detectors, as on the GPU


def test_measurements_and_tables_on_cpu() -> None:
    """Every candidate trains and infers, gives positive finite numbers, and each appears in its family's table."""
    results = bench_gpu.measure(
        torch.device("cpu"), batch=2, train_batches=TRAIN_BATCHES, image_sizes=SIZES, repeats=1, warmup=0
    )
    assert set(results) == set(bench_gpu.LABELS)
    for key, rows in results.items():
        assert rows, key
        assert all(math.isfinite(v) and v > 0 for v in rows.values()), (key, rows)
    detector_rows = [
        "training, AMP + channels_last, batch 2 (images/s)",
        "training, AMP + channels_last, batch 3 (images/s)",
        *(f"latency, batch 1, {p}{pp} (ms)" for p in ("fp32", "fp16 autocast") for pp in ("", ", + post-processing")),
        *(
            f"throughput, batch 2, {p}{pp} (images/s)"
            for p in ("fp32", "fp16 autocast")
            for pp in ("", ", + post-processing")
        ),
    ]
    assert list(results["ssdlite"]) == list(results["tv_ssdlite_mnv2"]) == list(results["tv_ssdlite"])
    assert sorted(results["ssdlite"]) == sorted(detector_rows)
    assert sorted(results["deeplab"]) == sorted(
        r for r in detector_rows if "post-processing" not in r and "batch 3" not in r
    )
    assert list(results["tv_lraspp"]) == list(results["tv_deeplabv3"]) == list(results["deeplab"])

    text = bench_gpu.body(results, torch.device("cpu"), SIZES, repeats=1, warmup=0)
    tables = [block.splitlines() for block in text.split("\n\n") if block.startswith("| ")]
    assert len(tables) == len(bench_gpu.REFERENCES)
    for lines, (ours, refs) in zip(tables, bench_gpu.REFERENCES.items(), strict=True):
        assert (
            lines[0]
            == "| "
            + " | ".join(
                [
                    "measurement",
                    bench_gpu.LABELS[ours],
                    *(c for r in refs for c in (bench_gpu.LABELS[r], "speed ratio")),
                ]
            )
            + " |"
        )
        assert [line.split(" | ")[0].removeprefix("| ") for line in lines[2:]] == list(results[ours])
        assert all(line.count("×") == len(refs) for line in lines[2:])  # one speed ratio per reference


def test_no_cuda_skips_and_run_keeps_the_earlier_gpu_rows(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    section = bench_gpu.run(quick=True)
    assert section.skipped and "Skipped" in section.body and section.title == bench_gpu.TITLE

    output = tmp_path / "BENCHMARKS.md"
    earlier = "Command: `python -m bench.run --only gpu`\n\nMeasured on an H100: | training | 1234 |"
    output.write_text(f"# Benchmarks\n\nheader\n\n## Data pipeline\n\ndata rows\n\n## {bench_gpu.TITLE}\n\n{earlier}\n")
    threads = torch.get_num_threads()
    try:
        bench_run.main(["--only", "gpu", "--output", str(output), "--threads", str(threads)])
        sections = bench_run.existing_sections(output)
        assert sections[bench_gpu.TITLE].strip() == earlier and sections["Data pipeline"].strip() == "data rows"

        # A full run (no --only) rewrites every section, but a skipped one still keeps its earlier rows.
        monkeypatch.setattr(bench_run, "benchmark_modules", lambda only: ["bench_gpu"])
        bench_run.main(["--output", str(output), "--threads", str(threads)])
        assert bench_run.existing_sections(output) == {bench_gpu.TITLE: sections[bench_gpu.TITLE]}

        # With no earlier GPU section, the skip notice is written.
        output.write_text("# Benchmarks\n")
        bench_run.main(["--only", "gpu", "--output", str(output), "--threads", str(threads)])
        assert "Skipped: no CUDA device" in bench_run.existing_sections(output)[bench_gpu.TITLE]
    finally:
        torch.set_num_threads(threads)
