"""Import a MobileNetV2 ImageNet classifier from a TFLite file (BatchNorm folded into the convs) as a suite model.
The conversion and its checks are backbone/tf/classifier.py.

    python -m tools.import_tflite mobilenet_v2_1.0_224_quant.tflite --out mnv2_tflite.pt
"""

from __future__ import annotations

import argparse
from pathlib import Path

from backbone.checkpoint import save_checkpoint
from backbone.mobilenet_weights import checkpoint_dict
from backbone.tf.classifier import PREPROCESSING, mobilenet_v2_from_tflite
from common.cli import check_output_file, new_parser, run_cli


def _import(args: argparse.Namespace) -> int:
    model = mobilenet_v2_from_tflite(args.tflite, drop_background=not args.keep_background)
    save_checkpoint(checkpoint_dict(model, source=str(args.tflite), preprocessing=PREPROCESSING), args.out)
    params = sum(p.numel() for p in model.parameters())
    config = model.config
    print(f"width {config['width_mult']}, {config['num_classes']} classes, {params:,} params; wrote {args.out}")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = new_parser("python -m tools.import_tflite", __doc__)
    parser.add_argument("tflite", type=Path, help="a MobileNetV2 classifier as .tflite (float or quantised)")
    parser.add_argument("--out", type=Path, required=True, help="where to write the checkpoint (.pt)")
    parser.add_argument(
        "--keep-background",
        action="store_true",
        help="keep output 0 ('background') of 1001-class TF models instead of torchvision's 1000-class order",
    )
    return run_cli(parser, argv, lambda parser, args: check_output_file(parser, "--out", args.out), _import)


if __name__ == "__main__":
    raise SystemExit(main())
