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

    def layer_names(self) -> list[str]:
        """The trainable layers from input to output: the stem, then the stages."""
        return ["conv1", *(info.name for info in self.feature_info)]

    def set_trainable_layers(self, count: int | None) -> None:
        """Train only the last ``count`` of ``layer_names()`` (None: all; 0: none), as torchvision's
        ``trainable_backbone_layers`` does: early layers of a pretrained backbone stay as learnt."""
        names = self.layer_names()
        if count is None:
            count = len(names)
        if not 0 <= count <= len(names):
            raise ValueError(f"trainable layers must be in 0..{len(names)}, got {count}")
        self.requires_grad_(False)
        for name in names[len(names) - count :]:
            getattr(self, name).requires_grad_(True)

    @property
    def feature_channels(self) -> list[int]:
        return [f.channels for f in self.feature_info]

    @property
    def feature_strides(self) -> list[int]:
        return [f.stride for f in self.feature_info]
