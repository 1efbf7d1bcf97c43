"""Both models on a CUDA GPU beside torchvision, measured in the same run: SSDLite beside the same architecture
assembled from torchvision's parts (bench.models.torchvision_ssdlite_mnv2) and, as context, ssdlite320_mobilenet_v3_large;
DeepLab beside torchvision's MobileNetV3 segmenters. Training images/s with AMP + channels_last (SSDLite at batch 64
and 192), inference latency at batch 1 and throughput at batch 64, fp32 and fp16.

Every candidate runs the same way (channels_last weights and inputs, the same batch, the same precision), so the
ratios compare the models, not the settings. Inputs and targets are random: throughput does not depend on them,
only post-processing does (random weights give it a full load). Without a CUDA device `run` measures nothing and
returns a skipped Section, so `bench.run` keeps the GPU rows measured earlier.
"""

from __future__ import annotations

import datetime
from typing import Callable

import torch
import torch.nn.functional as F
from torch import nn

from bench.common import Section, markdown_table, median_seconds
from bench.models import (
    SEGMENTATION_CLASSES,
    engine_sgd,
    our_deeplab,
    our_ssdlite,
    random_boxes,
    random_masks,
    torchvision_segmentation,
    torchvision_ssdlite,
    torchvision_ssdlite_mnv2,
    torchvision_ssdlite_network,
)
from common.labels import IGNORE_INDEX
from deeplab_mobile import segmentation_loss
from ssdlite import SSDLITE320_COCO, SSDLiteLoss, pad_targets
from ssdlite.postprocess import postprocess as ssdlite_postprocess

TITLE = "GPU: training and inference beside torchvision"
COMMAND = "python -m bench.run --only gpu"
CL = torch.channels_last
BATCH = 64  # inference throughput
TRAIN_BATCHES = {"ssdlite": (64, 192), "deeplab": (64,)}  # 192: torchvision's SSDLite recipe's global batch
IMAGE_SIZES = {"ssdlite": 320, "deeplab": 513}  # SSDLite 320 COCO's input; the DeepLab training crop
NUM_CLASSES = {"ssdlite": SSDLITE320_COCO.num_classes, "deeplab": SEGMENTATION_CLASSES}
LABELS = {
    "ssdlite": "ours, SSDLite 320 COCO",
    "tv_ssdlite_mnv2": "torchvision SSD + SSDLiteHead on mobilenet_v2 (same architecture)",
    "tv_ssdlite": "context: torchvision ssdlite320_mobilenet_v3_large",
    "deeplab": "ours, Mobile DeepLabv3 mnv2_os16",
    "tv_lraspp": "torchvision lraspp_mobilenet_v3_large",
    "tv_deeplabv3": "torchvision deeplabv3_mobilenet_v3_large",
}
REFERENCES = {"ssdlite": ["tv_ssdlite_mnv2", "tv_ssdlite"], "deeplab": ["tv_lraspp", "tv_deeplabv3"]}
TORCHVISION_DETECTORS = tuple(REFERENCES["ssdlite"])  # torchvision's SSD class: its transform, loss, post-processing
DETECTORS = ("ssdlite", *TORCHVISION_DETECTORS)
PRECISIONS = {"fp32": False, "fp16 autocast": True}


def _family(key: str) -> str:
    return "ssdlite" if key in DETECTORS else "deeplab"


def _model(key: str, train: bool, device: torch.device, image_size: int) -> nn.Module:
    """A freshly seeded model of `key` on `device`, channels_last like every candidate."""
    if key == "ssdlite":
        model = our_ssdlite(train)
    elif key in TORCHVISION_DETECTORS:
        model = torchvision_ssdlite_mnv2(train) if key == "tv_ssdlite_mnv2" else torchvision_ssdlite(train)
        model.transform.fixed_size = (image_size, image_size)  # its resize target, 320 natively
    elif key == "deeplab":
        model = our_deeplab(train)
    else:
        model = torchvision_segmentation(key.removeprefix("tv_"), train)
    return model.train(train).to(device, memory_format=CL)


def _synced(fn: Callable[[], object], device: torch.device) -> Callable[[], None]:
    """`fn` then a wait for the GPU, so wall time covers the kernels the call queued, not just their launch."""

    def call() -> None:
        fn()
        if device.type == "cuda":
            torch.cuda.synchronize(device)

    return call


def _normaliser(model: nn.Module, device: torch.device) -> Callable[[torch.Tensor], torch.Tensor]:
    """Our SSDLite's input from [0, 1] images, on the device: torchvision's model normalises inside, so both start
    from the same batch. The preset's mean and std are put on the device once; each call subtracts and divides."""
    preset = model.preset
    mean = torch.tensor(preset.mean, device=device).view(1, 3, 1, 1)
    std = torch.tensor(preset.std, device=device).view(1, 3, 1, 1)

    def normalised(images01: torch.Tensor) -> torch.Tensor:
        return ((images01 - mean) / std).contiguous(memory_format=CL)

    return normalised


def _loss_fn(
    key: str, model: nn.Module, device: torch.device, batch: int, image_size: int
) -> Callable[[], torch.Tensor]:
    """The training loss of `key` on a random batch: 3 random boxes per image with random labels for detectors,
    random masks with 10% ignored pixels for segmenters; each model with its own loss."""
    gen = torch.Generator().manual_seed(0)
    classes = NUM_CLASSES[_family(key)]
    if key in DETECTORS:
        images01 = torch.rand(batch, 3, image_size, image_size, generator=gen).to(device, memory_format=CL)
        boxes = [random_boxes(gen, 3, image_size).to(device) for _ in range(batch)]
        labels = [torch.randint(1, classes, (3,), generator=gen).to(device) for _ in range(batch)]
        if key in TORCHVISION_DETECTORS:
            images, targets = (
                list(images01.unbind(0)),
                [{"boxes": b, "labels": c} for b, c in zip(boxes, labels, strict=True)],
            )
            return lambda: sum(model(images, targets).values())  # its transform, anchors, matcher and loss
        ssd_loss = SSDLiteLoss(model.preset.classification)
        anchors = model.anchors((image_size, image_size), device)
        normalised = _normaliser(model, device)

        def ours() -> torch.Tensor:
            gt_boxes, gt_labels = pad_targets(boxes, labels, (image_size, image_size))
            box_regression, class_logits = model(normalised(images01))
            return ssd_loss(box_regression, class_logits, anchors, gt_boxes, gt_labels)["loss"]

        return ours
    x = torch.randn(batch, 3, image_size, image_size, generator=gen).to(device, memory_format=CL)
    masks = random_masks(gen, batch, image_size, classes).to(device)
    if key == "deeplab":
        return lambda: segmentation_loss(model(x), masks)
    return lambda: F.cross_entropy(model(x)["out"], masks, ignore_index=IGNORE_INDEX)


def training_images_per_s(
    key: str, device: torch.device, batch: int, image_size: int, repeats: int, warmup: int
) -> float:
    """Images/s of a training step (forward + loss + backward + SGD step) as the training engine runs it on CUDA:
    autocast fp16 with a GradScaler, channels_last, the engine's SGD (momentum 0.9 Nesterov)."""
    model = _model(key, True, device, image_size)
    optimizer, scaler = engine_sgd(model), torch.amp.GradScaler(device.type)
    loss_fn = _loss_fn(key, model, device, batch, image_size)

    def step() -> None:
        with torch.autocast(device.type, dtype=torch.float16):
            loss = loss_fn()
        optimizer.zero_grad(set_to_none=True)
        scaler.scale(loss).backward()
        scaler.step(optimizer)
        scaler.update()

    return batch / median_seconds(_synced(step, device), repeats, warmup)


def _inference_fn(key: str, model: nn.Module, images01: torch.Tensor, postprocess: bool) -> Callable[[], object]:
    """One inference call of `key` on [0, 1] images (segmenters get them as is: random either way). Detectors
    without `postprocess` stop at the head outputs (torchvision's after its transform, backbone and head)."""
    batch, size = images01.shape[0], images01.shape[-1]
    if key in TORCHVISION_DETECTORS:
        images = list(images01.unbind(0))
        if postprocess:
            return lambda: model(images)
        return lambda: torchvision_ssdlite_network(model, images)
    if key == "ssdlite":
        preset, anchors = model.preset, model.anchors((size, size), images01.device)
        normalised = _normaliser(model, images01.device)

        def ours() -> object:
            box_regression, class_logits = model(normalised(images01))
            if not postprocess:
                return class_logits
            return ssdlite_postprocess(
                box_regression.float(),
                class_logits.float(),
                anchors,
                [(size, size)] * batch,
                classification=preset.classification,
                score_threshold=preset.score_threshold,
                nms_iou=preset.nms_iou,
                pre_nms_topk=preset.pre_nms_topk,
                detections_per_image=preset.detections_per_image,
            )

        return ours
    if key == "deeplab":
        return lambda: model(images01)
    return lambda: model(images01)["out"]


def _inference_seconds(call: Callable[[], object], device: torch.device, amp: bool, repeats: int, warmup: int) -> float:
    def run_once() -> None:
        with torch.inference_mode(), torch.autocast(device.type, dtype=torch.float16, enabled=amp):
            call()

    return median_seconds(_synced(run_once, device), repeats, warmup)


def inference_results(
    key: str, device: torch.device, batch: int, image_size: int, repeats: int, warmup: int
) -> dict[str, float]:
    """Latency (ms) at batch 1 and throughput (images/s) at `batch`, in fp32 and under fp16 autocast, keyed by
    their row in the table; detectors with and without post-processing. Eval mode, torch.inference_mode."""
    model = _model(key, False, device, image_size)
    gen = torch.Generator().manual_seed(0)
    images = torch.rand(batch, 3, image_size, image_size, generator=gen).to(device, memory_format=CL)
    results = {}
    for precision, amp in PRECISIONS.items():
        for n in (1, batch):
            for post in (False, True) if key in DETECTORS else (False,):
                call = _inference_fn(key, model, images[:n], post)
                seconds = _inference_seconds(call, device, amp, repeats, warmup)
                results[_row(n, precision, post)] = 1000.0 * seconds if n == 1 else n / seconds
    return results


def _row(batch: int, precision: str, postprocess: bool) -> str:
    what = f"latency, batch 1, {precision}" if batch == 1 else f"throughput, batch {batch}, {precision}"
    return what + (", + post-processing" if postprocess else "") + (" (ms)" if batch == 1 else " (images/s)")


def _training_row(batch: int) -> str:
    return f"training, AMP + channels_last, batch {batch} (images/s)"


def _number(value: float) -> str:
    return f"{value:.0f}" if value >= 100 else f"{value:.1f}" if value >= 10 else f"{value:.2f}"


def _table(ours: str, results: dict[str, dict[str, float]]) -> str:
    """Our model's rows beside each reference's, with our speed ÷ the reference's (above 1: ours is faster)."""
    refs = REFERENCES[ours]
    header = ["measurement", LABELS[ours]]
    for ref in refs:
        header += [LABELS[ref], "speed ratio"]
    rows = []
    for row, value in results[ours].items():
        cells = [row, _number(value)]
        for ref in refs:
            ref_value = results[ref][row]
            ratio = ref_value / value if row.endswith("(ms)") else value / ref_value
            cells += [_number(ref_value), f"{ratio:.2f}×"]
        rows.append(cells)
    return markdown_table(header, rows, "l" + "r" * (len(header) - 1))


def _device_name(device: torch.device) -> str:
    if device.type != "cuda":
        return f"{device.type} (not a GPU: a smoke run)"
    return f"{torch.cuda.get_device_name(device)}, CUDA {torch.version.cuda}, cuDNN {torch.backends.cudnn.version()}"


def measure(
    device: torch.device,
    batch: int,
    train_batches: dict[str, tuple[int, ...]],
    image_sizes: dict[str, int],
    repeats: int,
    warmup: int,
) -> dict[str, dict[str, float]]:
    """Every row of every candidate: model key → row → value (images/s, or ms for latency). Training runs at each
    of its family's `train_batches`, inference throughput at `batch`."""
    results: dict[str, dict[str, float]] = {}
    for key in LABELS:
        family = _family(key)
        size = image_sizes[family]
        results[key] = {
            _training_row(b): training_images_per_s(key, device, b, size, repeats, warmup)
            for b in train_batches[family]
        }
        results[key] |= inference_results(key, device, batch, size, repeats, warmup)
        if device.type == "cuda":
            torch.cuda.empty_cache()  # the next candidate starts from the same free memory
    return results


def body(
    results: dict[str, dict[str, float]], device: torch.device, image_sizes: dict[str, int], repeats: int, warmup: int
) -> str:
    """The section's Markdown for `measure`'s results: the date, device and versions first (the rows outlive the
    run that made them: a run without a GPU keeps them), then one table per model family."""
    import torchvision

    ssd, seg = image_sizes["ssdlite"], image_sizes["deeplab"]
    return "\n".join(
        [
            f"Measured on {datetime.date.today().isoformat()}: {_device_name(device)}; torch {torch.__version__}, "
            f"torchvision {torchvision.__version__}. Median of {repeats} timed calls after {warmup} warm-up calls, "
            "each timed up to a torch.cuda.synchronize. All models channels_last (weights and inputs), random weights "
            "(torchvision: weights=None, weights_backbone=None), cuDNN settings at PyTorch's defaults (as the training "
            "engine leaves them). Speed ratio: our speed ÷ the reference's (above 1: ours is faster).",
            "",
            f"### SSDLite, {ssd}×{ssd}, {NUM_CLASSES['ssdlite']} classes",
            "",
            _table("ssdlite", results),
            "",
            "Training: 3 random boxes per image with random labels, each model with its own matching and loss "
            "(ours: SSDLiteLoss, softmax, 3:1 hard negatives); SGD momentum 0.9 Nesterov, weight decay 4e-5; autocast "
            "fp16 with a GradScaler, as train/engine.py on CUDA. Both models take the same [0, 1] batch: ours "
            "normalises it on the GPU, torchvision's transform normalises and resizes each image (to the same size). "
            "Inference rows without post-processing stop at the head outputs (torchvision: transform + backbone + "
            f"head); with it, ours adds box decoding, score threshold {SSDLITE320_COCO.score_threshold}, top "
            f"{SSDLITE320_COCO.pre_nms_topk} and one batched NMS per batch, "
            "torchvision's SSD class its own (300 candidates per class and image, NMS per image; the same-architecture "
            "model with our score threshold, NMS IoU and detections per image, MobileNetV3's with torchvision's "
            "ssdlite320 settings: score > 0.001, 300 detections). The same-architecture model is described in the "
            "CPU SSDLite section.",
            "",
            f"### Mobile DeepLabv3, {seg}×{seg}, {NUM_CLASSES['deeplab']} classes",
            "",
            _table("deeplab", results),
            "",
            "Training: random normalised images, random masks with 10% ignored pixels (255), each model's cross-entropy "
            "(ours: segmentation_loss; torchvision's deeplabv3 without its aux head); SGD and AMP as above. "
            "Inference: random images in, logits upsampled to the input size out, for every model.",
        ]
    )


def run(quick: bool) -> Section:
    if not torch.cuda.is_available():
        return Section(
            TITLE, "Skipped: no CUDA device, so no GPU rows were measured in this run.", COMMAND, skipped=True
        )
    device = torch.device("cuda")
    repeats, warmup = (5, 2) if quick else (30, 5)
    results = measure(device, BATCH, TRAIN_BATCHES, IMAGE_SIZES, repeats, warmup)
    return Section(TITLE, body(results, device, IMAGE_SIZES, repeats, warmup), COMMAND)
