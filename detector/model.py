"""Faster R-CNN on a ShuffleNet backbone, composed from torchvision's detection parts.

``build_detector(config, categories)`` is the one builder: backbone (any family, through the shared
feature interface) -> neck (torchvision's FPN, or NanoDet-m's PAN and towers) -> torchvision's RPN and RoI
heads. ``Detector`` keeps the network together
with what it needs to be used on its own: its configuration, its categories and its provenance.
"""

import functools
import math
import warnings
from collections import OrderedDict

import torch
import torchvision
from torch import Tensor, nn
from torchvision.models.detection import FasterRCNN
from torchvision.models.detection.anchor_utils import AnchorGenerator
from torchvision.models.detection.faster_rcnn import FastRCNNPredictor, TwoMLPHead
from torchvision.models.detection.rpn import RPNHead
from torchvision.models.detection.transform import GeneralizedRCNNTransform
from torchvision.ops import FeaturePyramidNetwork, MultiScaleRoIAlign, roi_align
from torchvision.ops.feature_pyramid_network import LastLevelMaxPool
from torchvision.ops.misc import Conv2dNormActivation
from torchvision.ops.poolers import _convert_to_roi_format, _setup_scales

from backbone import FeatureBackbone, create_backbone

from .categories import CategoryMap
from .config import DetectorConfig, input_scale
from .nanodet_neck import NanoDetNeck, nanodet_neck_state_dict_from_ir


class BackboneWithNeck(nn.Module):
    """Any ``FeatureBackbone`` followed by a neck that maps its stage outputs ("0", "1", "2": strides 8-32) to
    ``out_channels``-wide levels of the same names plus "pool" (stride 64)."""

    def __init__(self, body: FeatureBackbone, neck: nn.Module, out_channels: int) -> None:
        super().__init__()
        self.body = body
        self.neck = neck
        self.out_channels = out_channels  # what FasterRCNN reads to size its heads
        self.level_names = [str(i) for i in range(len(body.feature_info))]

    def forward(self, x: Tensor) -> "OrderedDict[str, Tensor]":
        return self.neck(OrderedDict(zip(self.level_names, self.body.forward_features(x), strict=True)))


class GatheringRoIAlign(MultiScaleRoIAlign):
    """torchvision's MultiScaleRoIAlign with the same numbers, put back in the boxes' order by one gather.

    torchvision writes each level's pooled boxes into a zero tensor; exported to ONNX that is a scatter per
    level, with its index expanded to the full (N, C, 7, 7), and those two ops took about 6% of the COCO model's
    time on OpenVINO and ONNX Runtime. Here the levels' results are concatenated and reordered by the inverse
    of the order they were pooled in.
    """

    def forward(self, x: dict[str, Tensor], boxes: list[Tensor], image_shapes: list[tuple[int, int]]) -> Tensor:
        features = [x[name] for name in self.featmap_names]
        if self.scales is None or self.map_levels is None:
            self.scales, self.map_levels = _setup_scales(
                features, image_shapes, self.canonical_scale, self.canonical_level
            )
        rois = _convert_to_roi_format(boxes)
        levels = self.map_levels(boxes)
        order, pooled = [], []
        for level, (feature, scale) in enumerate(zip(features, self.scales, strict=True)):
            in_level = torch.where(levels == level)[0]
            order.append(in_level)
            pooled.append(
                roi_align(feature, rois[in_level], self.output_size, scale, self.sampling_ratio).to(features[0].dtype)
            )
        return torch.cat(pooled)[torch.argsort(torch.cat(order))]


def fpn_neck(body: FeatureBackbone, channels: int, weights: str | None = None) -> nn.Module:
    if weights is not None:
        raise ValueError("the FPN neck has no pretrained weights to load; it learns from scratch")
    return FeaturePyramidNetwork(body.feature_channels, channels, extra_blocks=LastLevelMaxPool())


def nanodet_m_neck(body: FeatureBackbone, channels: int, weights: str | None = None) -> nn.Module:
    """NanoDet-m's PAN and head towers; ``weights``: its IR (the same file the body comes from)."""
    neck = NanoDetNeck(body.feature_channels, channels)
    if weights is not None:
        body_convs = sum(isinstance(m, nn.Conv2d) for m in body.modules())
        neck.load_state_dict(nanodet_neck_state_dict_from_ir(weights, neck, body_convs=body_convs))
    return neck


def separable_fpn_neck(body: FeatureBackbone, channels: int, weights: str | None = None) -> nn.Module:
    """torchvision's FPN with each level's 3x3 output convolution depthwise-separable (a 3x3 depthwise, then a
    1x1, both linear like the convolution they replace): on a 96-wide neck at stride 8 the full 3x3 was a tenth
    of the COCO model's time on OpenVINO, and the separable pair costs a ninth of its multiply-adds."""
    fpn = fpn_neck(body, channels, weights)
    for index in range(len(fpn.layer_blocks)):
        fpn.layer_blocks[index] = nn.Sequential(
            nn.Conv2d(channels, channels, 3, padding=1, groups=channels), nn.Conv2d(channels, channels, 1)
        )
        for layer in fpn.layer_blocks[index]:  # as torchvision initialises the FPN's own
            nn.init.kaiming_uniform_(layer.weight, a=1)
            nn.init.constant_(layer.bias, 0)
    return fpn


NECKS = {"fpn": fpn_neck, "fpn_separable": separable_fpn_neck, "nanodet_m": nanodet_m_neck}  # DetectorConfig.neck


def rpn_head(kind: str, channels: int, num_anchors: int) -> RPNHead:
    """torchvision's RPN head (``"conv"``: a 3x3 convolution over every level, then the objectness and box
    convolutions), or the same with that 3x3 convolution depthwise-separable (``"separable"``): on a 96-wide
    neck the 3x3 one costs as many multiply-adds as the neck itself, the separable one a ninth of it."""
    head = RPNHead(channels, num_anchors)
    if kind == "separable":
        head.conv = nn.Sequential(
            Conv2dNormActivation(channels, channels, 3, groups=channels, norm_layer=None),
            Conv2dNormActivation(channels, channels, 1, norm_layer=None),
        )
        for layer in head.conv.modules():
            if isinstance(layer, nn.Conv2d):  # as torchvision initialises its own
                nn.init.normal_(layer.weight, std=0.01)
                nn.init.constant_(layer.bias, 0)
    return head


RPN_HEADS = {"conv", "separable"}  # DetectorConfig.rpn_head


class TrainTestTransform(GeneralizedRCNNTransform):
    """torchvision's resize-and-normalise with both input sizes inside: one short side sampled per batch from
    ``train_min_sizes`` in training, ``test_min_size`` in eval, and the long side's cap of each
    (``train_max_size``, ``max_size``), chosen by ``self.training`` alone.

    So ``model.eval()`` anywhere (export, evaluation, a benchmark) gives the test size: torchvision's own
    transform holds only the training choices and takes the last of them in eval mode. Its ``resize``
    calls ``torch_choice(min_size)`` in training and reads ``min_size[-1]`` in eval; here ``min_size`` is the
    training choices followed by the test size, and ``torch_choice`` never picks that last entry. The draw is
    torchvision's, so the same RNG state picks the same training sizes as before.
    """

    def __init__(
        self,
        train_min_sizes: tuple[int, ...],
        test_min_size: int,
        max_size: int,
        train_max_size: int | None = None,
        **kwargs,
    ) -> None:
        super().__init__((*train_min_sizes, test_min_size), max_size, **kwargs)  # sets test_max_size
        self.train_max_size = train_max_size or max_size

    @property
    def max_size(self) -> int:  # what torchvision's resize reads
        return self.train_max_size if self.training else self.test_max_size

    @max_size.setter
    def max_size(self, value: int) -> None:  # torchvision's own attribute: the test-time cap
        self.test_max_size = value

    def torch_choice(self, k: list[int]) -> int:
        index = int(torch.empty(1).uniform_(0.0, float(len(k) - 1)).item())
        return k[index]

    def resize(self, image: Tensor, target: dict[str, Tensor] | None = None):
        if torchvision._is_tracing() and not self.training and target is None:
            # The ONNX export: its engines give images already at the input size, where torchvision's traced
            # resize still interpolates at scale 1 (6% of the COCO model's time on OpenVINO). Scripted, the
            # test becomes a graph branch, which OpenVINO folds away for a fixed input shape.
            return _scripted(_resize_unless_at_size)(image, float(self.min_size[-1]), float(self.max_size)), None
        return super().resize(image, target)


def _resize_unless_at_size(image: Tensor, min_size: float, max_size: float) -> Tensor:
    """torchvision's eval-mode resize, skipped at scale 1."""
    height, width = image.shape[-2], image.shape[-1]
    scale = input_scale(width, height, min_size, max_size)
    if scale == 1.0:
        return image
    # The output size as torchvision's recompute_scale_factor gives it; given as a size, the export samples at
    # input/output as torch does (given as a scale, ONNX's Resize samples at 1/scale, a fraction of a pixel off).
    size = [int(math.floor(height * scale)), int(math.floor(width * scale))]
    return nn.functional.interpolate(image[None], size=size, mode="bilinear", align_corners=False)[0]


@functools.cache
def _scripted(function):
    """``function`` compiled by TorchScript (once), for the export's tracer to keep its branches."""
    with warnings.catch_warnings():  # torch.jit is deprecated, as is the TorchScript-based exporter that needs it
        warnings.simplefilter("ignore", FutureWarning)
        return torch.jit.script(function)


def build_detector(
    config: DetectorConfig,
    num_classes: int,
    *,
    backbone_weights: str | None = None,
    neck_weights: str | None = None,
) -> FasterRCNN:
    """torchvision's FasterRCNN with every part built from ``config``.

    ``num_classes`` counts background (K categories -> K + 1). ``backbone_weights``: a local ImageNet
    state dict for the backbone (strictly checked), or an OpenVINO IR holding it (NanoDet-m's);
    ``neck_weights``: an IR holding the neck (NanoDet-m's, for ``neck="nanodet_m"``).
    Inputs: list of (3, H, W) tensors in 0..1; in eval mode
    outputs boxes as [x1, y1, x2, y2] in the input images' pixels, labels 1..K and scores.
    """
    body = create_backbone(
        config.backbone,
        features_only=True,
        weights=backbone_weights,
        activation=config.backbone_activation,
        frozen_batchnorm=config.frozen_batchnorm,
    )
    body.set_trainable_layers(config.trainable_backbone_layers)
    neck = NECKS[config.neck](body, config.neck_channels, neck_weights)
    neck.requires_grad_(config.trainable_neck)
    backbone = BackboneWithNeck(body, neck, config.neck_channels)
    num_levels = len(body.feature_info) + 1  # plus the max-pooled level
    if len(config.anchor_sizes) != num_levels:
        raise ValueError(f"{config.name}: anchor_sizes needs {num_levels} levels, got {len(config.anchor_sizes)}")
    anchors = AnchorGenerator(config.anchor_sizes, (config.aspect_ratios,) * num_levels)
    rpn = rpn_head(config.rpn_head, config.neck_channels, anchors.num_anchors_per_location()[0])
    roi_pool = GatheringRoIAlign(backbone.level_names, config.roi_output_size, config.roi_sampling_ratio)
    box_head = TwoMLPHead(config.neck_channels * config.roi_output_size**2, config.box_head_width)
    model = FasterRCNN(
        backbone,
        rpn_anchor_generator=anchors,
        rpn_head=rpn,
        rpn_pre_nms_top_n_train=config.rpn_pre_nms_top_n_train,
        rpn_post_nms_top_n_train=config.rpn_post_nms_top_n_train,
        rpn_pre_nms_top_n_test=config.rpn_pre_nms_top_n_test,
        rpn_post_nms_top_n_test=config.rpn_post_nms_top_n_test,
        rpn_batch_size_per_image=config.rpn_batch_size_per_image,
        box_roi_pool=roi_pool,
        box_head=box_head,
        box_predictor=FastRCNNPredictor(config.box_head_width, num_classes),
        box_batch_size_per_image=config.box_batch_size_per_image,
        box_score_thresh=config.box_score_thresh,
        box_nms_thresh=config.box_nms_thresh,
        box_detections_per_img=config.detections_per_img,
    )
    # Replaces the transform FasterRCNN builds from min_size/max_size (it holds no weights).
    model.transform = TrainTestTransform(
        config.train_min_sizes,
        config.min_size,
        config.max_size,
        config.train_max_size,
        image_mean=list(config.image_mean),
        image_std=list(config.image_std),
    )
    return model


class Detector(nn.Module):
    """A FasterRCNN with its configuration, categories and provenance: what a checkpoint holds.

    ``forward`` is FasterRCNN's: in training, (images, targets) -> losses; in eval mode,
    images -> [{"boxes": (N, 4) x1y1x2y2 pixels, "labels": (N,) 1..K, "scores": (N,)}].
    The test-time short side is ``config.min_size``; training samples from ``config.train_min_sizes`` (the
    network's transform picks by its mode, so ``detector.model.eval()`` alone gives the test size).
    """

    def __init__(
        self,
        config: DetectorConfig,
        categories: CategoryMap,
        *,
        backbone_weights: str | None = None,
        neck_weights: str | None = None,
        provenance: dict | None = None,
    ) -> None:
        super().__init__()
        self.config = config
        self.categories = categories
        self.provenance = dict(provenance or {})
        self.model = build_detector(
            config, categories.num_classes, backbone_weights=backbone_weights, neck_weights=neck_weights
        )

    def forward(self, images: list[Tensor], targets: list[dict] | None = None):
        return self.model(images, targets)

    def channels_last(self) -> "Detector":
        """Weights (hence activations) in NHWC: on CPU the edge model ran 1.33x faster at batch 1 and 1.17x at
        batch 8 with the same detections, mostly because max pooling and oneDNN convolutions prefer it."""
        return self.to(memory_format=torch.channels_last)

    @torch.inference_mode()
    def predict(self, images: list[Tensor]) -> list[dict]:
        """Eval-mode detections for a list of (3, H, W) float images in 0..1, in their own pixels: for each image,
        what it gets on its own, whatever else is in the list.

        torchvision pads a batch to its largest image, and that padding is not neutral: after the first
        convolution its folded BatchNorm bias makes the padding nonzero where a lone image's border sees zeros,
        and proposals reach into it. So an image's detections would depend on its batch-mates (coco128's AP
        moved by 0.009 between batches of 8 and 1 for the same weights), and the service never pads photos
        together. Images are therefore run in groups that share the network's input shape.
        """
        if self.training:
            raise RuntimeError("call .eval() before predict()")
        groups: dict[tuple[int, int], list[int]] = {}
        for index, image in enumerate(images):
            groups.setdefault(self._input_shape(image), []).append(index)
        outputs: list[dict] = [{}] * len(images)
        for indices in groups.values():
            for index, output in zip(indices, self.model([images[i] for i in indices]), strict=True):
                outputs[index] = output
        return outputs

    def _input_shape(self, image: Tensor) -> tuple[int, int]:
        """The (height, width) the network runs ``image`` at in eval mode: resized by torchvision's rule
        (``interpolate`` with ``recompute_scale_factor`` floors each side), then padded to ``size_divisible``."""
        transform = self.model.transform
        height, width = image.shape[-2:]
        scale = input_scale(width, height, transform.min_size[-1], transform.max_size)
        step = transform.size_divisible
        return tuple(-(-math.floor(side * scale) // step) * step for side in (height, width))  # type: ignore[return-value]
