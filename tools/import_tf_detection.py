"""Convert a TF Object Detection API SSDLite-MobileNetV2 frozen graph into an SSDLite checkpoint, without TensorFlow.
The conversion and its checks are ssdlite/tf_import.py; named weights convert on first use without this command.

    python -m tools.import_tf_detection ssdlite_mobilenet_v2_coco_2018_05_09.tar.gz --out ssdlite_tf_coco.pt
    python -m tools.import_tf_detection frozen_inference_graph.pb --out pedestrian.pt --labels person
"""

from __future__ import annotations

import argparse
from pathlib import Path

from common.cli import check_output_file, new_parser, run_cli
from ssdlite.checkpoint import save_ssdlite
from ssdlite.presets import PRESETS, SSDLITE_TF_COCO300, get_preset
from ssdlite.tf_import import import_graph


def _import(args: argparse.Namespace) -> int:
    model = import_graph(args.graph, get_preset(args.preset), args.labels)
    save_ssdlite(model, args.out, source=str(args.graph))
    params = sum(p.numel() for p in model.parameters())
    print(f"{args.graph} → {args.out}: preset {args.preset}, {model.num_classes} classes, {params:,} parameters")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = new_parser("python -m tools.import_tf_detection", __doc__)
    parser.add_argument("graph", type=Path, help="frozen_inference_graph.pb, or the model-zoo .tar.gz holding it")
    parser.add_argument("--out", type=Path, required=True, help="checkpoint to write (.pt)")
    parser.add_argument(
        "--preset",
        default=SSDLITE_TF_COCO300.name,
        choices=sorted(PRESETS),
        help="architecture and conventions of the graph (default: %(default)s)",
    )
    parser.add_argument(
        "--labels",
        type=lambda s: [x.strip() for x in s.split(",") if x.strip()],
        help="comma-separated class names without the background, e.g. 'person' "
        "(default: COCO's names for 91-class graphs)",
    )
    return run_cli(parser, argv, lambda parser, args: check_output_file(parser, "--out", args.out), _import)


if __name__ == "__main__":
    raise SystemExit(main())
