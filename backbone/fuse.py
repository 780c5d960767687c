"""Folding inference-time BatchNorm into the convolution before it, for exports and engines that would
otherwise run it as separate multiply and add nodes (an exported FrozenBatchNorm2d is two elementwise ops)."""

import copy

import torch
from torch import nn
from torchvision.ops.misc import FrozenBatchNorm2d

_NORMS = (nn.BatchNorm2d, FrozenBatchNorm2d)


def fold_conv_norm(conv: nn.Conv2d, norm: nn.Module) -> nn.Conv2d:
    """A conv with bias computing ``norm(conv(x))`` with ``norm``'s running statistics."""
    scale = norm.weight / torch.sqrt(norm.running_var + norm.eps)
    fused = nn.Conv2d(
        conv.in_channels,
        conv.out_channels,
        conv.kernel_size,
        conv.stride,
        conv.padding,
        conv.dilation,
        conv.groups,
        bias=True,
        padding_mode=conv.padding_mode,
    )
    bias = conv.bias if conv.bias is not None else torch.zeros_like(norm.running_mean)
    with torch.no_grad():
        fused.weight.copy_(conv.weight * scale.reshape(-1, 1, 1, 1))
        fused.bias.copy_((bias - norm.running_mean) * scale + norm.bias)
    return fused.to(conv.weight.device)


def fold_batchnorm(module: nn.Module) -> nn.Module:
    """A copy of ``module`` (in eval mode) where every Conv2d directly followed by a BatchNorm in an
    ``nn.Sequential`` carries the norm, which becomes an Identity. Same outputs within float rounding."""
    module = copy.deepcopy(module).eval()
    for parent in module.modules():
        if not isinstance(parent, nn.Sequential):
            continue
        names = list(parent._modules)
        for first, second in zip(names, names[1:], strict=False):
            conv, norm = parent._modules[first], parent._modules[second]
            if isinstance(conv, nn.Conv2d) and isinstance(norm, _NORMS):
                parent._modules[first] = fold_conv_norm(conv, norm)
                parent._modules[second] = nn.Identity()
    return module
