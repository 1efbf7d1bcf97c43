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
    from deeplab_mobile.loss import IGNORE_INDEX

    masks = torch.randint(0, classes, (batch, size, size), generator=gen)
    masks[torch.rand(masks.shape, generator=gen) < 0.1] = IGNORE_INDEX
    return masks


def engine_sgd(model: torch.nn.Module) -> torch.optim.Optimizer:
    """The training engine's SGD settings (momentum 0.9 Nesterov, weight decay 4e-5, torchvision's recipe) applied
    to all parameters; the engine itself exempts BatchNorm parameters and biases from weight decay (a second
    parameter group)."""
    return torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9, nesterov=True, weight_decay=4e-5)
