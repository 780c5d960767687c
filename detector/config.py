"""Named detector configurations: plain data, in this one module.

A configuration says everything needed to rebuild the network (the checkpoint stores it whole); a CLI flag
may override a field through ``get_config(name, **overrides)``, and nothing else derives one. Every
configuration is checked when it is made (types and ranges, ``ConfigError`` naming the field), so a bad
override fails before a model is built, not at the first evaluation. Configurations compare and hash by value.
"""

import types
import typing
from dataclasses import asdict, dataclass, fields, replace
from pathlib import Path

MODELS_DIR = Path(__file__).resolve().parents[1] / "models"
# The bundled COCO model (CONFIGS["coco_edge"], made by `make coco-model`), used when no checkpoint is given,
# and its ONNX export (python -m tools.export), which the service runs by default: same detections, about
# twice the speed and a fifth of the memory on a CPU (README, "Which engine: measured").
DEFAULT_CHECKPOINT = MODELS_DIR / "coco.pt"
DEFAULT_EXPORT = DEFAULT_CHECKPOINT.with_suffix(".onnx")
# The synthetic-shapes model (CONFIGS["edge"], `make demo-model`): fast tests and the synthetic val split.
DEMO_CHECKPOINT = MODELS_DIR / "demo.pt"
DEMO_EXPORT = DEMO_CHECKPOINT.with_suffix(".onnx")

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


@dataclass(frozen=True)
class DetectorConfig:
    name: str
    backbone: str  # a key of backbone.BACKBONES
    # Neck over stages 2-4 (strides 8/16/32) plus a max-pooled level (64): torchvision's FeaturePyramidNetwork
    # ("fpn"), the same with depthwise-separable output convolutions ("fpn_separable"), or NanoDet-m's PAN and
    # head towers ("nanodet_m", 96 channels, weights from its IR); whether it trains (False keeps pretrained
    # neck weights as they are).
    neck: str = "fpn"
    neck_channels: int = 256
    trainable_neck: bool = True
    # One tuple per FPN level (4 levels); every level needs the same number of sizes.
    anchor_sizes: tuple[tuple[int, ...], ...] = ((32,), (64,), (128,), (256,))
    aspect_ratios: tuple[float, ...] = (0.5, 1.0, 2.0)
    # Input: the short side and the long side's cap at test time (torchvision's rule: the smaller scale wins, so
    # min_size == max_size means "long side max_size"), the short sides sampled per batch in training
    # (multi-scale) and the long side's cap in training (None: max_size).
    min_size: int = 600
    max_size: int = 1000
    train_min_sizes: tuple[int, ...] = (600,)
    train_max_size: int | None = None
    image_mean: tuple[float, float, float] = IMAGENET_MEAN
    image_std: tuple[float, float, float] = IMAGENET_STD
    # RPN: its head's 3x3 convolution plain ("conv", torchvision's) or depthwise-separable ("separable")
    rpn_head: str = "conv"
    rpn_pre_nms_top_n_train: int = 2000
    rpn_post_nms_top_n_train: int = 2000
    rpn_pre_nms_top_n_test: int = 1000
    rpn_post_nms_top_n_test: int = 1000
    rpn_batch_size_per_image: int = 256
    # RoI head: MultiScaleRoIAlign on the three backbone levels, then an MLP of box_head_width.
    roi_output_size: int = 7
    roi_sampling_ratio: int = 2
    box_head_width: int = 1024
    box_batch_size_per_image: int = 512
    box_score_thresh: float = 0.05
    box_nms_thresh: float = 0.5
    detections_per_img: int = 100
    # Backbone: its activation ("relu", or NanoDet's "leaky_relu"), frozen BatchNorm (for pretrained weights),
    # and how many of its layers (stem, stage2, stage3, stage4) train, counted from the top (None: all).
    backbone_activation: str = "relu"
    frozen_batchnorm: bool = False
    trainable_backbone_layers: int | None = None

    def __post_init__(self) -> None:
        validate(self)

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> "DetectorConfig":
        data = dict(data)
        # Checkpoints before trainable_backbone_layers said trainable_backbone: bool.
        if "trainable_backbone" in data:
            data.setdefault("trainable_backbone_layers", None if data.pop("trainable_backbone") else 0)
        # Checkpoints and exports before configs were hashable carried an always-empty "extra" dict.
        if data.get("extra") == {}:
            del data["extra"]
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ConfigError(f"unknown detector config keys: {', '.join(unknown)}")
        # JSON and torch.save turn tuples into lists; the dataclass is frozen, so restore tuples.
        return cls(**{k: _tuplify(v) for k, v in data.items()})


class ConfigError(ValueError):
    """A configuration field of the wrong type or out of range; the message names the field."""


def _tuplify(value):
    return tuple(_tuplify(v) for v in value) if isinstance(value, list | tuple) else value


NECK_NAMES = ("fpn", "fpn_separable", "nanodet_m")  # the builders are detector.model.NECKS
RPN_HEAD_NAMES = ("conv", "separable")  # detector.model.rpn_head
MIN_SIDE = 32  # the backbone's coarsest stride: a smaller image has no cell at stride 32


def input_scale(width: int, height: int, min_size: float, max_size: float) -> float:
    """The detector's resize factor for a ``width`` x ``height`` image (torchvision's GeneralizedRCNNTransform in
    eval mode: short side ``min_size``, long side at most ``max_size``); under 1 means it is shrunk. Plain
    arithmetic, so that the engines' preprocessing and the export's TorchScript branch share it."""
    return min(min_size / min(width, height), max_size / max(width, height))


def _positive(value) -> bool:
    return value > 0


def _side(value) -> bool:
    return value >= MIN_SIDE


def _fraction(value) -> bool:
    return 0 <= value <= 1


# Ranges per field: a check for a field's value, or for each element of a tuple field; fields without an entry
# (names, mean, sampling ratio: torchvision takes <= 0 as "adaptive") are checked for their type only.
_RANGES: dict[str, tuple[typing.Callable[[typing.Any], bool], str]] = {
    "neck": (lambda name: name in NECK_NAMES, f"one of {', '.join(NECK_NAMES)}"),
    "neck_channels": (_positive, "positive"),
    "rpn_head": (lambda name: name in RPN_HEAD_NAMES, f"one of {', '.join(RPN_HEAD_NAMES)}"),
    "anchor_sizes": (lambda level: len(level) > 0 and all(s > 0 for s in level), "levels of positive sizes"),
    "aspect_ratios": (_positive, "positive"),
    "min_size": (_side, f"at least {MIN_SIDE}"),
    "max_size": (_side, f"at least {MIN_SIDE}"),
    "train_min_sizes": (_side, f"at least {MIN_SIDE}"),
    "train_max_size": (lambda value: value is None or _side(value), f"None (max_size) or at least {MIN_SIDE}"),
    "image_std": (_positive, "positive"),
    "rpn_pre_nms_top_n_train": (_positive, "positive"),
    "rpn_post_nms_top_n_train": (_positive, "positive"),
    "rpn_pre_nms_top_n_test": (_positive, "positive"),
    "rpn_post_nms_top_n_test": (_positive, "positive"),
    "rpn_batch_size_per_image": (_positive, "positive"),
    "roi_output_size": (_positive, "positive"),
    "box_head_width": (_positive, "positive"),
    "box_batch_size_per_image": (_positive, "positive"),
    "box_score_thresh": (_fraction, "within 0..1"),
    "box_nms_thresh": (_fraction, "within 0..1"),
    "detections_per_img": (_positive, "positive"),
    "trainable_backbone_layers": (lambda n: n is None or n >= 0, "None (all) or a count from 0"),
}


def validate(config: "DetectorConfig") -> None:
    """Raise ``ConfigError`` naming the first field of ``config`` with a wrong type or an out-of-range value."""
    for f in fields(config):
        value = getattr(config, f.name)
        if not _has_type(value, f.type):
            raise ConfigError(f"{config.name}: {f.name} must be {_type_name(f.type)}, got {value!r}")
        if f.name in _RANGES:
            check, wanted = _RANGES[f.name]
            if value == ():
                raise ConfigError(f"{config.name}: {f.name} must not be empty")
            if not all(check(item) for item in (value if isinstance(value, tuple) else (value,))):
                raise ConfigError(f"{config.name}: {f.name} must be {wanted}, got {value!r}")
    counts = {len(level) for level in config.anchor_sizes}
    if len(counts) > 1:  # the RPN head predicts one number of anchors for every location of every level
        raise ConfigError(
            f"{config.name}: anchor_sizes needs the same number of sizes on every level, got {config.anchor_sizes}"
        )


def _has_type(value, annotation) -> bool:
    """Whether ``value`` fits a field annotation: int, float, str, bool, X | None, tuple[X, ...], tuple[X, Y]."""
    if annotation is float:
        return isinstance(value, int | float) and not isinstance(value, bool)
    if annotation is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if annotation in (str, bool):
        return isinstance(value, annotation)
    origin, args = typing.get_origin(annotation), typing.get_args(annotation)
    if origin in (types.UnionType, typing.Union):
        return any(_has_type(value, arg) for arg in args)
    if annotation is type(None):
        return value is None
    if origin is tuple:
        if not isinstance(value, tuple):
            return False
        if len(args) == 2 and args[1] is Ellipsis:
            return all(_has_type(item, args[0]) for item in value)
        return len(value) == len(args) and all(_has_type(v, a) for v, a in zip(value, args, strict=True))
    raise TypeError(f"no check for annotation {annotation!r}")  # a new field type: teach _has_type


def _type_name(annotation) -> str:
    return annotation.__name__ if isinstance(annotation, type) else str(annotation)


# The paper's Table 7 (COCO minival, Faster R-CNN): ShuffleNet 1x and 2x, g=3, short side 300 and 600.
# The paper gives no head details; these use torchvision's standard FPN Faster R-CNN head (1024-wide MLP).
_PAPER = dict(neck_channels=256, box_head_width=1024)

CONFIGS: dict[str, DetectorConfig] = {
    "paper_1x_g3_600": DetectorConfig("paper_1x_g3_600", "shufflenet_v1_g3_1x", **_PAPER),
    "paper_2x_g3_600": DetectorConfig("paper_2x_g3_600", "shufflenet_v1_g3_2x", **_PAPER),
    "paper_1x_g3_300": DetectorConfig(
        "paper_1x_g3_300", "shufflenet_v1_g3_1x", min_size=300, max_size=500, train_min_sizes=(300,), **_PAPER
    ),
    "paper_2x_g3_300": DetectorConfig(
        "paper_2x_g3_300", "shufflenet_v1_g3_2x", min_size=300, max_size=500, train_min_sizes=(300,), **_PAPER
    ),
}

# The CPU-edge default, chosen by measurement (README, "Choosing the edge default"): on a 2-core CPU, ShuffleNet
# v2 0.5x with a 64-channel FPN and a 128-wide box head ran 3.5x (batch 1) and 4.8x (batch 8) the images/s of
# torchvision's fasterrcnn_mobilenet_v3_large_320_fpn. Few proposals and a light head, because the RoI head
# dominates a mobile Faster R-CNN's CPU time; one RoIAlign sample per bin, because its CPU backward pass
# dominated training time.
_EDGE = dict(
    anchor_sizes=((16, 32), (48, 64), (96, 128), (192, 256)),
    min_size=320,
    max_size=544,
    train_min_sizes=(256, 288, 320, 352, 384),
    rpn_pre_nms_top_n_train=1000,
    rpn_post_nms_top_n_train=500,
    rpn_pre_nms_top_n_test=300,
    rpn_post_nms_top_n_test=100,
    roi_sampling_ratio=1,
    box_batch_size_per_image=128,
)
CONFIGS["edge"] = DetectorConfig("edge", "shufflenet_v2_x0_5", neck_channels=64, box_head_width=128, **_EDGE)
# A step up in accuracy for boxes with CPU to spare: ShuffleNet v2 1.0x, 96-channel FPN, 256-wide head
# (0.57x the default's images/s at batch 1 and 8, measured in the same run).
CONFIGS["edge_large"] = DetectorConfig(
    "edge_large", "shufflenet_v2_x1_0", neck_channels=96, box_head_width=256, **_EDGE
)
# The shipped COCO model: NanoDet-m's ShuffleNet v2 1.0x body (LeakyReLU, BatchNorm folded, hence frozen;
# none of it trains), distilled from NanoDet-m on COCO val2017 person images (README, "The COCO model").
# NanoDet's normalisation, in RGB order and 0..1 scale, since its first conv learnt on it. It trains at short side
# 320 (long side up to 544) and detects at NanoDet-m's own scale, long side 320, from 50 proposals: on coco128
# that scored AP 0.167 against 0.161 at the training scale with 100 (weights of the first, 14-epoch recipe), in
# 0.38x the time; trained at long side 320 it scored 0.151 (docs/coco-model.md). The FPN's output and the RPN's
# 3x3 convolutions are depthwise-separable: 0.33 GMACs instead of 0.58 and 1.2x the images/s on OpenVINO, for
# AP 0.182 against 0.183 with full ones (the same recipe; docs/coco-model.md).
NANODET_MEAN = (123.675 / 255, 116.28 / 255, 103.53 / 255)
NANODET_STD = (58.395 / 255, 57.12 / 255, 57.375 / 255)
CONFIGS["coco_edge"] = DetectorConfig(
    "coco_edge",
    "shufflenet_v2_x1_0",
    neck="fpn_separable",
    rpn_head="separable",
    neck_channels=96,
    box_head_width=256,
    image_mean=NANODET_MEAN,
    image_std=NANODET_STD,
    backbone_activation="leaky_relu",
    frozen_batchnorm=True,
    trainable_backbone_layers=0,
    **_EDGE
    | {"min_size": 320, "max_size": 320, "train_min_sizes": (320,), "train_max_size": 544}
    | {"rpn_pre_nms_top_n_test": 150, "rpn_post_nms_top_n_test": 50},
)
DEFAULT_CONFIG = "edge"


def get_config(name: str = DEFAULT_CONFIG, **overrides) -> DetectorConfig:
    """A named configuration with some fields overridden; an unknown name or field is an error."""
    if name not in CONFIGS:
        raise ConfigError(f"unknown detector config {name!r}; known: {', '.join(CONFIGS)}")
    known = {f.name for f in fields(DetectorConfig)}
    unknown = sorted(set(overrides) - known)
    if unknown:
        raise ConfigError(f"unknown detector config fields: {', '.join(unknown)}")
    # Overrides often come from JSON (lists); a config compares and hashes by value, so make them tuples.
    return replace(CONFIGS[name], **{k: _tuplify(v) for k, v in overrides.items()})
