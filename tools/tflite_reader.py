"""Print a TensorFlow Lite file's operators, one line each with options and input shapes (`c` marks constants):
the first look at a file to import. The reader itself is backbone/tf/tflite.py.

    python -m tools.tflite_reader FILE.tflite
"""

from __future__ import annotations

import argparse
from pathlib import Path

from backbone.tf.tflite import read_tflite
from common.cli import new_parser, run_cli


def _print_operators(args: argparse.Namespace) -> int:
    for op in read_tflite(args.file).operators:
        shapes = " ".join("-" if t is None else f"{list(t.shape)}{'c' if t.is_constant else ''}" for t in op.inputs)
        options = " ".join(f"{k}={v}" for k, v in op.options.items())
        print(f"{op.index:4d} {op.name:20s} in {shapes}  {options}")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = new_parser("python -m tools.tflite_reader", __doc__)
    parser.add_argument("file", type=Path, help="a .tflite file")
    return run_cli(parser, argv, lambda parser, args: None, _print_operators)


if __name__ == "__main__":
    raise SystemExit(main())
