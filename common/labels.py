"""Label conventions shared by datasets, models, training and evaluation: the ignored mask value and how class
names of two label sets (a checkpoint's and a dataset's, COCO's and VOC's) are matched."""

from __future__ import annotations

from typing import Sequence

# PASCAL VOC's 20 object classes in their label order (1..20; 0 is the background a segmenter adds).
VOC_CLASSES: tuple[str, ...] = (
    "aeroplane",
    "bicycle",
    "bird",
    "boat",
    "bottle",
    "bus",
    "car",
    "cat",
    "chair",
    "cow",
    "diningtable",
    "dog",
    "horse",
    "motorbike",
    "person",
    "pottedplant",
    "sheep",
    "sofa",
    "train",
    "tvmonitor",
)

IGNORE_INDEX = 255  # mask value that is neither scored nor trained on (VOC's object borders, padding)

# VOC spelling → COCO spelling of the classes both sets have under different names.
CLASS_ALIASES = {
    "aeroplane": "airplane",
    "motorbike": "motorcycle",
    "tvmonitor": "tv",
    "diningtable": "dining table",
    "sofa": "couch",
    "pottedplant": "potted plant",
}
UNUSED_CLASS = "n/a"  # torchvision's and TF's name for the unused ids of COCO's 91-id space: never matched


def canonical_class_name(name: str) -> str:
    """Lower case, single spaces, COCO spelling: the form two names are compared in."""
    key = " ".join(name.lower().split())
    return CLASS_ALIASES.get(key, key)


def match_class_names(source: Sequence[str], target: Sequence[str]) -> dict[int, int]:
    """{index in `source`: index in `target`} for every class both lists name (case-insensitive, with the
    COCO↔VOC aliases), background included. A name listed twice matches at its first place only."""
    where: dict[str, int] = {}
    for j, name in enumerate(target):
        where.setdefault(canonical_class_name(name), j)
    matched: dict[int, int] = {}
    for i, name in enumerate(source):
        key = canonical_class_name(name)
        if key != UNUSED_CLASS and key in where and where[key] not in matched.values():
            matched[i] = where[key]
    return matched
