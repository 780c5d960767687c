"""ShuffleNet v1 (Zhang, Zhou, Lin, Sun 2017), written from the paper: the unit of Fig. 2 and the net of Table 1."""

from collections.abc import Callable, Sequence

import torch
from torch import Tensor, nn

from .features import FeatureBackbone, FeatureInfo
from .shuffle import ChannelShuffle

NormLayer = Callable[[int], nn.Module]

# Table 1: output channels of stages 2, 3, 4 at 1x for each group count g.
STAGE_OUT_CHANNELS: dict[int, tuple[int, int, int]] = {
    1: (144, 288, 576),
    2: (200, 400, 800),
    3: (240, 480, 960),
    4: (272, 544, 1088),
    8: (384, 768, 1536),
}
STAGE_REPEATS = (4, 8, 4)  # units per stage; the first of each has stride 2
# conv1 width per scale: the paper keeps 24 at 1x and is silent elsewhere; the authors' re-release uses
# 12 at 0.5x and 48 at 2x, and 12 at 0.25x reproduces the paper's 13 MFLOPs.
STEM_CHANNELS: dict[float, int] = {0.25: 12, 0.5: 12, 1.0: 24, 1.5: 24, 2.0: 48}


def _round_up(value: float, multiple: int) -> int:
    return max(multiple, -(-int(round(value)) // multiple) * multiple)


def _round_nearest(value: float, multiple: int) -> int:
    return max(multiple, int(round(value / multiple)) * multiple)


def stage_widths(groups: int, scale: float) -> tuple[int, tuple[int, int, int]]:
    """conv1 width and stage 2-4 output widths for (g, s).

    Every Table 1 width at 1x is a multiple of 4g, which the unit needs (bottleneck = out / 4 feeds a g-group
    conv); scaled widths are rounded to the nearest multiple of 4g so that holds at every scale. conv1 is
    rounded up to a multiple of g so the first unit's residual branch (out - in channels) splits into g groups
    (the re-release does the same: 16 at g=8, 0.5x).
    """
    if groups not in STAGE_OUT_CHANNELS:
        raise ValueError(f"ShuffleNet v1 groups must be one of {sorted(STAGE_OUT_CHANNELS)}, got {groups}")
    if scale not in STEM_CHANNELS:
        raise ValueError(f"ShuffleNet v1 scale must be one of {sorted(STEM_CHANNELS)}, got {scale}")
    stem = _round_up(STEM_CHANNELS[scale], groups)
    widths = tuple(_round_nearest(c * scale, 4 * groups) for c in STAGE_OUT_CHANNELS[groups])
    return stem, widths  # type: ignore[return-value]


class ShuffleUnit(nn.Module):
    """Fig. 2(b) (stride 1, identity shortcut, add) and Fig. 2(c) (stride 2, avg-pool shortcut, concat).

    1x1 group conv -> BN -> ReLU -> channel shuffle -> 3x3 depthwise conv (stride) -> BN ->
    1x1 group conv -> BN, then add or concat with the shortcut, then ReLU.
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        *,
        stride: int,
        groups: int,
        group_first_conv: bool = True,
        shuffle: bool = True,
        norm_layer: NormLayer = nn.BatchNorm2d,
    ) -> None:
        super().__init__()
        if stride not in (1, 2):
            raise ValueError(f"stride must be 1 or 2, got {stride}")
        if stride == 1 and in_channels != out_channels:
            raise ValueError(f"a stride-1 unit keeps its width, got {in_channels} -> {out_channels}")
        self.stride = stride
        mid = out_channels // 4
        branch_out = out_channels - in_channels if stride == 2 else out_channels
        first_groups = groups if group_first_conv else 1
        self.compress = nn.Sequential(
            nn.Conv2d(in_channels, mid, 1, groups=first_groups, bias=False),
            norm_layer(mid),
            nn.ReLU(inplace=True),
        )
        # A permutation after an ungrouped conv carries no information, so it is skipped there.
        self.shuffle = ChannelShuffle(groups) if shuffle and first_groups > 1 else nn.Identity()
        self.depthwise = nn.Sequential(
            nn.Conv2d(mid, mid, 3, stride=stride, padding=1, groups=mid, bias=False),
            norm_layer(mid),
        )
        self.expand = nn.Sequential(
            nn.Conv2d(mid, branch_out, 1, groups=groups, bias=False),
            norm_layer(branch_out),
        )
        self.shortcut = nn.AvgPool2d(3, stride=2, padding=1) if stride == 2 else nn.Identity()
        self.relu = nn.ReLU(inplace=True)

    def forward(self, x: Tensor) -> Tensor:
        branch = self.expand(self.depthwise(self.shuffle(self.compress(x))))
        if self.stride == 2:
            return self.relu(torch.cat([self.shortcut(x), branch], dim=1))
        return self.relu(x + branch)


class ShuffleNetV1(FeatureBackbone):
    """Table 1: conv1 3x3/2, max pool 3x3/2, stages 2-4 of ShuffleUnits, global pool, FC.

    Input: (N, 3, H, W) images normalized with ImageNet mean/std; any H, W.
    ``forward_features`` returns the stage 2, 3, 4 outputs (strides 8, 16, 32).
    """

    def __init__(
        self,
        groups: int = 3,
        scale: float = 1.0,
        *,
        num_classes: int = 1000,
        shuffle: bool = True,
        norm_layer: NormLayer = nn.BatchNorm2d,
        stage_repeats: Sequence[int] = STAGE_REPEATS,
    ) -> None:
        super().__init__()
        self.groups, self.scale, self.shuffle = groups, scale, shuffle
        stem, widths = stage_widths(groups, scale)
        self.conv1 = nn.Sequential(
            nn.Conv2d(3, stem, 3, stride=2, padding=1, bias=False), norm_layer(stem), nn.ReLU(inplace=True)
        )
        self.maxpool = nn.MaxPool2d(3, stride=2, padding=1)
        in_channels = stem
        self.feature_info = []
        for index, (repeats, out_channels) in enumerate(zip(stage_repeats, widths, strict=True)):
            units = []
            for i in range(repeats):
                units.append(
                    ShuffleUnit(
                        in_channels,
                        out_channels,
                        stride=2 if i == 0 else 1,
                        groups=groups,
                        # Sec. 3.3: conv1's few channels are not grouped in Stage 2's first pointwise conv.
                        group_first_conv=not (index == 0 and i == 0),
                        shuffle=shuffle,
                        norm_layer=norm_layer,
                    )
                )
                in_channels = out_channels
            name = f"stage{index + 2}"
            setattr(self, name, nn.Sequential(*units))
            self.feature_info.append(FeatureInfo(name, out_channels, 2 ** (index + 3)))
        self.fc = nn.Linear(in_channels, num_classes) if num_classes else None
        self._init_weights()

    def _init_weights(self) -> None:
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)
            elif isinstance(m, nn.Linear):
                nn.init.normal_(m.weight, 0, 0.01)
                nn.init.zeros_(m.bias)

    def forward(self, x: Tensor) -> Tensor:
        if self.fc is None:
            raise RuntimeError("this ShuffleNetV1 was built without a classifier (num_classes=0)")
        return self.fc(self.forward_features(x)[-1].mean((2, 3)))

    def remove_classifier(self) -> None:
        """Drop the FC head, e.g. before putting the network under a detector (DDP rejects unused weights)."""
        self.fc = None
