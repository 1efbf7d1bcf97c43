"""Classify photos with a MobileNetV2 and print the top-5 ImageNet classes per photo.

Weights are a suite checkpoint (.pt), a TFLite classifier (.tflite, imported on the fly) or torchvision's
IMAGENET1K_V1 / IMAGENET1K_V2. Each kind gets the input its weights were trained on: TF models a centre
square crop resized to 224 and scaled to [-1, 1]; torchvision weights their own resize, crop and ImageNet
mean/std.

    python -m demo.classify --weights mobilenet_v2_1.0_224_quant.tflite cat.bmp parrot.jpg --json top5.json
"""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable, Sequence

import torch
import torchvision.transforms.v2.functional as TF
from PIL import Image
from torchvision.models import MobileNet_V2_Weights
from torchvision.transforms import InterpolationMode

from backbone.checkpoint import load_checkpoint
from backbone.mobilenet_weights import TORCHVISION_WEIGHTS, load_pretrained, mobilenet_v2_from_checkpoint
from backbone.mobilenetv2 import MobileNetV2
from backbone.tf.classifier import PREPROCESSING as TF_PREPROCESSING
from backbone.tf.classifier import mobilenet_v2_from_tflite
from common.cli import check_flags, new_parser, run_cli
from common.errors import UserError, WeightsError
from common.files import write_atomic

Preprocess = Callable[[Image.Image], torch.Tensor]
IMAGENET_CATEGORIES: list[str] = MobileNet_V2_Weights.IMAGENET1K_V1.meta["categories"]


def tf_preprocess(image: Image.Image, size: int = 224) -> torch.Tensor:
    """TF-slim classifier input: centre square crop, bilinear resize to `size`, RGB scaled to [-1, 1].

    The resize is PIL's antialiased bilinear, as in the assets README measurements; without antialiasing the
    int8 TF2 model's top-1 on grace_hopper.bmp flips from 667 (mortarboard) to 652 (military uniform).
    """
    image = TF.center_crop(image.convert("RGB"), min(image.size))
    image = TF.resize(image, [size, size], interpolation=InterpolationMode.BILINEAR, antialias=True)
    return TF.pil_to_tensor(image).float() / 127.5 - 1.0


def torchvision_preprocess(weights: str = "IMAGENET1K_V1") -> Preprocess:
    """torchvision's own transforms for its weights (resize, centre crop 224, ImageNet mean/std)."""
    transforms = MobileNet_V2_Weights[weights].transforms()
    return lambda image: transforms(image.convert("RGB"))


def load_classifier(weights: str) -> tuple[MobileNetV2, Preprocess]:
    """The model for `weights` and the preprocessing its kind needs; WeightsError if it cannot be loaded."""
    if weights in TORCHVISION_WEIGHTS:
        model = MobileNetV2()
        load_pretrained(model, weights)
        return model.eval(), torchvision_preprocess(weights)
    if Path(weights).suffix == ".tflite":
        return mobilenet_v2_from_tflite(weights), tf_preprocess
    model = mobilenet_v2_from_checkpoint(weights)
    if model.classifier is None:
        raise WeightsError(f"{weights}: a MobileNetV2 without classifier cannot classify photos")
    # Imported TF weights say so in the checkpoint; anything else was trained on torchvision's input.
    tf_input = load_checkpoint(weights).get("preprocessing") == TF_PREPROCESSING
    return model.eval(), tf_preprocess if tf_input else torchvision_preprocess()


@dataclass(frozen=True)
class Prediction:
    index: int
    name: str
    probability: float


def class_name(index: int, num_classes: int) -> str:
    """ImageNet names for 1000-class models; other heads have no names to show."""
    return IMAGENET_CATEGORIES[index] if num_classes == len(IMAGENET_CATEGORIES) else f"class {index}"


@torch.inference_mode()
def classify(
    model: MobileNetV2, images: Sequence[Image.Image], preprocess: Preprocess, top_k: int = 5
) -> list[list[Prediction]]:
    """Top-k classes with softmax probabilities for each image, in one batch."""
    batch = torch.stack([preprocess(image) for image in images])
    probabilities = model.eval()(batch).softmax(dim=1)
    values, indices = probabilities.topk(min(top_k, probabilities.shape[1]), dim=1)
    num_classes = probabilities.shape[1]
    return [
        [Prediction(i, class_name(i, num_classes), p) for i, p in zip(idx.tolist(), val.tolist(), strict=True)]
        for idx, val in zip(indices, values, strict=True)
    ]


def format_table(path: str, predictions: list[Prediction]) -> str:
    rows = [f"{path}", f"  {'rank':>4}  {'class':>5}  {'name':<28} {'prob':>6}"]
    rows += [f"  {r:>4}  {p.index:>5}  {p.name:<28} {p.probability:6.3f}" for r, p in enumerate(predictions, 1)]
    return "\n".join(rows)


def build_parser() -> argparse.ArgumentParser:
    parser = new_parser("python -m demo.classify", __doc__.split("\n\n")[0])
    parser.add_argument(
        "--weights",
        required=True,
        help=f"a suite checkpoint (.pt), a TFLite classifier (.tflite) or one of {', '.join(TORCHVISION_WEIGHTS)}",
    )
    parser.add_argument("images", nargs="+", type=Path, help="photos to classify")
    parser.add_argument("--top", type=int, default=5, help="classes to show per photo (default 5)")
    parser.add_argument("--json", type=Path, help="also write the results to this JSON file")
    return parser


def classify_command(args: argparse.Namespace) -> int:
    images = []
    for path in args.images:
        try:
            with Image.open(path) as image:
                images.append(image.convert("RGB"))
        except OSError as e:  # missing, unreadable or not an image (UnidentifiedImageError)
            raise UserError(f"{path}: cannot read image ({e})") from None
    model, preprocess = load_classifier(args.weights)
    results = classify(model, images, preprocess, args.top)
    print("\n\n".join(format_table(str(path), top) for path, top in zip(args.images, results, strict=True)))
    if args.json:
        records = [
            {"image": str(p), "top": [asdict(x) for x in top]} for p, top in zip(args.images, results, strict=True)
        ]
        write_atomic(args.json, json.dumps({"weights": args.weights, "results": records}, indent=2))
    return 0


def main(argv: list[str] | None = None) -> int:
    """Classify; errors are one `error:` line and exit 2, Ctrl-C one line and exit 130 (common.cli.run_cli)."""
    return run_cli(build_parser(), argv, lambda parser, args: check_flags(parser, args), classify_command)


if __name__ == "__main__":
    sys.exit(main())
