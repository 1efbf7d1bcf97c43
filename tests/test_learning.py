"""Learning checks on the CPU, from scratch on the synthetic dataset, scored by the evaluation CLIs on the saved
checkpoint.

Mobile DeepLabv3 meets its generalisation target: mIoU >= 0.6 on the synthetic val split after about 2.5 CPU
minutes of training. SSDLite does not generalise in CPU minutes (docs/training.md has the figures), so its check
is a fit: a few images, validation = the training images. Both catch what breaks training silently: a loss that
does not go down, a head whose outputs do not line up with its targets, and eval-mode BatchNorm statistics that
lag the weights (without --bn-recalibration the SSDLite fit below scores AP50 0.01 instead of 1.0).
"""

from __future__ import annotations

import json
import shutil

import pytest

from datasets.synthetic import generate

COMMON = ["--width-mult", "0.5", "--weights", "none", "--optimizer", "adamw", "--lr", "3e-3", "--weight-decay",
          "1e-4", "--batch-size", "16", "--workers", "1", "--no-augment", "--no-progress", "--seed", "0"]  # fmt: skip


@pytest.fixture(scope="module")
def fit_set(tmp_path_factory):
    """32 synthetic 128-px images whose val split is the train split (VOC lists; COCO files passed as custom)."""
    root = generate(tmp_path_factory.mktemp("fit") / "data", num_train=32, num_val=4, seed=5, size=128, workers=1,
                    progress=False).root  # fmt: skip
    lists = root / "voc" / "ImageSets" / "Segmentation"
    shutil.copy(lists / "train.txt", lists / "val.txt")
    return root


def test_ssdlite_fits_a_few_images_and_finds_them_in_eval_mode(fit_set, tmp_path):
    from eval.coco_map import main as coco_map
    from train.ssdlite import main as train

    annotations, images = fit_set / "coco" / "annotations" / "instances_train.json", fit_set / "coco" / "train"
    run = train(["--data", "custom", "--train-ann", str(annotations), "--train-images", str(images), "--val-ann",
                 str(annotations), "--val-images", str(images), "--image-size", "128", "--epochs", "60",
                 "--eval-interval", "60", "--project", str(tmp_path), "--name", "ssdlite", *COMMON])  # fmt: skip
    report = coco_map(["--weights", str(run / "best.pt"), "--ann", str(annotations), "--images", str(images),
                       "--project", str(tmp_path), "--name", "eval", "--quiet"])  # fmt: skip
    stats = json.loads((report / "metrics.json").read_text())["stats"]
    assert stats["AP50"] >= 0.8, stats


@pytest.fixture(scope="module")
def generalisation_set(tmp_path_factory):
    """The synthetic dataset at 128 px: 1,000 train and 100 val images (about 2 s to draw)."""
    return generate(tmp_path_factory.mktemp("gen") / "data", num_train=1000, num_val=100, seed=0, size=128,
                    progress=False).root  # fmt: skip


def test_deeplab_generalises_to_the_synthetic_val_split(generalisation_set, tmp_path):
    from eval.voc_miou import main as voc_miou
    from train.deeplab import main as train

    common = [arg for arg in COMMON if arg != "--no-augment"]
    run = train(["--data", "synthetic", "--data-root", str(generalisation_set), "--crop-size", "128", "--min-scale",
                 "0.75", "--max-scale", "1.5", "--epochs", "15", "--eval-interval", "15", "--project", str(tmp_path),
                 "--name", "deeplab", *common])  # fmt: skip
    report = voc_miou(["--weights", str(run / "best.pt"), "--data", "synthetic", "--data-root",
                       str(generalisation_set), "--project", str(tmp_path), "--name", "eval", "--quiet"])  # fmt: skip
    metrics = json.loads((report / "metrics.json").read_text())
    assert metrics["mIoU"] >= 0.6, metrics["per_class_iou"]
