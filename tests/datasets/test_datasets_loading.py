"""Batching: collate shapes, dense targets, seeded workers, skipped samples counted across worker processes."""

from __future__ import annotations

import warnings

import pytest
import torch
import torch.distributed as dist

from common.labels import IGNORE_INDEX
from datasets.errors import SkipCounter, SkippedSampleWarning
from datasets.loading import collate_detection, collate_segmentation, make_loader
from datasets.synthetic import SyntheticPaths, synthetic_detection, synthetic_segmentation
from datasets.transforms import detection_train_transform, segmentation_train_transform


def target(n: int) -> dict:
    return {"boxes": torch.arange(4 * n, dtype=torch.float32).reshape(n, 4), "labels": torch.arange(1, n + 1)}


def test_collate_detection_stacks_images_and_keeps_targets_per_image():
    batch = [(torch.zeros(3, 8, 8), target(2)), None, (torch.ones(3, 8, 8), target(0))]
    images, targets = collate_detection(batch)
    assert images.shape == (2, 3, 8, 8) and [len(t["labels"]) for t in targets] == [2, 0]
    assert collate_detection([None, None]) is None
    with pytest.raises(ValueError, match="images in a batch differ in size"):
        collate_detection([(torch.zeros(3, 8, 8), target(1)), (torch.zeros(3, 8, 9), target(1))])


def test_collate_segmentation_pads_masks_with_ignore():
    batch = [
        (torch.ones(3, 4, 5), torch.zeros(4, 5, dtype=torch.int64)),
        (torch.ones(3, 6, 3), torch.ones(6, 3, dtype=torch.int64)),
    ]
    images, masks = collate_segmentation(batch)
    assert images.shape == (2, 3, 6, 5) and masks.shape == (2, 6, 5)
    assert (masks[0, 4:] == IGNORE_INDEX).all() and (masks[1, :, 3:] == IGNORE_INDEX).all()
    assert (images[0, :, 4:] == 0).all() and (masks[0, :4] == 0).all()


def test_loader_batches_synthetic_detection_with_seeded_workers(synthetic_root):
    data = synthetic_detection(synthetic_root, "train", detection_train_transform(96))

    def epoch() -> list:
        loader = make_loader(data, batch_size=4, train=True, workers=2, seed=7)
        assert loader.persistent_workers and loader.prefetch_factor == 4 and not loader.pin_memory
        return list(loader)

    first, second = epoch(), epoch()
    assert len(first) == 3  # 12 images, batch 4, last partial batch dropped
    images, targets = first[0]
    assert images.shape == (4, 3, 96, 96) and len(targets) == 4
    assert all(t["boxes"].shape[1] == 4 and t["labels"].dtype == torch.int64 for t in targets)
    for (a, ta), (b, tb) in zip(first, second, strict=True):  # same seed: same shuffling and the same augmentations
        assert torch.equal(a, b) and [t["image_id"] for t in ta] == [t["image_id"] for t in tb]


def test_workers_augment_differently(synthetic_root):
    """The same image in every slot: with per-worker seeds, the two workers' batches differ."""
    data = synthetic_detection(synthetic_root, "train", detection_train_transform(64))
    same = torch.utils.data.Subset(data, [0] * 8)
    batches = list(make_loader(same, batch_size=4, train=False, workers=2, seed=0))
    assert len(batches) == 2 and not torch.equal(batches[0][0], batches[1][0])


def test_skipped_samples_are_counted_across_worker_processes(synthetic_root, tmp_path):
    import shutil

    root = tmp_path / "copy"
    shutil.copytree(synthetic_root, root)
    broken = sorted(SyntheticPaths(root).coco_images("train").glob("*.jpg"))[:3]
    for path in broken:
        path.write_bytes(b"\xff\xd8 not really a jpeg")
    skip = SkipCounter()
    data = synthetic_detection(root, "train", detection_train_transform(64), skip=skip)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", SkippedSampleWarning)  # the workers warn on their own stderr anyway
        batches = list(make_loader(data, batch_size=4, train=False, workers=2))
    assert sum(len(targets) for _, targets in batches) == 12 - 3
    assert skip.counts() == {"corrupt image": 3}
    assert skip.summary() == "skipped 3 samples (3 corrupt image)"


def test_segmentation_loader(synthetic_root):
    data = synthetic_segmentation(synthetic_root, "train", segmentation_train_transform(crop=96))
    images, masks = next(iter(make_loader(data, 3, train=True, workers=0, collate_fn=collate_segmentation)))
    assert images.shape == (3, 3, 96, 96) and masks.shape == (3, 96, 96) and masks.dtype == torch.int64


def test_distributed_loader_shards(synthetic_root, tmp_path):
    dist.init_process_group("gloo", init_method=f"file://{tmp_path / 'rendezvous'}", rank=0, world_size=1)
    try:
        data = synthetic_detection(synthetic_root, "val")
        loader = make_loader(data, 2, train=True, workers=0, distributed=True, seed=3)
        assert isinstance(loader.sampler, torch.utils.data.DistributedSampler) and len(loader) == 2
        loader.sampler.set_epoch(1)
        assert sum(len(t) for _, t in loader) == 4
    finally:
        dist.destroy_process_group()


def test_dataset_error_survives_a_worker_process_boundary():
    """DataLoader workers pickle exceptions; the error must arrive with its file, problem and kind."""
    import pickle

    from common.errors import DatasetError

    error = pickle.loads(
        pickle.dumps(DatasetError("a/b.jpg", "image file is truncated", "Re-download it", kind="corrupt image"))
    )
    assert str(error) == "a/b.jpg: image file is truncated. Re-download it"
    assert (error.path, error.kind) == ("a/b.jpg", "corrupt image")


def test_data_flags_fail_as_typed_errors_naming_the_flag_or_file(synthetic_root, tmp_path):
    """datasets.sources raises UserError / DatasetError (the entry points print them); it never exits."""
    import argparse
    import json
    import shutil

    from common.errors import DatasetError, UserError
    from datasets.sources import data_root, detection_data, segmentation_data

    def flags(**kw) -> argparse.Namespace:
        return argparse.Namespace(
            **{
                "data": "voc",
                "data_root": None,
                "sbd_root": None,
                "num_classes": None,
                "train_ann": None,
                "train_images": None,
                "val_ann": None,
                "val_images": None,
                **kw,
            }
        )

    with pytest.raises(UserError, match="--data voc needs --data-root"):
        data_root(flags())
    with pytest.raises(UserError, match=f"--data-root {tmp_path / 'none'}: no such folder"):
        segmentation_data(flags(data_root=tmp_path / "none"), None, None)
    with pytest.raises(UserError, match="--data custom needs --train-images, --val-ann, --val-images"):
        detection_data(flags(data="custom", train_ann=tmp_path / "a.json"), None, None)
    coco = synthetic_root / "coco"
    other = json.loads((coco / "annotations/instances_val.json").read_text())
    other["categories"][0]["name"] = "hexagon"
    (tmp_path / "val.json").write_text(json.dumps(other))
    custom = flags(
        data="custom",
        train_ann=coco / "annotations/instances_train.json",
        train_images=coco / "train",
        val_ann=tmp_path / "val.json",
        val_images=coco / "val",
    )
    with pytest.raises(DatasetError, match=f"{tmp_path / 'val.json'}: lists other categories than"):
        detection_data(custom, None, None)
    # A VOC-layout folder is found whether --data-root is the devkit or its VOC2012 folder.
    shutil.copytree(synthetic_root / "voc", tmp_path / "devkit" / "VOC2012")
    for root in (tmp_path / "devkit", tmp_path / "devkit" / "VOC2012"):
        splits = segmentation_data(flags(data_root=root), None, None)
        assert (len(splits.train), len(splits.val)) == (12, 4) and splits.class_names[0] == "background"
