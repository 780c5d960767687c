"""NanoDet-m's body read from its IR equals the IR itself, executed by OpenVINO's runtime, on real images."""

import shutil

import cv2
import numpy as np
import openvino as ov
import pytest
import torch
from torchvision.ops.misc import FrozenBatchNorm2d

from backbone import WeightsError, create_backbone
from backbone.openvino_ir import read_ir, stage_output_names
from detector.config import NANODET_MEAN, NANODET_STD

BODY_CONVS = 55  # conv1, 3 x branch1 (2), 16 x branch2 (3)


def nanodet_body(ir, trainable=None):
    body = create_backbone(
        "shufflenet_v2_x1_0", features_only=True, weights=ir, activation="leaky_relu", frozen_batchnorm=True
    )
    body.set_trainable_layers(trainable)
    return body.eval()


def test_stage_outputs_equal_openvino_on_real_images(nanodet_ir, coco128):
    body = nanodet_body(nanodet_ir)
    model = ov.Core().read_model(str(nanodet_ir))
    ops = {op.get_friendly_name(): op for op in model.get_ops()}
    stage_outputs = [ops[name].output(0) for name in stage_output_names(nanodet_ir, BODY_CONVS)]
    model.add_outputs(stage_outputs)
    compiled = ov.Core().compile_model(model, "CPU", {"INFERENCE_PRECISION_HINT": "f32"})
    mean, std = np.array(NANODET_MEAN, np.float32), np.array(NANODET_STD, np.float32)
    files = sorted((coco128 / "images").glob("*.jpg"))[:4]
    for path in files:
        bgr = cv2.resize(cv2.imread(str(path)), (320, 320)).astype(np.float32)
        reference = compiled(bgr.transpose(2, 0, 1)[None])  # the IR takes raw BGR and normalises inside
        rgb = (bgr[:, :, ::-1] / 255 - mean) / std  # what the detector feeds its body
        with torch.no_grad():
            ours = body.forward_features(torch.from_numpy(rgb.transpose(2, 0, 1).copy())[None])
        for index, feature in enumerate(ours):
            expected = reference[compiled.outputs[6 + index]]
            assert feature.shape == expected.shape
            assert np.abs(feature.numpy() - expected).max() < 1e-4, (path.name, index)


def test_activation_frozen_batchnorm_and_trainable_layers(nanodet_ir):
    body = nanodet_body(nanodet_ir, trainable=1)
    modules = list(body.modules())
    assert not any(isinstance(m, torch.nn.ReLU) for m in modules)
    assert any(isinstance(m, torch.nn.LeakyReLU) and m.negative_slope == 0.1 for m in modules)
    assert not any(isinstance(m, torch.nn.BatchNorm2d) for m in modules)
    assert sum(isinstance(m, FrozenBatchNorm2d) for m in modules) == BODY_CONVS
    trainable = {name.split(".")[0] for name, p in body.named_parameters() if p.requires_grad}
    assert trainable == {"stage4"}
    with pytest.raises(ValueError, match="0..4"):
        body.set_trainable_layers(5)


def test_relu_backbone_is_unchanged_by_default():
    body = create_backbone("shufflenet_v2_x1_0", features_only=True)
    assert any(isinstance(m, torch.nn.ReLU) for m in body.modules())
    assert any(isinstance(m, torch.nn.BatchNorm2d) for m in body.modules())


def test_missing_corrupt_and_mismatched_ir(nanodet_ir, tmp_path):
    with pytest.raises(WeightsError, match="no such file"):
        read_ir(tmp_path / "absent.xml")
    broken = tmp_path / "broken.xml"
    broken.write_text("<net><layers><layer")
    shutil.copy(nanodet_ir.with_suffix(".bin"), broken.with_suffix(".bin"))
    with pytest.raises(WeightsError, match="not a readable OpenVINO IR"):
        read_ir(broken)
    truncated = tmp_path / "truncated.xml"
    shutil.copy(nanodet_ir, truncated)
    truncated.with_suffix(".bin").write_bytes(nanodet_ir.with_suffix(".bin").read_bytes()[:1000])
    with pytest.raises(WeightsError, match="past the end"):
        create_backbone("shufflenet_v2_x1_0", features_only=True, weights=truncated)
    # NanoDet-m's body is v2 1.0x: the 0.5x body does not fit it, and the error names the layer.
    with pytest.raises(WeightsError, match="not this backbone's weights"):
        create_backbone("shufflenet_v2_x0_5", features_only=True, weights=nanodet_ir)
