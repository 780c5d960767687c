"""ShuffleNet backbones with one feature-extractor interface (see features.py)."""

from .features import FeatureBackbone, FeatureInfo
from .registry import BACKBONES, BackboneSpec, create_backbone
from .shuffle import ChannelShuffle, channel_shuffle
from .shufflenet_v1 import ShuffleNetV1, ShuffleUnit
from .shufflenet_v2 import ShuffleNetV2
from .weights import WeightsError, load_weights, read_state_dict

__all__ = [
    "BACKBONES",
    "BackboneSpec",
    "ChannelShuffle",
    "FeatureBackbone",
    "FeatureInfo",
    "ShuffleNetV1",
    "ShuffleNetV2",
    "ShuffleUnit",
    "WeightsError",
    "channel_shuffle",
    "create_backbone",
    "load_weights",
    "read_state_dict",
]
