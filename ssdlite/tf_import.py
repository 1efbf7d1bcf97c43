"""TF Object Detection API SSDLite-MobileNetV2 frozen graphs → SSDLite models, without TensorFlow.

Every weight of the graph must land in exactly one of our parameters or BN buffers and every one of ours must be
filled; anything else (a leftover, a gap, a shape or setting that disagrees with the preset) is a WeightsError that
names the file. The command line is tools/import_tf_detection.py; named weights (ssdlite/named_weights.py) use it too.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Iterator, Sequence

import torch
from torch import nn

from backbone.layers import ConvBNAct
from backbone.tf.graphdef import BATCH_NORM_OPS, GraphWeights
from backbone.tf.layout import graph_conv_weight
from common.errors import WeightsError
from ssdlite.anchors import NUM_FEATURE_MAPS
from ssdlite.model import SSDLite, build_ssdlite
from ssdlite.presets import COCO_CLASS_NAMES, PRESETS, SSDLITE_TF_COCO300, SSDLitePreset

FEATURES = "FeatureExtractor/MobilenetV2"
# TF's box predictor emits (ty, tx, th, tw) per anchor, our head (tx, ty, tw, th).
TF_TO_OURS_BOX_ORDER = (1, 0, 3, 2)


def layer_scopes(model: SSDLite) -> Iterator[tuple[str, nn.Module]]:
    """(TF variable scope, our module) for every layer with weights, in network order."""
    backbone = model.backbone
    yield f"{FEATURES}/Conv", backbone.stem
    for i, block in enumerate(backbone.blocks):
        scope = f"{FEATURES}/expanded_conv" + (f"_{i}" if i else "")
        if isinstance(block.expand, ConvBNAct):
            yield f"{scope}/expand", block.expand
        yield f"{scope}/depthwise", block.depthwise
        yield f"{scope}/project", block.project
    yield f"{FEATURES}/Conv_1", backbone.last_conv
    for k, extra in enumerate(model.extras, start=2):
        mid, depth = extra.reduce.conv.out_channels, extra.expand.conv.out_channels
        yield f"{FEATURES}/layer_19_1_Conv2d_{k}_1x1_{mid}", extra.reduce
        yield f"{FEATURES}/layer_19_2_Conv2d_{k}_3x3_s2_{depth}_depthwise", extra.depthwise
        yield f"{FEATURES}/layer_19_2_Conv2d_{k}_3x3_s2_{depth}", extra.expand
    for i, (box, cls) in enumerate(zip(model.head.box, model.head.cls, strict=True)):
        for name, branch in (("BoxEncodingPredictor", box), ("ClassPredictor", cls)):
            yield f"BoxPredictor_{i}/{name}_depthwise", branch.depthwise
            yield f"BoxPredictor_{i}/{name}", branch.conv


def _box_channel_permutation(out_channels: int) -> list[int]:
    return [a * 4 + TF_TO_OURS_BOX_ORDER[j] for a in range(out_channels // 4) for j in range(4)]


def graph_state_dict(weights: GraphWeights, model: SSDLite) -> dict[str, torch.Tensor]:
    """Our state dict entries, each taken from the graph weight it corresponds to."""
    state: dict[str, torch.Tensor] = {}
    prefix = {id(m): name for name, m in model.named_modules()}
    for scope, module in layer_scopes(model):
        key = prefix[id(module)]
        if isinstance(module, ConvBNAct):
            depthwise = module.conv.groups > 1
            kernel = weights.take(f"{scope}/{'depthwise_weights' if depthwise else 'weights'}")
            state[f"{key}.conv.weight"] = graph_conv_weight(kernel, depthwise)
            for ours, theirs in (
                ("weight", "gamma"),
                ("bias", "beta"),
                ("running_mean", "moving_mean"),
                ("running_var", "moving_variance"),
            ):
                state[f"{key}.bn.{ours}"] = torch.from_numpy(weights.take(f"{scope}/BatchNorm/{theirs}"))
        else:  # a predictor's 1×1 conv with bias
            weight = graph_conv_weight(weights.take(f"{scope}/weights"), depthwise=False)
            bias = torch.from_numpy(weights.take(f"{scope}/biases"))
            if "BoxEncodingPredictor" in scope:
                perm = _box_channel_permutation(weight.shape[0])
                weight, bias = weight[perm], bias[perm]
            state[f"{key}.weight"], state[f"{key}.bias"] = weight, bias
    return state


def _anchors_per_location(weights: GraphWeights, source: str) -> list[int]:
    counts = []
    for i in range(NUM_FEATURE_MAPS):
        name = f"BoxPredictor_{i}/BoxEncodingPredictor/weights"
        if name not in weights:
            break
        counts.append(weights.shape(name)[-1] // 4)
    if not counts:
        raise WeightsError(
            f"{source}: no SSDLite box predictor weights (BoxPredictor_0/BoxEncodingPredictor/weights): "
            "not an SSD detection graph"
        )
    return counts


def _check_graph_fits(weights: GraphWeights, preset: SSDLitePreset, model: SSDLite, source: str) -> None:
    """Settings that live outside the weights but must agree with the preset for the import to be exact."""
    hint = f"the graph does not fit preset {preset.name!r} (choose another with --preset: {', '.join(PRESETS)})"
    for node in [n for op in BATCH_NORM_OPS for n in weights.ops(op)]:
        eps = node.attr["epsilon"].f
        if not math.isclose(eps, preset.bn_eps, rel_tol=1e-5):
            raise WeightsError(f"{source}: {node.name} uses BN epsilon {eps:g}, preset {preset.bn_eps:g}: {hint}")
    resize = weights.constant("Preprocessor/map/while/ResizeImage/stack")
    if resize is not None and tuple(int(v) for v in resize) != tuple(preset.image_size):
        raise WeightsError(
            f"{source}: the graph resizes to {resize.tolist()}, preset to {list(preset.image_size)}: {hint}"
        )
    scores = weights.nodes.get("Postprocessor/convert_scores")
    if scores is not None and scores.op.lower() != preset.classification:
        raise WeightsError(f"{source}: the graph scores with {scores.op}, preset with {preset.classification}: {hint}")
    ours = model.anchor_generator.num_anchors_per_location
    theirs = _anchors_per_location(weights, source)
    if theirs != ours:
        raise WeightsError(f"{source}: anchors per cell {theirs} in the graph, {ours} in the preset: {hint}")


def import_graph(
    path: str | Path, preset: SSDLitePreset = SSDLITE_TF_COCO300, labels: Sequence[str] | None = None
) -> SSDLite:
    """The SSDLite model holding the weights of the frozen graph in `path` (`.pb` or model-zoo `.tar.gz`), in eval
    mode, named by `labels` (class names without the background; see `default_class_names`)."""
    source = str(path)
    weights = GraphWeights.from_file(path)
    stem = f"{FEATURES}/Conv/weights"
    if stem not in weights:
        found = next(iter(weights), None)
        raise WeightsError(
            f"{source}: no {stem!r} weight, so not a TF Object Detection API SSD MobileNetV2 graph"
            + (f" (its first weight is {found!r}: a classification or segmentation graph?)" if found else "")
        )
    anchors_first_map = _anchors_per_location(weights, source)[0]
    num_classes = weights.shape("BoxPredictor_0/ClassPredictor/weights")[-1] // anchors_first_map
    if num_classes < 2:
        raise WeightsError(f"{source}: BoxPredictor_0/ClassPredictor predicts {num_classes} classes, SSD needs 2+")
    model = build_ssdlite(preset, class_names=default_class_names(num_classes, labels))
    _check_graph_fits(weights, preset, model, source)

    state = graph_state_dict(weights, model)
    weights.finish()
    own = {k: v for k, v in model.state_dict().items() if not k.endswith("num_batches_tracked")}
    missing = sorted(own.keys() - state.keys())
    if missing:
        raise WeightsError(f"{source}: {len(missing)} of our tensors got no graph weight, e.g. {missing[:3]}")
    wrong = [
        f"{k}: graph {list(state[k].shape)} vs model {list(v.shape)}"
        for k, v in own.items()
        if state[k].shape != v.shape
    ]
    if wrong:
        raise WeightsError(
            f"{source}: {len(wrong)} shapes differ from preset {preset.name!r} (another width?), e.g. {wrong[0]}"
        )
    model.load_state_dict(state, strict=False)
    return model.eval()


def default_class_names(num_classes: int, labels: Sequence[str] | None) -> list[str]:
    """Background + `labels`, or COCO's 91 names for a 91-class graph, or numbered names otherwise."""
    if labels:
        if len(labels) != num_classes - 1:
            raise WeightsError(
                f"{len(labels)} class names (--labels) but the graph has {num_classes - 1} classes besides the "
                "background"
            )
        return ["background", *labels]
    if num_classes == len(COCO_CLASS_NAMES):
        return list(COCO_CLASS_NAMES)
    return ["background", *(f"class_{i}" for i in range(1, num_classes))]
