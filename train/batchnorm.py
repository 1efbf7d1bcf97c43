"""BatchNorm handling: freezing (small per-device batches, fine-tuning imported weights) and recomputing running
statistics before evaluation."""

from __future__ import annotations

from typing import Any, Iterable, Iterator

import torch
import torch.distributed as dist
from torch import nn
from torch.optim.swa_utils import update_bn
from torchvision.ops.misc import FrozenBatchNorm2d

from common.distributed import all_reduce_sum


def freeze_batchnorm(module: nn.Module) -> nn.Module:
    """Replace every BatchNorm2d in `module` (in place) by a FrozenBatchNorm2d holding the same statistics."""
    for name, child in module.named_children():
        if isinstance(child, nn.BatchNorm2d):
            frozen = FrozenBatchNorm2d(child.num_features, eps=child.eps)
            frozen.weight.copy_(child.weight.detach())
            frozen.bias.copy_(child.bias.detach())
            frozen.running_mean.copy_(child.running_mean)
            frozen.running_var.copy_(child.running_var)
            setattr(module, name, frozen)
        else:
            freeze_batchnorm(child)
    return module


@torch.no_grad()
def recalibrate_batchnorm(model: nn.Module, batches: Iterable[Any], device: torch.device, distributed: bool) -> int:
    """Recompute every BatchNorm's running statistics for the weights `model` has now ("precise BN").

    Running averages lag the weights: after a short or fast-moving run they describe earlier weights, and an eval-mode
    model can be far worse than its training loss says (a 64-image SSDLite fit to loss 0.08 scored AP50 0.002 with
    its running statistics and 0.994 once recomputed). `batches` yields (images, ...) tuples; the mean over processes
    is taken so every rank evaluates the same model. Returns the number of batches used (0 leaves `model` as it was).
    """
    if not any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in model.modules()):
        return 0
    saved = {k: v.clone() for k, v in model.state_dict().items() if "running_" in k}
    used = 0

    def images() -> Iterator[torch.Tensor]:
        nonlocal used
        for batch in batches:
            if batch is not None and len(batch[0]) > 1:  # a skip policy may leave none or one (BatchNorm needs 2)
                used += 1
                yield batch[0].to(device, non_blocking=True)

    update_bn(images(), model)
    if used == 0:  # nothing came: keep the statistics we had rather than the reset ones
        model.load_state_dict(saved, strict=False)
        return 0
    if distributed:
        for module in model.modules():
            if isinstance(module, nn.modules.batchnorm._BatchNorm):
                for stats in (module.running_mean, module.running_var):
                    stats.copy_(all_reduce_sum(stats.clone()) / dist.get_world_size())
    return used
