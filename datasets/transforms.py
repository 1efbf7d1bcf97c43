"""Albumentations pipelines for SSD detection and DeepLab segmentation training, and the evaluation transforms.

Every resize goes through `common.images.resize_pixels` with the model preset's method, the one `predict` uses.
Evaluation does not resize or normalise here at all: its transforms call the head's own preprocessing
(`ssdlite.preprocess_image`, `deeplab_mobile.preprocess_image`), which the training and evaluation entry points
pass in (datasets never import the models), so the pixels scored are the pixels `Detector` / `Segmenter` give the
network. Defaults are the presets' defaults (ImageNet normalisation, OpenCV bilinear).

Boxes travel through albumentations in pascal_voc pixel format with an index label, so every per-box field
(labels, VOC `difficult`) stays aligned with its box and is dropped with it when a crop or resize makes the box
degenerate. The pipelines end in tensors: image float CHW normalised, boxes float [N, 4], masks int64 HxW.
"""

from __future__ import annotations

import os
import random
from typing import Any, Callable, Sequence

import albumentations as A
import numpy as np
import torch
from albumentations.augmentations.crops.transforms import BaseCrop

from common.images import Normalization, ResizeMethod, normalization_stats, normalized_tensor, resize_pixels
from common.labels import IGNORE_INDEX


def mean_pixel(kind: Normalization) -> tuple[int, int, int]:
    """The uint8 colour that normalises to zero: the fill for padded and expanded areas."""
    mean, _ = normalization_stats(kind)
    return tuple(round(m * 255) for m in mean)  # type: ignore[return-value]


class MinIoURandomCrop(BaseCrop):
    """SSD's min-IoU random crop (Liu et al. 2016), sampled as torchvision's `RandomIoUCrop` samples it.

    Albumentations has no min-IoU crop, so only the crop window is chosen here; albumentations crops the image and
    moves, clips and filters the boxes. A window is accepted when some box's centre lies inside it and that box
    overlaps it with IoU >= the drawn threshold; threshold 1.0 means "keep the whole image".
    """

    def __init__(
        self,
        min_ious: Sequence[float] = (0.0, 0.1, 0.3, 0.5, 0.7, 0.9, 1.0),
        scale: tuple[float, float] = (0.3, 1.0),
        aspect: tuple[float, float] = (0.5, 2.0),
        trials: int = 40,
        p: float = 1.0,
    ):
        super().__init__(p=p)
        self.min_ious = tuple(min_ious)
        self.scale = scale
        self.aspect = aspect
        self.trials = trials

    def get_params_dependent_on_data(self, params: dict[str, Any], data: dict[str, Any]) -> dict[str, Any]:
        height, width = params["shape"][:2]
        whole = (0, 0, width, height)
        boxes = np.asarray(data.get("bboxes", np.zeros((0, 4))))[:, :4] * [width, height, width, height]
        if len(boxes) == 0:
            return {"crop_coords": whole}
        centres = (boxes[:, :2] + boxes[:, 2:]) / 2
        areas = (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])
        rng = self.random_generator
        for _ in range(len(self.min_ious) * 8):  # torchvision loops forever; 1.0 in the options ends it in practice
            min_iou = self.min_ious[rng.integers(len(self.min_ious))]
            if min_iou >= 1.0:
                return {"crop_coords": whole}
            # All trials at once: (x0, y0, x1, y1) rows, then the first that passes both tests.
            size = (rng.uniform(*self.scale, (self.trials, 2)) * [width, height]).astype(np.int64)
            start = (rng.random((self.trials, 2)) * ([width, height] - size)).astype(np.int64)
            crops = np.concatenate([start, start + size], axis=1)
            aspect = size[:, 0] / np.maximum(size[:, 1], 1)
            shaped = (size > 0).all(axis=1) & (aspect >= self.aspect[0]) & (aspect <= self.aspect[1])
            inside = (
                (centres[None, :, 0] > crops[:, None, 0])
                & (centres[None, :, 0] < crops[:, None, 2])
                & (centres[None, :, 1] > crops[:, None, 1])
                & (centres[None, :, 1] < crops[:, None, 3])
            )
            ix = np.clip(
                np.minimum(boxes[None, :, 2], crops[:, None, 2]) - np.maximum(boxes[None, :, 0], crops[:, None, 0]),
                0,
                None,
            )
            iy = np.clip(
                np.minimum(boxes[None, :, 3], crops[:, None, 3]) - np.maximum(boxes[None, :, 1], crops[:, None, 1]),
                0,
                None,
            )
            inter = ix * iy
            iou = inter / (areas[None, :] + (size[:, 0] * size[:, 1])[:, None] - inter)
            passing = np.flatnonzero(shaped & (inside & (iou >= min_iou)).any(axis=1))
            if len(passing):
                return {"crop_coords": tuple(int(v) for v in crops[passing[0]])}
        return {"crop_coords": whole}

    def get_transform_init_args_names(self) -> tuple[str, ...]:
        return ("min_ious", "scale", "aspect", "trials")


def _eight_bit(pixels: np.ndarray) -> np.ndarray:
    """Float pixels back to uint8 for the augmentations that follow (≤ 0.5 of a grey level; exact for OpenCV's)."""
    return np.clip(np.round(pixels), 0, 255).astype(np.uint8)


class PresetResize(A.Resize):
    """albumentations' Resize (boxes follow) with the pixels resized by `common.images.resize_pixels` and the
    model preset's method, so training resizes as `predict` and evaluation do."""

    def __init__(self, height: int, width: int, method: ResizeMethod, p: float = 1.0):
        super().__init__(height, width, p=p)
        self.method = method

    def apply(self, img: np.ndarray, *args: Any, **params: Any) -> np.ndarray:
        return _eight_bit(resize_pixels(img, (self.height, self.width), self.method))

    def get_transform_init_args_names(self) -> tuple[str, ...]:
        return (*super().get_transform_init_args_names(), "method")


class PresetRandomScale(A.RandomScale):
    """albumentations' RandomScale (masks follow by nearest neighbour) with the image resized by the preset's
    method, to the size albumentations gives the mask."""

    def __init__(self, scale_limit: tuple[float, float], method: ResizeMethod, p: float = 1.0):
        super().__init__(scale_limit=scale_limit, p=p)
        self.method = method

    def apply(self, img: np.ndarray, scale: float, **params: Any) -> np.ndarray:
        size = (int(img.shape[0] * scale), int(img.shape[1] * scale))  # albumentations' `scale` rounding
        return _eight_bit(resize_pixels(img, size, self.method))

    def get_transform_init_args_names(self) -> tuple[str, ...]:
        return (*super().get_transform_init_args_names(), "method")


class _Pipeline:
    """Albumentations Composes whose random state is reseeded whenever the calling process's torch seed changes.

    DataLoader workers are forked with a copy of the parent's generator, so without this every worker would draw
    the same augmentations. The seed is `torch.initial_seed()`: the worker's seed in a worker, and per sample when
    the training loader seeds each sample (`datasets.loading.sample_random_state`, exact resume), so
    `torch.manual_seed` makes runs repeatable. One shared generator is installed rather than albumentations'
    `seed=`, which gives every transform an identically seeded generator and so correlates their decisions.
    """

    def __init__(self, *composes: A.Compose):
        self.composes = composes
        self._seeded: tuple[int, int] | None = None

    def _seed_for_this_process(self) -> None:
        seed = torch.initial_seed() % 2**63
        if self._seeded == (os.getpid(), seed):
            return
        generator, py_random = np.random.default_rng(seed), random.Random(seed)
        for compose in self.composes:
            compose.set_random_state(generator, py_random)
        self._seeded = (os.getpid(), seed)


class DetectionTransform(_Pipeline):
    """`(image HxWx3 uint8, target of numpy per-box fields) -> (image tensor, target of tensors)`.

    `target` must hold `boxes` (float [N, 4], xyxy pixels); every other entry is a per-box field kept aligned
    with the boxes. `target=None` (inference, e.g. the demo) returns `(image tensor, None)`. The geometric stage
    carries the boxes; the pixel stage runs apart because albumentations re-checks boxes after every transform
    of a Compose that has them, which would cost a quarter of the pipeline for transforms that cannot move boxes.
    """

    def __init__(self, geometric: A.Compose, pixel: A.Compose, normalization: Normalization):
        super().__init__(geometric, pixel)
        normalization_stats(normalization)  # raises on an unknown name
        self.geometric, self.pixel, self.normalization = geometric, pixel, normalization

    def __call__(
        self,
        image: np.ndarray,
        target: dict[str, np.ndarray] | None = None,
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor] | None]:
        self._seed_for_this_process()
        boxes = np.zeros((0, 4), np.float32) if target is None else np.asarray(target["boxes"], np.float32)
        out = self.geometric(image=image, bboxes=boxes.reshape(-1, 4), indices=np.arange(len(boxes)))
        tensor = normalized_tensor(self.pixel(image=out["image"])["image"], self.normalization)
        if target is None:
            return tensor, None
        keep = np.asarray(out["indices"], dtype=np.int64)
        fields = {k: np.asarray(v)[keep] for k, v in target.items() if k != "boxes"}
        return tensor, _target_tensors(np.asarray(out["bboxes"], np.float32).reshape(-1, 4), fields)


class SegmentationTransform(_Pipeline):
    """`(image HxWx3 uint8, mask HxW uint8 or None) -> (image tensor, mask int64 tensor or None)`."""

    def __init__(self, compose: A.Compose, normalization: Normalization):
        super().__init__(compose)
        normalization_stats(normalization)  # raises on an unknown name
        self.compose, self.normalization = compose, normalization

    def __call__(
        self,
        image: np.ndarray,
        mask: np.ndarray | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        self._seed_for_this_process()
        out = self.compose(image=image) if mask is None else self.compose(image=image, mask=mask)
        tensor = normalized_tensor(out["image"], self.normalization)
        return tensor, None if mask is None else torch.as_tensor(out["mask"]).long()


class DetectionEvalTransform:
    """`(image, target or None) -> (network input, target with boxes in the input's pixels)` by the head's own
    preprocessing (`ssdlite.preprocess_image` with the model's preset), which stretches the image to the network
    size; boxes are stretched with it. Detections are mapped back to each file's pixels with `orig_size`."""

    def __init__(self, preprocess: Callable[[np.ndarray], torch.Tensor]):
        self.preprocess = preprocess

    def __call__(
        self,
        image: np.ndarray,
        target: dict[str, np.ndarray] | None = None,
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor] | None]:
        tensor = self.preprocess(image)
        if target is None:
            return tensor, None
        (h, w), (height, width) = image.shape[:2], tensor.shape[-2:]
        boxes = np.asarray(target["boxes"], np.float32).reshape(-1, 4) * np.float32([width / w, height / h] * 2)
        fields = {k: np.asarray(v) for k, v in target.items() if k != "boxes"}
        return tensor, _target_tensors(boxes, fields)


class SegmentationEvalTransform:
    """`(image, mask) -> (network input, mask, region)` by the head's own preprocessing
    (`deeplab_mobile.preprocess_image` with the model's preset: the input and the image's region in it); the mask
    stays at the image's size, where scores are compared (`collate_segmentation_eval` keeps the three apart)."""

    def __init__(self, preprocess: Callable[[np.ndarray], tuple[torch.Tensor, tuple[int, int]]]):
        self.preprocess = preprocess

    def __call__(
        self,
        image: np.ndarray,
        mask: np.ndarray | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor | None, tuple[int, int]]:
        tensor, region = self.preprocess(image)
        return tensor, None if mask is None else torch.from_numpy(mask.astype(np.int64)), region


def _target_tensors(boxes: np.ndarray, fields: dict[str, np.ndarray]) -> dict[str, torch.Tensor]:
    target = {"boxes": torch.from_numpy(boxes)}
    for key, value in fields.items():
        target[key] = torch.from_numpy(value.astype(bool if value.dtype == bool else np.int64))
    return target


def image_to_tensor(image: np.ndarray) -> torch.Tensor:
    """HxWx3 uint8 → CHW float in [0, 1], no normalisation (what a dataset returns without a transform)."""
    return torch.from_numpy(np.ascontiguousarray(image.transpose(2, 0, 1))).float().div_(255)


def to_tensors(image: np.ndarray, target: dict[str, np.ndarray]) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """No augmentation: `image_to_tensor` and tensor targets (a detection dataset's default)."""
    fields = {k: np.asarray(v) for k, v in target.items() if k != "boxes"}
    return image_to_tensor(image), _target_tensors(np.asarray(target["boxes"], np.float32).reshape(-1, 4), fields)


def detection_train_transform(
    size: int | tuple[int, int] = 320,
    normalization: Normalization = "imagenet",
    resize: ResizeMethod = "opencv_linear",
    *,
    expand_p: float = 0.5,
    max_expand: float = 4.0,
    min_visibility: float = 0.3,
) -> DetectionTransform:
    """SSD training augmentation: zoom-out, min-IoU crop, resize, flip, photometric distortion.

    Zoom-out pads each side by 0..(max_expand-1)/2 of the image (sampled per side, so the image lands anywhere on a
    canvas up to `max_expand` times larger) with the mean pixel. The flip and the photometric distortion
    (brightness, contrast, saturation, hue in random order, SSD's ranges) run after the resize: they commute with
    it, and cost less on the smaller image. Boxes less than `min_visibility` inside a crop, or narrower than a
    pixel after the resize, are dropped with their labels.
    """
    height, width = (size, size) if isinstance(size, int) else size
    side = (max_expand - 1.0) / 2
    geometric = [
        A.CropAndPad(
            percent=(0.0, side), keep_size=False, sample_independently=True, fill=mean_pixel(normalization), p=expand_p
        ),
        MinIoURandomCrop(),
        PresetResize(height, width, resize),
        A.HorizontalFlip(p=0.5),
    ]
    bbox_params = A.BboxParams(
        format="pascal_voc",
        label_fields=["indices"],
        min_visibility=min_visibility,
        min_width=1.0,
        min_height=1.0,
        clip=True,
    )
    # p=0.5 for all four: two distortions per image on average, as SSD's (each op with p=0.5) gives.
    pixel = [A.ColorJitter(brightness=32 / 255, contrast=0.5, saturation=0.5, hue=18 / 360, p=0.5)]
    return DetectionTransform(A.Compose(geometric, bbox_params=bbox_params), A.Compose(pixel), normalization)


def segmentation_train_transform(
    crop: int = 513,
    scale: tuple[float, float] = (0.5, 2.0),
    normalization: Normalization = "imagenet",
    resize: ResizeMethod = "opencv_linear",
    augment: bool = True,
) -> SegmentationTransform:
    """DeepLab training augmentation: random scale (by the preset's resize method), pad to the crop (image with the
    mean pixel, mask with 255 = ignore), random crop, horizontal flip. `augment=False` (--no-augment) only pads
    bottom/right and crops the top-left `crop` × `crop`, as evaluation feeds an image that fits the crop."""
    fill = dict(fill=mean_pixel(normalization), fill_mask=IGNORE_INDEX)
    if not augment:
        return SegmentationTransform(
            A.Compose([A.PadIfNeeded(crop, crop, position="top_left", **fill), A.Crop(0, 0, crop, crop)]), normalization
        )
    transforms = [
        PresetRandomScale(scale_limit=(scale[0] - 1.0, scale[1] - 1.0), method=resize),
        A.RandomCrop(crop, crop, pad_if_needed=True, pad_position="random", **fill),
        A.HorizontalFlip(p=0.5),
    ]
    return SegmentationTransform(A.Compose(transforms), normalization)
