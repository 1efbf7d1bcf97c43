"""COCO and VOC readers, the embedded synthetic dataset, albumentations pipelines and batching.

Import from the submodules (this package imports nothing itself, so `import datasets.errors` stays cheap):
errors (DatasetError, SkipCounter), images (read_image), coco (CocoDetection), voc (VOCDetection,
voc_detection_union), segmentation (SegmentationDataset and the VOC/SBD/trainaug/COCO sample builders),
synthetic (generate, synthetic_detection, synthetic_segmentation), transforms (the albumentations pipelines,
normalisation), loading (collate functions, pad_targets, Loader, make_loader). See docs/datasets.md.
"""
