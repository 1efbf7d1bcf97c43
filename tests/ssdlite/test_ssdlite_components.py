"""SSDLite building blocks: TF anchors, box coder, batched matcher, batched loss against a per-image reference,
post-processing."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from tolerances import float32_close, float32_rtol
from torchvision.ops import box_convert, box_iou

from ssdlite.anchors import AnchorGenerator, decode_boxes, encode_boxes, feature_map_sizes, match_anchors
from ssdlite.loss import SSDLiteLoss, object_mask, pad_targets
from ssdlite.postprocess import postprocess

# ---------------------------------------------------------------- anchors


def test_tf_anchor_counts_at_300_and_320():
    generator = AnchorGenerator()
    assert generator.num_anchors_per_location == [3, 6, 6, 6, 6, 6]
    assert feature_map_sizes((300, 300)) == [(19, 19), (10, 10), (5, 5), (3, 3), (2, 2), (1, 1)]
    assert feature_map_sizes((320, 320)) == [(20, 20), (10, 10), (5, 5), (3, 3), (2, 2), (1, 1)]
    assert generator((300, 300)).shape == (1917, 4)
    assert generator.num_anchors((320, 320)) == 20 * 20 * 3 + (100 + 25 + 9 + 4 + 1) * 6 == 2034
    assert AnchorGenerator(reduce_first_map=False).num_anchors((300, 300)) == (361 + 100 + 25 + 9 + 4 + 1) * 6


@pytest.mark.numeric
def test_tf_anchor_values_and_order():
    """Values TF's MultipleGridAnchorGenerator produced for the pedestrian graph ((ymin, xmin, ymax, xmax))."""
    anchors = box_convert(AnchorGenerator()((300, 300)), "cxcywh", "xyxy")[:, [1, 0, 3, 2]]
    tf_first = torch.tensor(
        [
            [-0.02368421, -0.02368421, 0.07631579, 0.07631579],  # cell (0, 0): scale 0.1, ratio 1
            [-0.04439489, -0.11510557, 0.09702647, 0.16773716],  # scale 0.2, ratio 2
            [-0.11510557, -0.04439489, 0.16773716, 0.09702647],  # scale 0.2, ratio 1/2
            [-0.02368421, 0.02894736, 0.07631579, 0.12894736],  # cell (0, 1): next column first
        ]
    )
    tf_last = torch.tensor(
        [
            [0.22575861, -0.3227241, 0.7742414, 1.3227241],  # ratio 3
            [-0.32276523, 0.22577232, 1.3227652, 0.7742277],  # ratio 0.3333, not exactly 1/3
            [0.01266029, 0.01266029, 0.98733974, 0.98733974],  # interpolated scale sqrt(0.95 * 1)
        ]
    )
    # TF computes them in float32 (scale, sqrt of the ratio, size, centre, corners: 8 roundings), ours in float64,
    # rounded to float32 and converted to corners (2 roundings); values up to 1.33; printed to 8 digits (5e-9).
    atol = float32_rtol((8 + 2) // 2) * 1.33 + 5e-9
    torch.testing.assert_close(anchors[:4], tf_first, atol=atol, rtol=0)
    torch.testing.assert_close(anchors[-3:], tf_last, atol=atol, rtol=0)


def test_anchors_are_cached_and_square_in_pixels_on_wide_inputs():
    generator = AnchorGenerator()
    assert generator((300, 300)) is generator((300, 300))
    anchors = generator((200, 400))
    # ratio-1 anchors of the second map: width in pixels equals height in pixels
    first = 13 * 25 * 3
    w, h = anchors[first, 2] * 400, anchors[first, 3] * 200
    assert math.isclose(w, h, rel_tol=float32_rtol(2))  # float32 anchor, float32 product: 2 roundings


# ---------------------------------------------------------------- box coder


@pytest.mark.numeric
def test_box_coder_round_trip_and_scales():
    torch.manual_seed(0)
    anchors = torch.rand(50, 4) * torch.tensor([1.0, 1.0, 0.5, 0.5]) + torch.tensor([0.0, 0.0, 0.05, 0.05])
    xy = torch.rand(50, 2)
    boxes = torch.cat([xy, xy + torch.rand(50, 2) * 0.5 + 0.01], dim=1)
    # encode (difference, quotient, scale, log: 4 float32 roundings per coordinate), decode (6 with the exp and the
    # corners), then compared in the boxes' own magnitude (≤ 1.5)
    round_trip = decode_boxes(encode_boxes(boxes, anchors), anchors)
    torch.testing.assert_close(round_trip, boxes, atol=float32_close(4 + 6, scale=1.5)["atol"], rtol=0)
    anchor = torch.tensor([0.5, 0.5, 0.2, 0.4])
    box = torch.tensor([0.42, 0.3, 0.62, 0.7])  # the anchor moved right by 0.02, same size
    torch.testing.assert_close(encode_boxes(box, anchor), torch.tensor([10 * 0.02 / 0.2, 0.0, 0.0, 0.0]))
    doubled = torch.tensor([0.3, 0.1, 0.7, 0.9])
    torch.testing.assert_close(encode_boxes(doubled, anchor)[2:], torch.full((2,), 5 * math.log(2)))


# ---------------------------------------------------------------- matcher


def _xyxy_anchors(boxes: list[list[float]]) -> torch.Tensor:
    return box_convert(torch.tensor(boxes), "xyxy", "cxcywh")


def test_matcher_threshold_forced_match_and_padding():
    anchors = _xyxy_anchors([[0.0, 0.0, 0.5, 0.5], [0.5, 0.5, 1.0, 1.0], [0.0, 0.5, 0.5, 1.0], [0.5, 0.0, 1.0, 0.5]])
    gt = torch.tensor(
        [
            [
                [0.0, 0.0, 0.5, 0.5],  # IoU 1 with anchor 0
                [0.5, 0.5, 1.0, 0.8],  # IoU 0.6 with anchor 1: matched by threshold
                [0.5, 0.0, 0.6, 0.1],  # IoU 0.04 with anchor 3: only forced
                [0.0, 0.0, 0.0, 0.0],  # padding
            ]
        ]
    )
    valid = torch.tensor([[True, True, True, False]])
    assert match_anchors(gt, valid, anchors).tolist() == [[0, 1, -1, 2]]
    # Without the forced match, anchor 3 (IoU 0.04) would be background; with threshold 0.7 object 1 keeps
    # anchor 1 only because it is that object's best anchor.
    assert match_anchors(gt, valid, anchors, iou_threshold=0.7).tolist() == [[0, 1, -1, 2]]


def test_matcher_lowest_object_wins_a_contested_anchor_and_empty_targets():
    anchors = _xyxy_anchors([[0.0, 0.0, 0.5, 0.5], [0.5, 0.5, 1.0, 1.0]])
    gt = torch.tensor([[[0.0, 0.0, 0.2, 0.2], [0.0, 0.0, 0.3, 0.3]]])  # both prefer anchor 0
    assert match_anchors(gt, torch.tensor([[True, True]]), anchors).tolist() == [[0, -1]]
    empty = match_anchors(torch.zeros(2, 0, 4), torch.zeros(2, 0, dtype=torch.bool), anchors)
    assert empty.tolist() == [[-1, -1], [-1, -1]]


def test_matcher_batched_equals_per_image():
    torch.manual_seed(1)
    anchors = AnchorGenerator()((64, 64))
    boxes = [_random_boxes(n) for n in (5, 0, 2, 7)]
    gt, labels = pad_targets(boxes, [torch.ones(len(b), dtype=torch.long) for b in boxes], (1, 1))
    batched = match_anchors(gt, object_mask(gt, labels), anchors)
    for i, b in enumerate(boxes):
        single = match_anchors(b[None], torch.ones(1, len(b), dtype=torch.bool), anchors)[0]
        assert torch.equal(batched[i], single)


# ---------------------------------------------------------------- loss


def _random_boxes(n: int) -> torch.Tensor:
    xy = torch.rand(n, 2) * 0.7
    return torch.cat([xy, xy + torch.rand(n, 2) * 0.3 + 0.02], dim=1)


def _reference_loss(box_regression, class_logits, anchors, boxes, labels, classification, ratio=3, min_neg=3):
    """Straightforward per-image SSD loss: explicit loops, TF's matching rules, mining by sorting each image."""
    anchors_xyxy = box_convert(anchors, "cxcywh", "xyxy")
    box_total, cls_total, positives = 0.0, 0.0, 0
    for i in range(len(boxes)):
        matches = torch.full((anchors.shape[0],), -1)
        if len(boxes[i]):
            iou = box_iou(boxes[i], anchors_xyxy)
            best, best_idx = iou.max(0)
            matches = torch.where(best >= 0.5, best_idx, matches)
            for m in reversed(range(len(boxes[i]))):  # lowest index claims last, so it wins
                matches[iou[m].argmax()] = m
        pos = matches >= 0
        positives += int(pos.sum())
        if pos.any():
            target = encode_boxes(boxes[i][matches[pos]], anchors[pos])
            box_total = box_total + F.smooth_l1_loss(box_regression[i][pos], target, reduction="sum")
        cls_target = torch.zeros(anchors.shape[0], dtype=torch.long)
        cls_target[pos] = labels[i][matches[pos]]
        if classification == "softmax":
            loss = F.cross_entropy(class_logits[i], cls_target, reduction="none")
        else:
            one_hot = F.one_hot(cls_target, class_logits.shape[-1]).float()
            loss = F.binary_cross_entropy_with_logits(class_logits[i], one_hot, reduction="none").sum(-1)
        neg_losses = loss[~pos].sort(descending=True).values
        num_neg = max(ratio * int(pos.sum()), min_neg)
        cls_total = cls_total + loss[pos].sum() + neg_losses[:num_neg].sum()
    n = max(positives, 1)
    return box_total / n, cls_total / n


@pytest.mark.numeric
@pytest.mark.parametrize("classification", ["softmax", "sigmoid"])
def test_batched_loss_matches_per_image_reference(classification):
    torch.manual_seed(2)
    anchors = AnchorGenerator()((96, 96))
    counts = (3, 0, 6, 1)
    boxes = [_random_boxes(n) for n in counts]
    labels = [torch.randint(1, 5, (n,)) for n in counts]
    box_regression = torch.randn(len(counts), anchors.shape[0], 4)
    class_logits = torch.randn(len(counts), anchors.shape[0], 5)
    gt_boxes, gt_labels = pad_targets([b * 96 for b in boxes], labels, (96, 96))
    out = SSDLiteLoss(classification)(box_regression, class_logits, anchors, gt_boxes, gt_labels)
    ref_box, ref_cls = _reference_loss(box_regression, class_logits, anchors, boxes, labels, classification)
    # the same per-anchor losses (a few float32 operations each) summed over the batch's anchors in another order
    close = float32_close(4, len(counts) * anchors.shape[0])
    torch.testing.assert_close(out["box_loss"], torch.as_tensor(ref_box), **close)
    torch.testing.assert_close(out["cls_loss"], torch.as_tensor(ref_cls), **close)
    torch.testing.assert_close(out["loss"], out["box_loss"] + out["cls_loss"])


def test_loss_rejects_labels_the_model_does_not_have():
    anchors = AnchorGenerator()((64, 64))
    targets = pad_targets([torch.tensor([[1.0, 1.0, 30.0, 30.0]])], [torch.tensor([21])], (64, 64))
    with pytest.raises(ValueError, match="21 does not exist in a model with 21 classes"):
        SSDLiteLoss("softmax")(torch.zeros(1, len(anchors), 4), torch.zeros(1, len(anchors), 21), anchors, *targets)


def test_pad_targets_normalises_and_pads_with_zero_boxes():
    boxes, labels = pad_targets(
        [torch.tensor([[10.0, 20.0, 30.0, 40.0]]), torch.zeros(0, 4)], [torch.tensor([3]), torch.zeros(0)], (100, 50)
    )
    torch.testing.assert_close(boxes[0, 0], torch.tensor([0.2, 0.2, 0.6, 0.4]))
    assert boxes.shape == (2, 1, 4) and labels.tolist() == [[3], [0]] and not boxes[1].any()


# ---------------------------------------------------------------- post-processing


def _post(box_regression, class_logits, anchors, sizes, **kw):
    args = dict(classification="sigmoid", score_threshold=0.3, nms_iou=0.5, pre_nms_topk=100, detections_per_image=10)
    return postprocess(box_regression, class_logits, anchors, sizes, **{**args, **kw})


def test_postprocess_threshold_nms_per_class_and_scaling():
    anchors = _xyxy_anchors([[0.1, 0.1, 0.5, 0.5], [0.12, 0.1, 0.52, 0.5], [0.6, 0.6, 0.9, 0.9], [0.0, 0.0, 0.2, 0.2]])
    logits = torch.full((1, 4, 3), -10.0)
    logits[0, 0, 1] = 3.0  # class 1, best
    logits[0, 1, 1] = 2.0  # class 1, overlaps anchor 0 → suppressed
    logits[0, 1, 2] = 1.0  # class 2 on the same box: other class, kept
    logits[0, 2, 2] = -2.0  # sigmoid 0.12 < 0.3: dropped
    logits[0, 3, 0] = 5.0  # background only: never reported
    (det,) = _post(torch.zeros(1, 4, 4), logits, anchors, [(200, 100)])
    assert det["labels"].tolist() == [1, 2]
    torch.testing.assert_close(det["scores"], torch.sigmoid(torch.tensor([3.0, 1.0])))
    torch.testing.assert_close(det["boxes"][0], torch.tensor([10.0, 20.0, 50.0, 100.0]))  # x by w=100, y by h=200


def test_postprocess_top_k_softmax_clipping_and_batches():
    anchors = _xyxy_anchors([[0.1 * i, 0.0, 0.1 * i + 0.05, 0.05] for i in range(8)] + [[0.9, 0.9, 1.3, 1.3]])
    logits = torch.zeros(2, 9, 2)
    logits[0, :, 1] = torch.arange(9.0)  # every anchor a detection, rising scores
    results = _post(
        torch.zeros(2, 9, 4),
        logits,
        anchors,
        [(10, 10), (20, 20)],
        classification="softmax",
        score_threshold=0.6,
        detections_per_image=3,
    )
    assert len(results) == 2 and len(results[1]["scores"]) == 0  # image 1: all scores 0.5
    det = results[0]
    assert len(det["scores"]) == 3 and bool((det["scores"][:-1] >= det["scores"][1:]).all())
    torch.testing.assert_close(det["boxes"][0], torch.tensor([9.0, 9.0, 10.0, 10.0]))  # clipped to the image
