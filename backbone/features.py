"""The one feature-extractor contract every backbone family implements.

A backbone exposes ``feature_info`` (one ``FeatureInfo`` per stage output, strides 8, 16, 32) and
``forward_features(x) -> list[Tensor]`` returning those stage outputs in the same order, so a detector
neck is built from ``feature_info`` alone without knowing which family it is plugged into.
"""

from dataclasses import dataclass

from torch import Tensor, nn


@dataclass(frozen=True)
class FeatureInfo:
    name: str  # the stage's module name, e.g. "stage2"
    channels: int
    stride: int  # reduction relative to the input image


class FeatureBackbone(nn.Module):
    """Mixin-style base: subclasses set ``feature_info`` and may override ``forward_features``."""

    feature_info: list[FeatureInfo]

    def forward_features(self, x: Tensor) -> list[Tensor]:
        """The stage outputs; by default for the ShuffleNet layout: ``conv1``, ``maxpool``, then the stages
        named in ``feature_info``, in order. A family with another stem overrides this."""
        x = self.maxpool(self.conv1(x))
        outputs = []
        for info in self.feature_info:
            x = getattr(self, info.name)(x)
            outputs.append(x)
        return outputs

    @property
    def feature_channels(self) -> list[int]:
        return [f.channels for f in self.feature_info]

    @property
    def feature_strides(self) -> list[int]:
        return [f.stride for f in self.feature_info]
