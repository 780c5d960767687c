"""NanoDet-m's neck read from its IR equals the IR executed by OpenVINO; a detector on it builds, freezes and
trains its heads only."""

from collections import OrderedDict

import cv2
import numpy as np
import openvino as ov
import pytest
import torch

from backbone import WeightsError, create_backbone
from detector.categories import Category, CategoryMap
from detector.complexity import detector_complexity
from detector.config import NANODET_MEAN, NANODET_STD, NECK_NAMES, RPN_HEAD_NAMES, ConfigError, get_config
from detector.model import NECKS, RPN_HEADS, Detector
from detector.nanodet_neck import NanoDetNeck, nanodet_neck_state_dict_from_ir

BODY_CONVS = 55
# The last activation of each level's tower in NanoDet-m's IR (its head's class/box convolution reads them).
TOWER_OUTPUTS = ("LeakyRelu_350", "LeakyRelu_371", "LeakyRelu_392")


def test_tower_outputs_equal_openvino_on_real_images(nanodet_ir, coco128):
    body = create_backbone(
        "shufflenet_v2_x1_0", features_only=True, weights=nanodet_ir, activation="leaky_relu", frozen_batchnorm=True
    ).eval()
    neck = NanoDetNeck(body.feature_channels, 96)
    neck.load_state_dict(nanodet_neck_state_dict_from_ir(nanodet_ir, neck, body_convs=BODY_CONVS))
    neck.eval()
    model = ov.Core().read_model(str(nanodet_ir))
    ops = {op.get_friendly_name(): op for op in model.get_ops()}
    model.add_outputs([ops[name].output(0) for name in TOWER_OUTPUTS])
    compiled = ov.Core().compile_model(model, "CPU", {"INFERENCE_PRECISION_HINT": "f32"})
    mean, std = np.array(NANODET_MEAN, np.float32), np.array(NANODET_STD, np.float32)
    for path in sorted((coco128 / "images").glob("*.jpg"))[:3]:
        bgr = cv2.resize(cv2.imread(str(path)), (320, 320)).astype(np.float32)
        reference = compiled(bgr.transpose(2, 0, 1)[None])
        rgb = (bgr[:, :, ::-1] / 255 - mean) / std
        with torch.no_grad():
            stages = body.forward_features(torch.from_numpy(rgb.transpose(2, 0, 1).copy())[None])
            levels = neck(OrderedDict(zip("012", stages, strict=True)))
        assert list(levels) == ["0", "1", "2", "pool"]
        for index, name in enumerate("012"):
            expected = reference[compiled.outputs[6 + index]]
            assert levels[name].shape == expected.shape
            assert np.abs(levels[name].numpy() - expected).max() < 1e-4, (path.name, name)
        assert levels["pool"].shape[-2:] == (5, 5)


def test_neck_of_another_width_or_body_is_refused(nanodet_ir):
    with pytest.raises(WeightsError, match="not this neck's weights"):
        nanodet_neck_state_dict_from_ir(nanodet_ir, NanoDetNeck([116, 232, 464], 64), body_convs=BODY_CONVS)
    with pytest.raises(WeightsError, match="not NanoDet-m"):
        nanodet_neck_state_dict_from_ir(nanodet_ir, NanoDetNeck([116, 232, 464], 96), body_convs=40)


def test_detector_on_the_frozen_neck_trains_only_its_heads(nanodet_ir):
    config = get_config("coco_edge", neck="nanodet_m", trainable_neck=False)
    categories = CategoryMap(Category(i + 1, f"class{i + 1}") for i in range(3))
    detector = Detector(config, categories, backbone_weights=str(nanodet_ir), neck_weights=str(nanodet_ir))
    trainable = {name.split(".")[0] for name, p in detector.model.named_parameters() if p.requires_grad}
    assert trainable == {"rpn", "roi_heads"}
    detector.train()
    target = {"boxes": torch.tensor([[20.0, 30.0, 200.0, 220.0]]), "labels": torch.tensor([2])}
    losses = detector([torch.rand(3, 240, 320)], [target])
    sum(losses.values()).backward()
    assert all(torch.isfinite(v) for v in losses.values())
    assert detector.model.backbone.neck.laterals[0].weight.grad is None
    detector.eval()
    (result,) = detector.predict([torch.rand(3, 250, 333)])  # not a multiple of 32: the levels still add up
    assert result["boxes"].shape[1] == 4


def test_neck_and_rpn_head_names_are_the_builders():
    assert set(NECK_NAMES) == set(NECKS) and set(RPN_HEAD_NAMES) == RPN_HEADS
    with pytest.raises(ConfigError, match="neck must be one of fpn, fpn_separable, nanodet_m"):
        get_config("edge", neck="bifpn")
    with pytest.raises(ConfigError, match="rpn_head must be one of conv, separable"):
        get_config("edge", rpn_head="deep")


def test_the_nanodet_neck_and_separable_rpn_cost_less_than_the_fpn_and_its_rpn():
    fpn = detector_complexity(get_config("coco_edge", neck="fpn", rpn_head="conv"))["macs_by_part"]
    light = detector_complexity(get_config("coco_edge", neck="nanodet_m", rpn_head="separable"))["macs_by_part"]
    assert light["backbone"] == fpn["backbone"] and light["roi_head"] == fpn["roi_head"]
    assert light["neck"] < fpn["neck"] / 2.5  # no 3x3 convolutions over 96 channels, only depthwise ones
    assert light["rpn"] < fpn["rpn"] / 5
