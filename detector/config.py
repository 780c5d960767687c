"""Named detector configurations: plain data, in this one module.

A configuration says everything needed to rebuild the network (the checkpoint stores it whole); a CLI flag
may override a field through ``get_config(name, **overrides)``, and nothing else derives one.
"""

from dataclasses import asdict, dataclass, field, fields, replace
from pathlib import Path

MODELS_DIR = Path(__file__).resolve().parents[1] / "models"
# The bundled COCO model (CONFIGS["coco_edge"], made by `make coco-model`), used when no checkpoint is given,
# and its ONNX export (python -m detector.export), which the service runs by default: same detections, about
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
    # Neck: torchvision's FeaturePyramidNetwork over stages 2-4 (strides 8/16/32) plus a max-pooled level (64).
    neck_channels: int = 256
    # One tuple per FPN level (4 levels); every level needs the same number of sizes.
    anchor_sizes: tuple[tuple[int, ...], ...] = ((32,), (64,), (128,), (256,))
    aspect_ratios: tuple[float, ...] = (0.5, 1.0, 2.0)
    # Input: the short side at test time and the choices sampled per batch in training (multi-scale).
    min_size: int = 600
    max_size: int = 1000
    train_min_sizes: tuple[int, ...] = (600,)
    image_mean: tuple[float, float, float] = IMAGENET_MEAN
    image_std: tuple[float, float, float] = IMAGENET_STD
    # RPN
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
    extra: dict = field(default_factory=dict)  # free-form notes kept with the checkpoint

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> "DetectorConfig":
        data = dict(data)
        # Checkpoints before trainable_backbone_layers said trainable_backbone: bool.
        if "trainable_backbone" in data:
            data.setdefault("trainable_backbone_layers", None if data.pop("trainable_backbone") else 0)
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ValueError(f"unknown detector config keys: {', '.join(unknown)}")
        # JSON and torch.save turn tuples into lists; the dataclass is frozen, so restore tuples.
        fixed = {k: _tuplify(v) if k != "extra" else v for k, v in data.items()}
        return cls(**fixed)


def _tuplify(value):
    return tuple(_tuplify(v) for v in value) if isinstance(value, list | tuple) else value


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
# only stage 4 trains), distilled from NanoDet-m on COCO val2017 person images (README, "The COCO model").
# NanoDet's normalisation, in RGB order and 0..1 scale, since its first conv learnt on it.
NANODET_MEAN = (123.675 / 255, 116.28 / 255, 103.53 / 255)
NANODET_STD = (58.395 / 255, 57.12 / 255, 57.375 / 255)
CONFIGS["coco_edge"] = DetectorConfig(
    "coco_edge",
    "shufflenet_v2_x1_0",
    neck_channels=96,
    box_head_width=256,
    image_mean=NANODET_MEAN,
    image_std=NANODET_STD,
    backbone_activation="leaky_relu",
    frozen_batchnorm=True,
    trainable_backbone_layers=1,
    **{**_EDGE, "train_min_sizes": (288, 320, 352)},
)
DEFAULT_CONFIG = "edge"


def get_config(name: str = DEFAULT_CONFIG, **overrides) -> DetectorConfig:
    """A named configuration with some fields overridden; an unknown name or field is an error."""
    if name not in CONFIGS:
        raise ValueError(f"unknown detector config {name!r}; known: {', '.join(CONFIGS)}")
    known = {f.name for f in fields(DetectorConfig)}
    unknown = sorted(set(overrides) - known)
    if unknown:
        raise ValueError(f"unknown detector config fields: {', '.join(unknown)}")
    # Overrides often come from JSON (lists); a config compares and hashes by value, so make them tuples.
    return replace(CONFIGS[name], **{k: v if k == "extra" else _tuplify(v) for k, v in overrides.items()})
