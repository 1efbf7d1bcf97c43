"""TensorFlow's weight layouts and BatchNorm conventions, in one place for every importer.

Frozen graphs keep convolution kernels HWIO (depthwise HWC1) and BatchNorm unfolded; TFLite keeps them OHWI
(depthwise 1HWC) with BatchNorm folded into the convolution's weight and bias. A folded pair becomes our conv +
a BatchNorm that only adds the bias, so imported models keep the suite's layer structure (and can be fine-tuned).
"""

from __future__ import annotations

import numpy as np
import torch

TF_BN_EPS = 1e-3  # TF-slim's BatchNorm epsilon; kept in imported configs so fine-tuning behaves like TF


def graph_conv_weight(kernel: np.ndarray, depthwise: bool) -> torch.Tensor:
    """A frozen graph's Conv2D kernel HWIO (DepthwiseConv2dNative HWC1) → PyTorch OIHW (depthwise C1HW)."""
    order = (2, 3, 0, 1) if depthwise else (3, 2, 0, 1)
    return torch.from_numpy(np.ascontiguousarray(kernel.transpose(order)))


def tflite_conv_weight(kernel: np.ndarray, depthwise: bool) -> torch.Tensor:
    """A TFLite CONV_2D kernel [out, kh, kw, in] → [out, in, kh, kw]; DEPTHWISE_CONV_2D [1, kh, kw, c] →
    [c, 1, kh, kw]."""
    order = (3, 0, 1, 2) if depthwise else (0, 3, 1, 2)
    return torch.from_numpy(np.ascontiguousarray(kernel.transpose(order)))


def fold_batch_norm(
    weight: torch.Tensor, gamma: torch.Tensor, beta: torch.Tensor, mean: torch.Tensor, var: torch.Tensor, eps: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """(weight, bias) of a convolution followed by BatchNorm, as TFLite's converter folds them."""
    scale = gamma / torch.sqrt(var + eps)
    return weight * scale.view(-1, 1, 1, 1), beta - mean * scale


def bias_as_batch_norm(bias: torch.Tensor, eps: float) -> dict[str, torch.Tensor]:
    """State of a BatchNorm (epsilon `eps`) that adds `bias` and nothing else: (x - 0) / sqrt(1 - eps + eps) + bias."""
    return {
        "weight": torch.ones_like(bias),
        "bias": bias,
        "running_mean": torch.zeros_like(bias),
        "running_var": torch.full_like(bias, 1 - eps),
    }
