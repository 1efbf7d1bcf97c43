"""Import an official TensorFlow DeepLab MobileNetV2 model as a suite checkpoint that `deeplab_mobile.load_deeplab`
reads: a TFLite export (float or quantised) or a frozen graph (`frozen_inference_graph.pb`, or the model-zoo
`.tar.gz` holding it). The conversion and its checks are deeplab_mobile/tf_import.py; named weights convert on
first use without this command.

    python -m tools.import_tf_segmentation deeplabv3_mnv2_pascal_quant.tflite --out deeplab_coral.pt
    python -m tools.import_tf_segmentation deeplabv3_mnv2_pascal_train_aug_2018_01_29.tar.gz --out deeplab_tf.pt
"""

from __future__ import annotations

import argparse
from pathlib import Path

from common.cli import check_output_file, new_parser, run_cli
from deeplab_mobile.checkpoint import save_deeplab
from deeplab_mobile.tf_import import import_tf_deeplab, provenance


def _import(args: argparse.Namespace) -> int:
    model, settings = import_tf_deeplab(args.model, args.labels)
    save_deeplab(model, args.out, source=provenance(args.model, settings))
    p = settings.preset
    print(
        f"preset {p.name}: width {p.width_mult}, OS{p.output_stride}, {p.num_classes} classes, "
        f"{p.crop_size}×{p.crop_size} input ({p.input_mode}); wrote {args.out}"
    )
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = new_parser("python -m tools.import_tf_segmentation", __doc__)
    parser.add_argument(
        "model", type=Path, help=".tflite (float or quantised), frozen_inference_graph.pb or a model-zoo .tar.gz"
    )
    parser.add_argument("--out", type=Path, required=True, help="where to write the checkpoint (.pt)")
    parser.add_argument("--labels", type=Path, help="class names, one per line (default: PASCAL VOC for 21 classes)")
    return run_cli(parser, argv, lambda parser, args: check_output_file(parser, "--out", args.out), _import)


if __name__ == "__main__":
    raise SystemExit(main())
