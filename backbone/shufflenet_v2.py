"""ShuffleNet v2 (Ma et al. 2018): torchvision's implementation, given the shared feature interface.

Subclassing keeps torchvision's module names, so a state dict saved from ``torchvision.models.shufflenet_v2_*``
loads into this class unchanged.
"""

from torch import Tensor
from torchvision.models.shufflenetv2 import ShuffleNetV2 as _TorchvisionShuffleNetV2

from .features import FeatureBackbone, FeatureInfo

STAGE_REPEATS = (4, 8, 4)
# torchvision's widths: conv1, stages 2-4, conv5.
STAGE_OUT_CHANNELS: dict[float, tuple[int, int, int, int, int]] = {
    0.5: (24, 48, 96, 192, 1024),
    1.0: (24, 116, 232, 464, 1024),
    1.5: (24, 176, 352, 704, 1024),
    2.0: (24, 244, 488, 976, 2048),
}


class ShuffleNetV2(_TorchvisionShuffleNetV2, FeatureBackbone):
    def __init__(self, scale: float = 1.0, *, num_classes: int = 1000) -> None:
        if scale not in STAGE_OUT_CHANNELS:
            raise ValueError(f"ShuffleNet v2 scale must be one of {sorted(STAGE_OUT_CHANNELS)}, got {scale}")
        channels = STAGE_OUT_CHANNELS[scale]
        super().__init__(list(STAGE_REPEATS), list(channels), num_classes=num_classes or 1000)
        self.scale = scale
        self.feature_info = [FeatureInfo(f"stage{i + 2}", channels[i + 1], 2 ** (i + 3)) for i in range(3)]
        if not num_classes:
            self.remove_classifier()

    def forward(self, x: Tensor) -> Tensor:
        if self.fc is None:
            raise RuntimeError("this ShuffleNetV2 was built without a classifier (num_classes=0)")
        return self.fc(self.conv5(self.forward_features(x)[-1]).mean((2, 3)))

    def remove_classifier(self) -> None:
        """Drop conv5 and the FC head, which a detector does not use."""
        self.conv5 = None
        self.fc = None
