"""Parameters and multiply-adds of the suite's models, printed beside the published figures.

Multiply-adds come from torch.utils.flop_counter (FLOPs / 2: one multiply-add is two FLOPs), counting
convolutions and matrix products like the paper does.

    python -m tools.complexity                          # paper rows (classifier, SSDLite, DeepLab) + the grid
    python -m tools.complexity --width 0.5 --size 160   # one MobileNetV2
    python -m tools.complexity --markdown table.md      # also write the table as Markdown
"""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from backbone.mobilenetv2 import OUTPUT_STRIDES, MobileNetV2
from common.cli import new_parser, run_cli
from common.files import write_atomic
from deeplab_mobile.model import build_deeplab
from ssdlite.model import build_ssdlite
from ssdlite.presets import SSDLITE320_COCO, SSDLITE_TF_COCO300


@dataclass(frozen=True)
class Complexity:
    params: int
    madds: int


@dataclass(frozen=True)
class Reference:
    """A published model size: what to build, at which input, and the figures to compare with."""

    name: str
    build: Callable[[], nn.Module]
    input_size: tuple[int, int]
    params_m: float | None
    madds_m: float | None
    source: str


def measure(model: nn.Module, input_size: tuple[int, int]) -> Complexity:
    """Parameter count and multiply-adds of one forward pass on a 1×3×H×W input."""
    model.eval()
    counter = FlopCounterMode(display=False)
    with torch.no_grad(), counter:
        model(torch.zeros(1, 3, *input_size))
    return Complexity(sum(p.numel() for p in model.parameters()), counter.get_total_flops() // 2)


def _mnv2(width: float) -> Callable[[], nn.Module]:
    return lambda: MobileNetV2(width_mult=width)


PAPER = "MobileNetV2 paper, Table 4"
TF_SLIM = "TF-slim MobileNetV2 README (1001 classes)"

PAPER_ROWS = [
    Reference("MobileNetV2 1.0", _mnv2(1.0), (224, 224), 3.4, 300, PAPER),
    Reference("MobileNetV2 1.4", _mnv2(1.4), (224, 224), 6.9, 585, PAPER),
]

# (width, resolution) → (MACs in millions, params in millions) as published with the TF-slim checkpoints.
TF_SLIM_GRID = {
    (1.4, 224): (582, 6.06),
    (1.3, 224): (509, 5.34),
    (1.0, 224): (300, 3.47),
    (1.0, 192): (221, 3.47),
    (1.0, 160): (154, 3.47),
    (1.0, 128): (99, 3.47),
    (1.0, 96): (56, 3.47),
    (0.75, 224): (209, 2.61),
    (0.75, 192): (153, 2.61),
    (0.75, 160): (107, 2.61),
    (0.75, 128): (69, 2.61),
    (0.75, 96): (39, 2.61),
    (0.5, 224): (97, 1.95),
    (0.5, 192): (71, 1.95),
    (0.5, 160): (50, 1.95),
    (0.5, 128): (32, 1.95),
    (0.5, 96): (18, 1.95),
    (0.35, 224): (59, 1.66),
    (0.35, 192): (43, 1.66),
    (0.35, 160): (30, 1.66),
    (0.35, 128): (20, 1.66),
    (0.35, 96): (11, 1.66),
}

DETECTION_ROWS = [
    Reference(
        "SSDLite 320, COCO (91 classes)",
        lambda: build_ssdlite(SSDLITE320_COCO),
        (320, 320),
        4.3,
        800,
        "MobileNetV2 paper, Table 6",
    ),
    Reference(
        "SSDLite TF preset, COCO (91 classes)",
        lambda: build_ssdlite(SSDLITE_TF_COCO300),
        (300, 300),
        None,
        None,
        "TF model zoo ssdlite_mobilenet_v2_coco",
    ),
]

# Paper Table 7 rows at 513×513, 21 classes; only the headline row's figures are quoted here.
SEGMENTATION_ROWS = [
    Reference(
        "Mobile DeepLabv3 MNetV2* OS16",
        lambda: build_deeplab("mnv2_os16"),
        (513, 513),
        2.11,
        2750,
        "MobileNetV2 paper, Table 7",
    ),
    Reference("Mobile DeepLabv3 MNetV2* OS8", lambda: build_deeplab("mnv2_os8"), (513, 513), None, None, "–"),
    Reference(
        "Mobile DeepLabv3 MNetV2* OS16 + ASPP", lambda: build_deeplab("mnv2_aspp_os16"), (513, 513), None, None, "–"
    ),
    Reference(
        "Mobile DeepLabv3 MNetV2* OS8 + ASPP", lambda: build_deeplab("mnv2_aspp_os8"), (513, 513), None, None, "–"
    ),
]

GRID_ROWS = [
    Reference(f"MobileNetV2 {w}", _mnv2(w), (r, r), params, madds, TF_SLIM)
    for (w, r), (madds, params) in TF_SLIM_GRID.items()
]


def _ratio(ours: float, ref: float | None) -> str:
    return f"{ours / ref:.3f}" if ref else "–"


def table(rows: list[Reference]) -> tuple[str, list[dict]]:
    """A Markdown table and JSON-ready records for `rows`, measuring each model once."""
    lines = [
        "| model | input | params | params (published) | ratio | MAdds | MAdds (published) | ratio | source |",
        "|---|---|---:|---:|---:|---:|---:|---:|---|",
    ]
    records = []
    for ref in rows:
        c = measure(ref.build(), ref.input_size)
        h, w = ref.input_size
        params_pub = f"{ref.params_m}M" if ref.params_m else "–"
        madds_pub = f"{ref.madds_m:g}M" if ref.madds_m else "–"
        lines.append(
            f"| {ref.name} | {h}×{w} | {c.params:,} | {params_pub} | {_ratio(c.params, ref.params_m and ref.params_m * 1e6)}"
            f" | {c.madds / 1e6:.1f}M | {madds_pub} | {_ratio(c.madds, ref.madds_m and ref.madds_m * 1e6)} | {ref.source} |"
        )
        records.append(
            {
                "name": ref.name,
                "input_size": [h, w],
                **asdict(c),
                "params_m_published": ref.params_m,
                "madds_m_published": ref.madds_m,
                "source": ref.source,
            }
        )
    return "\n".join(lines), records


def main(argv: list[str] | None = None) -> int:
    """The table; errors are one `error:` line and exit 2, Ctrl-C one line and exit 130 (common.cli.run_cli)."""
    return run_cli(build_parser(), argv, check_arguments, print_tables)


def check_arguments(parser: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    if args.size < 32:
        parser.error(f"--size {args.size} is too small: MobileNetV2 needs at least 32×32 input")


def build_parser() -> argparse.ArgumentParser:
    parser = new_parser("python -m tools.complexity", __doc__)
    parser.add_argument("--width", type=float, help="measure one MobileNetV2 of this width multiplier")
    parser.add_argument("--size", type=int, default=224, help="input height and width (default: 224)")
    parser.add_argument("--output-stride", type=int, default=32, choices=OUTPUT_STRIDES, help="with --width")
    parser.add_argument("--no-classifier", action="store_true", help="with --width: feature extractor only")
    parser.add_argument("--markdown", type=Path, help="also write the table to this Markdown file")
    parser.add_argument("--json", type=Path, help="also write the measurements to this JSON file")
    return parser


def print_tables(args: argparse.Namespace) -> int:
    if args.width is not None:
        kwargs = dict(width_mult=args.width, output_stride=args.output_stride)
        if args.no_classifier:
            kwargs["num_classes"] = None
        name = f"MobileNetV2 {args.width} OS{args.output_stride}{' features' if args.no_classifier else ''}"
        sections = [
            ("Your model", [Reference(name, lambda: MobileNetV2(**kwargs), (args.size, args.size), None, None, "–")])
        ]
    else:
        sections = [
            ("Paper figures: classification", PAPER_ROWS),
            ("Paper figures: SSDLite detection", DETECTION_ROWS),
            ("Paper figures: Mobile DeepLabv3 segmentation", SEGMENTATION_ROWS),
            ("Width × resolution grid", GRID_ROWS),
        ]

    out, records = [], []
    for title, rows in sections:
        text, recs = table(rows)
        out.append(f"### {title}\n\n{text}\n")
        records += recs
    report = "\n".join(out)
    print(report)
    for path, content in ((args.markdown, report), (args.json, json.dumps(records, indent=2))):
        if path:
            write_atomic(path, content)
    return 0


if __name__ == "__main__":
    sys.exit(main())
