"""Where the tests' numeric bounds come from.

Two computations of the same float32 result differ when their kernels add in another order (batch sizes, SIMD
widths, ATen's default/avx2/avx512 paths, oneDNN, ONNX Runtime, XNNPACK); int8 runtimes differ by their rounding.
Each helper turns one such source of difference into a bound, so that a test states the computation it compares,
not the largest difference one machine happened to show.
"""

from __future__ import annotations

import math

FLOAT32_EPS = 2.0**-23  # spacing of float32 numbers at 1.0 (torch.finfo(torch.float32).eps); a rounding is ≤ eps/2


def float32_rtol(depth: int, terms: int = 1) -> float:
    """Relative difference between two float32 evaluations of a computation `depth` operations deep whose
    operations each add up to `terms` products (a layer's fan-in: in_channels × kernel area, or the pixels of an
    average).

    One rounding moves a result by at most eps/2, so with terms=1 this is the worst case of `depth` elementwise
    roundings on each side. A sum of n terms added in another order moves by at most ~n·eps of the terms'
    magnitude; its roundings are a random walk, so two orders typically differ by ~0.4·sqrt(n)·eps, and sqrt(n)·eps
    is 2.5 of those standard deviations (kernels that add in SIMD lanes or blocks do better still). Layers in a row
    add their relative errors: taken linearly in the depth, not as sqrt(depth) for independent errors, which gives
    a further factor sqrt(depth) of margin for the largest of many outputs and for layers whose gain exceeds 1.
    """
    return depth * math.sqrt(terms) * FLOAT32_EPS


def float32_close(depth: int, terms: int = 1, scale: float = 1.0) -> dict[str, float]:
    """rtol and atol (keywords of torch.testing.assert_close and np.testing.assert_allclose) for two float32
    evaluations of the computation float32_rtol describes.

    A sum's rounding is relative to the magnitude of its terms, not of its result, so an output that cancels to
    near zero keeps an absolute error of the size of its neighbours: atol = rtol × `scale`, the magnitude of the
    compared values (e.g. the reference's largest |value|).

    A training run is such a computation too: s optimiser steps through a network of L layers are s·(2L+1)
    operations deep (forward, the two products of each layer's backward, the update), and weight updates that
    shrink (SGD's learning rate below 2/curvature) do not amplify earlier differences.
    """
    rtol = float32_rtol(depth, terms)
    return {"rtol": rtol, "atol": rtol * scale}


def layer_stats(model) -> tuple[int, int]:
    """(depth, terms) of a network for float32_rtol: the number of its convolution and linear layers, which no path
    through it exceeds (parallel branches count too, which only adds margin), and their largest fan-in."""
    from torch import nn

    layers = [m for m in model.modules() if isinstance(m, (nn.Conv2d, nn.Linear))]
    fan_in = [m.in_features if isinstance(m, nn.Linear) else m.weight[0].numel() for m in layers]
    return len(layers), max(fan_in)


def int8_bound(step: float, file_steps: float, kernel_steps: float = 1.0) -> float:
    """The most a float model may differ from an int8 (or uint8) file's output whose quantisation step is `step`.

    file_steps: the file's own rounding of weights and activations, as the float model shows it on the test's
    inputs; it is a property of the file and the input, the same on every CPU. kernel_steps: int8 kernels (XNNPACK
    picks per instruction set) add exactly in integers and requantise with round-to-nearest; their variants differ
    by at most one step of a requantised tensor.
    """
    return (file_steps + kernel_steps) * step


def softmax_bound(logit_bound: float) -> float:
    """The most a softmax probability moves when no logit moves by more than `logit_bound`: a row of the softmax
    Jacobian sums in absolute value to 2·p·(1-p) ≤ 1/2."""
    return 0.5 * logit_bound
