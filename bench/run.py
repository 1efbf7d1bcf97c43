"""Run every side-by-side benchmark in bench/ and rewrite BENCHMARKS.md.

Each `bench/bench_*.py` module exposes `run(quick: bool) -> Section`. Usage:

    python -m bench.run               # all benchmarks
    python -m bench.run --only data   # the ones whose module name contains "data"; other sections are kept
    python -m bench.run --quick       # fewer repeats, for a smoke check
"""

from __future__ import annotations

import argparse
import datetime
import importlib
import pkgutil
from pathlib import Path

import torch

import bench
from bench.common import machine_summary
from common.files import write_atomic

OUTPUT = Path(__file__).resolve().parent.parent / "BENCHMARKS.md"


def benchmark_modules(only: str | None) -> list[str]:
    names = sorted(m.name for m in pkgutil.iter_modules(bench.__path__) if m.name.startswith("bench_"))
    return [n for n in names if only is None or only in n]


def existing_sections(path: Path) -> dict[str, str]:
    """Title → body of the `## ` sections already in BENCHMARKS.md, so `--only` updates just its own."""
    if not path.is_file():
        return {}
    chunks = path.read_text().split("\n## ")[1:]
    return {chunk.split("\n", 1)[0]: chunk.split("\n", 1)[1] if "\n" in chunk else "" for chunk in chunks}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--only", help="run only benchmarks whose module name contains this text")
    parser.add_argument("--quick", action="store_true", help="fewer repeats (smoke check; numbers are noisier)")
    parser.add_argument("--threads", type=int, default=2, help="torch CPU threads (default: 2, as in DESIGN.md)")
    parser.add_argument("--output", type=Path, default=OUTPUT, help="Markdown file to rewrite (default: BENCHMARKS.md)")
    args = parser.parse_args(argv)

    torch.set_num_threads(args.threads)
    names = benchmark_modules(args.only)
    if not names:
        parser.error(f"--only {args.only!r} matches no bench/bench_*.py module")
    sections = []
    for name in names:
        print(f"== {name}", flush=True)
        section = importlib.import_module(f"bench.{name}").run(quick=args.quick)
        print(section.body, flush=True)
        sections.append(section)

    existing = existing_sections(args.output)
    kept = dict(existing) if args.only else {}
    for s in sections:
        # A skipped benchmark (no GPU here) keeps the rows an earlier run measured instead of erasing them.
        keep = s.skipped and s.title in existing
        kept[s.title] = existing[s.title] if keep else f"Command: `{s.command}`\n\n{s.body}"
    parts = [
        "# Benchmarks",
        "",
        f"Written by `python -m bench.run` on {datetime.date.today().isoformat()}. Medians of repeated runs; "
        "every ratio compares against a reference measured in the same run on the same machine.",
        "",
        machine_summary(),
        "",
    ]
    for title, body in kept.items():
        parts += [f"## {title}", "", body.strip(), ""]
    write_atomic(args.output, "\n".join(parts))
    print(f"wrote {args.output}")


if __name__ == "__main__":
    main()
