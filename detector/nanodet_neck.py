"""NanoDet-m's neck as a Faster R-CNN neck: its PAN and its head's per-level convolution towers, COCO-trained.

NanoDet-m reads its body's three stages through a PAN (a 1x1 lateral convolution per stage to 96 channels, a
top-down pass adding each level's bilinear 2x upsampling to the one below, then a bottom-up pass adding each
level's bilinear 0.5x downsampling to the one above) and then, per level, a tower of two depthwise-separable
blocks (3x3 depthwise, 1x1 pointwise, each followed by LeakyReLU(0.1), BatchNorm folded in) whose output a
1x1 convolution turns into the 80 class scores and the box distributions. Those tower outputs are features its
authors trained on all of COCO to be linearly separable into the 80 classes, which 2,520 images here cannot
teach an FPN; the RPN and RoI heads read them instead of an FPN's (``DetectorConfig.neck = "nanodet_m"``).

``nanodet_neck_state_dict_from_ir`` takes the weights from the IR (the convolutions after the body's, in the
network's order: three laterals, then per level dw, pw, dw, pw and the class/box convolution, which is not
used here); ``tests/detector/test_nanodet_neck.py`` checks the towers against OpenVINO executing the IR.
"""

from collections import OrderedDict
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from backbone.openvino_ir import folded_conv_params, read_ir
from backbone.weights import WeightsError

TOWER_BLOCKS = 2  # depthwise-separable blocks per level in NanoDet-m's head (its stacked_convs)
SLOPE = 0.1  # NanoDet's LeakyReLU


def _separable_block(channels: int) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(channels, channels, 3, padding=1, groups=channels),
        nn.LeakyReLU(SLOPE),
        nn.Conv2d(channels, channels, 1),
        nn.LeakyReLU(SLOPE),
    )


class NanoDetNeck(nn.Module):
    """Stage outputs (an ordered dict, shallow to deep) -> one ``channels``-wide tower output per stage, plus
    "pool" (the deepest max-pooled by 2, as torchvision's FPN adds for the largest anchors)."""

    def __init__(self, in_channels: list[int], channels: int) -> None:
        super().__init__()
        self.laterals = nn.ModuleList(nn.Conv2d(c, channels, 1) for c in in_channels)
        self.towers = nn.ModuleList(
            nn.Sequential(*(_separable_block(channels) for _ in range(TOWER_BLOCKS))) for _ in in_channels
        )

    def forward(self, features: "OrderedDict[str, Tensor]") -> "OrderedDict[str, Tensor]":
        levels = [lateral(x) for lateral, x in zip(self.laterals, features.values(), strict=True)]
        # Resized to the neighbour's size rather than by a factor: inputs padded to a multiple of 32 make the
        # two the same, and any other size still adds up.
        for i in range(len(levels) - 1, 0, -1):
            levels[i - 1] = levels[i - 1] + _resize(levels[i], levels[i - 1])
        for i in range(len(levels) - 1):
            levels[i + 1] = levels[i + 1] + _resize(levels[i], levels[i + 1])
        outputs = [tower(x) for tower, x in zip(self.towers, levels, strict=True)]
        outputs.append(F.max_pool2d(outputs[-1], 1, 2, 0))
        return OrderedDict(zip([*features, "pool"], outputs, strict=True))


def _resize(x: Tensor, like: Tensor) -> Tensor:
    return F.interpolate(x, size=like.shape[-2:], mode="bilinear", align_corners=False)


def nanodet_neck_state_dict_from_ir(xml_path: str | Path, neck: NanoDetNeck, *, body_convs: int) -> dict:
    """A state dict for ``neck`` from the IR's convolutions after its body's first ``body_convs``.

    The IR's order: the three laterals, then per level the tower's convolutions and the class/box one. A
    shape that does not match (another neck width, another body) raises ``WeightsError``.
    """
    graph = read_ir(xml_path)
    convs = graph.convolutions()[body_convs:]
    levels = len(neck.laterals)
    per_level = 2 * TOWER_BLOCKS + 1  # the tower, then the class/box convolution
    if len(convs) != levels + levels * per_level:
        raise WeightsError(
            f"{xml_path}: {len(convs)} convolutions after the body's {body_convs}, NanoDet-m's neck and head "
            f"have {levels + levels * per_level}: not NanoDet-m"
        )
    sources = list(convs[:levels])
    for level in range(levels):
        start = levels + level * per_level
        sources += convs[start : start + 2 * TOWER_BLOCKS]
    targets = [(name, m) for name, m in neck.named_modules() if isinstance(m, nn.Conv2d)]  # laterals, towers
    state = {}
    for (name, conv), ir_conv in zip(targets, sources, strict=True):
        weight, bias = folded_conv_params(graph, ir_conv)
        if tuple(weight.shape) != tuple(conv.weight.shape):
            raise WeightsError(
                f"{xml_path}: convolution {ir_conv.name} is {tuple(weight.shape)}, but neck {name} is "
                f"{tuple(conv.weight.shape)}: not this neck's weights"
            )
        state[f"{name}.weight"] = torch.from_numpy(np.ascontiguousarray(weight, dtype=np.float32))
        state[f"{name}.bias"] = torch.from_numpy(bias.astype(np.float32))
    return state
