"""The models, targets and optimiser every side-by-side benchmark builds: ours and torchvision's references,
seeded so that each benchmark times the same networks."""

from __future__ import annotations

import torch

SEGMENTATION_CLASSES = 21  # VOC, as the paper's Table 7 and torchvision's segmentation models


def torchvision_ssdlite(train: bool) -> torch.nn.Module:
    """torchvision's ssdlite320_mobilenet_v3_large, random weights, 91 COCO classes."""
    from torchvision.models.detection import ssdlite320_mobilenet_v3_large

    torch.manual_seed(0)
    model = ssdlite320_mobilenet_v3_large(weights=None, weights_backbone=None, num_classes=91)
    return model.train(train)


# torchvision's mobilenet_v2().features index of block 13 (0-based, features[0] is the stem): its 576-channel
# expansion is SSDLite's stride-16 map, as TF's "layer_15/expansion_output".
MNV2_C4 = 14
# DefaultBoxGenerator boxes per cell: [2] gives 4 (scale s, scale √(s·s'), ratios 2 and 1/2), the closest it comes to
# the paper's 3 on the first map; [2, 3] gives the paper's 6 on the others. torchvision's own ssdlite320 builder
# uses [2, 3] everywhere (TORCHVISION_ANCHOR_RATIOS): 3234 anchors against our 2034.
MNV2_ANCHOR_RATIOS = [[2]] + [[2, 3]] * 5
TORCHVISION_ANCHOR_RATIOS = [[2, 3]] * 6


def torchvision_ssdlite_mnv2(train: bool, aspect_ratios: list[list[int]] = MNV2_ANCHOR_RATIOS) -> torch.nn.Module:
    """The paper's SSDLite-MobileNetV2 as a torchvision user assembles it from torchvision's parts: its SSD class,
    SSDLiteHead, DefaultBoxGenerator and SSDLite feature extractor (with its `_extra_block` 512/256/256/128 extras)
    over mobilenet_v2's features, tapped at block 13's expansion and the 1280-channel last layer; 320×320, 91 classes,
    random weights with torchvision's ssdlite init. Post-processing thresholds are our preset's (score, NMS IoU,
    detections per image), so both detectors keep the same boxes; the 300 candidates per class are torchvision's."""
    from functools import partial

    from torchvision.models import mobilenet_v2
    from torchvision.models.detection import _utils as det_utils
    from torchvision.models.detection.anchor_utils import DefaultBoxGenerator
    from torchvision.models.detection.ssd import SSD
    from torchvision.models.detection.ssdlite import SSDLiteFeatureExtractorMobileNet, SSDLiteHead, _normal_init

    from ssdlite import SSDLITE320_COCO

    torch.manual_seed(0)
    norm_layer = partial(torch.nn.BatchNorm2d, eps=0.001, momentum=0.03)  # as torchvision's ssdlite320 builder
    features = mobilenet_v2(weights=None, norm_layer=norm_layer).features
    _normal_init(features)
    # torchvision's extractor splits MobileNetV3's block body, which V3 calls `.block` and V2 calls `.conv`.
    features[MNV2_C4].block = features[MNV2_C4].conv
    backbone = SSDLiteFeatureExtractorMobileNet(features, MNV2_C4, norm_layer)
    size = SSDLITE320_COCO.image_size
    anchors = DefaultBoxGenerator(aspect_ratios, min_ratio=0.2, max_ratio=0.95)
    channels = det_utils.retrieve_out_channels(backbone, size)
    head = SSDLiteHead(channels, anchors.num_anchors_per_location(), SSDLITE320_COCO.num_classes, norm_layer)
    model = SSD(
        backbone,
        anchors,
        size,
        SSDLITE320_COCO.num_classes,
        head=head,
        image_mean=[0.5] * 3,
        image_std=[0.5] * 3,
        score_thresh=SSDLITE320_COCO.score_threshold,
        nms_thresh=SSDLITE320_COCO.nms_iou,
        detections_per_img=SSDLITE320_COCO.detections_per_image,
        topk_candidates=300,
    )
    return model.train(train)


def torchvision_segmentation(name: str, train: bool) -> torch.nn.Module:
    """torchvision's deeplabv3_mobilenet_v3_large (name "deeplabv3") or lraspp_mobilenet_v3_large, random weights."""
    from torchvision.models import segmentation

    torch.manual_seed(0)
    kwargs = dict(weights=None, weights_backbone=None, num_classes=SEGMENTATION_CLASSES)
    if name == "deeplabv3":
        model = segmentation.deeplabv3_mobilenet_v3_large(aux_loss=False, **kwargs)
    else:
        model = segmentation.lraspp_mobilenet_v3_large(**kwargs)
    return model.train(train)


def our_deeplab(train: bool) -> torch.nn.Module:
    """Our Mobile DeepLabv3 (paper's OS16 row), channels_last as the training engine runs it."""
    from deeplab_mobile import build_deeplab

    torch.manual_seed(0)
    model = build_deeplab("mnv2_os16", num_classes=SEGMENTATION_CLASSES).train(train)
    return model.to(memory_format=torch.channels_last)


def our_ssdlite(train: bool) -> torch.nn.Module:
    """Our SSDLite 320 COCO (91 classes), seeded, channels_last as the training engine runs it."""
    from ssdlite import SSDLITE320_COCO, build_ssdlite

    torch.manual_seed(0)
    model = build_ssdlite(SSDLITE320_COCO).train(train)
    return model.to(memory_format=torch.channels_last)


def torchvision_ssdlite_network(model: torch.nn.Module, images: list[torch.Tensor]) -> object:
    """torchvision SSDLite's network only: its transform (normalise, resize), backbone and head; no anchors, no
    post-processing."""
    batch, _ = model.transform(images)
    return model.head(list(model.backbone(batch.tensors).values()))


def random_boxes(rng: torch.Generator, count: int, size: int) -> torch.Tensor:
    """`count` random boxes (x0, y0, x1, y1) in pixels of a size × size image, sides 5–50% of the image."""
    wh = (0.05 + 0.45 * torch.rand(count, 2, generator=rng)) * size
    xy = torch.rand(count, 2, generator=rng) * (size - wh)
    return torch.cat([xy, xy + wh], dim=1)


def random_masks(gen: torch.Generator, batch: int, size: int, classes: int) -> torch.Tensor:
    """`batch` random size × size segmentation masks of `classes` classes, 10% of pixels IGNORE_INDEX (as VOC's
    boundaries and padding)."""
    from common.labels import IGNORE_INDEX

    masks = torch.randint(0, classes, (batch, size, size), generator=gen)
    masks[torch.rand(masks.shape, generator=gen) < 0.1] = IGNORE_INDEX
    return masks


def engine_sgd(model: torch.nn.Module) -> torch.optim.Optimizer:
    """The training engine's SGD settings (momentum 0.9 Nesterov, weight decay 4e-5, torchvision's recipe) applied
    to all parameters; the engine itself exempts BatchNorm parameters and biases from weight decay (a second
    parameter group)."""
    return torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9, nesterov=True, weight_decay=4e-5)
