"""Swapping a built backbone's activation and normalisation, as pretrained weights from other sources need."""

from torch import nn
from torchvision.ops.misc import FrozenBatchNorm2d

ACTIVATIONS = {
    "relu": lambda: nn.ReLU(inplace=True),
    # NanoDet's ShuffleNet v2 was trained with LeakyReLU(0.1): its weights need the same activation.
    "leaky_relu": lambda: nn.LeakyReLU(0.1, inplace=True),
}


def set_activation(module: nn.Module, activation: str) -> nn.Module:
    """Replace every ReLU in ``module`` by ``ACTIVATIONS[activation]``, in place; returns ``module``."""
    if activation not in ACTIVATIONS:
        raise ValueError(f"unknown activation {activation!r}; known: {', '.join(ACTIVATIONS)}")
    if activation == "relu":
        return module
    for name, child in module.named_children():
        if isinstance(child, nn.ReLU):
            setattr(module, name, ACTIVATIONS[activation]())
        else:
            set_activation(child, activation)
    return module


def freeze_batchnorm(module: nn.Module) -> nn.Module:
    """Replace every BatchNorm2d by torchvision's FrozenBatchNorm2d with the same statistics, in place.

    A detector trains on a few images per step, too few for batch statistics; pretrained statistics then stay
    as they were learnt (torchvision's detection builders do the same with pretrained backbones).
    """
    for name, child in module.named_children():
        if isinstance(child, nn.BatchNorm2d):
            frozen = FrozenBatchNorm2d(child.num_features, eps=child.eps)
            for key in ("weight", "bias", "running_mean", "running_var"):
                getattr(frozen, key).copy_(getattr(child, key).detach())
            setattr(module, name, frozen)
        else:
            freeze_batchnorm(child)
    return module
