"""The detector builder on every configuration, and its complexity report."""

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from torchvision.ops import box_iou

from detector import CONFIGS, DEFAULT_CONFIG, Detector, DetectorConfig, complexity, get_config
from detector.categories import Category, CategoryMap
from detector.checkpoint import load_checkpoint, save_checkpoint
from detector.complexity import detector_complexity
from detector.config import ConfigError
from detector.data import IGNORE_LABEL

REPO = Path(__file__).resolve().parents[2]
CATEGORIES = CategoryMap([Category(3, "car"), Category(18, "dog")])


@pytest.mark.parametrize("name", sorted(CONFIGS))
def test_every_config_builds_and_detects_in_image_pixels(name):
    torch.manual_seed(0)
    # Small inputs keep this quick; the network is the named one.
    config = get_config(name, min_size=128, max_size=160, box_score_thresh=0.0)
    detector = Detector(config, CATEGORIES).eval()
    images = [torch.rand(3, 90, 150), torch.rand(3, 131, 77)]
    outputs = detector.predict(images)
    for image, out in zip(images, outputs, strict=True):
        assert out["boxes"].shape[1] == 4 and len(out["boxes"]) == len(out["labels"]) == len(out["scores"])
        assert len(out["boxes"]) > 0
        h, w = image.shape[1:]
        assert (out["boxes"][:, 2] <= w).all() and (out["boxes"][:, 3] <= h).all()
        assert set(out["labels"].tolist()) <= {1, 2}


def test_training_mode_returns_the_four_losses():
    detector = Detector(get_config(DEFAULT_CONFIG, train_min_sizes=(96,), max_size=128), CATEGORIES).train()
    target = {"boxes": torch.tensor([[10.0, 10.0, 60.0, 50.0]]), "labels": torch.tensor([2])}
    losses = detector([torch.rand(3, 96, 120)], [target])
    assert set(losses) == {"loss_classifier", "loss_box_reg", "loss_objectness", "loss_rpn_box_reg"}
    assert all(torch.isfinite(v) for v in losses.values())


def test_config_round_trips_through_json_and_rejects_unknown_fields():
    for config in CONFIGS.values():
        assert DetectorConfig.from_dict(json.loads(json.dumps(config.to_dict()))) == config
    assert get_config("edge", train_min_sizes=[300]) == get_config("edge", train_min_sizes=(300,))
    with pytest.raises(ValueError, match="unknown detector config fields: necks"):
        get_config("edge", necks=3)
    with pytest.raises(ValueError, match="unknown detector config 'nope'"):
        get_config("nope")


def test_edge_default_is_far_lighter_than_the_papers_settings():
    edge = detector_complexity(CONFIGS["edge"])
    paper = detector_complexity(CONFIGS["paper_1x_g3_300"])
    assert set(edge["macs_by_part"]) == {"backbone", "neck", "rpn", "roi_head"}
    assert sum(edge["macs_by_part"].values()) == pytest.approx(edge["macs"], rel=1e-6)
    assert edge["macs"] < paper["macs"] / 5
    assert edge["params"] < paper["params"] / 3


def test_complexity_cli_prints_a_table_and_json(capsys):
    assert complexity.main(["--config", "edge_large"]) == 0
    header, row = capsys.readouterr().out.splitlines()
    assert header.split()[:3] == ["config", "input", "GMACs"] and row.split()[:2] == ["edge_large", "320x427"]
    assert complexity.main(["--config", "edge", "--json"]) == 0
    assert json.loads(capsys.readouterr().out) == detector_complexity(CONFIGS["edge"])


def test_complexity_runs_as_a_module():  # the one run as a user runs it, in a new process
    out = subprocess.run(
        [sys.executable, "-m", "detector.complexity", "--config", "edge", "--json", "--threads", "1"],
        cwd=REPO,
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    row = json.loads(out)
    assert row["config"] == "edge" and row["macs"] > 0


def test_the_network_itself_resizes_to_the_test_size_in_eval_mode(tmp_path):
    # The test size lives in the network, not in Detector.eval(): detector.model.eval() (export, benchmarks)
    # gives it too, whatever mode the Detector was in, and a training mode samples the training sizes.
    detector = Detector(get_config("edge"), CATEGORIES).train()
    image = torch.rand(3, 480, 640)
    detector.model.eval()
    assert detector.model.transform([image])[0].image_sizes == [(320, 426)]
    detector.model.train()
    torch.manual_seed(0)
    sizes = {min(detector.model.transform([image])[0].image_sizes[0]) for _ in range(40)}
    assert sizes == set(CONFIGS["edge"].train_min_sizes)
    # Evaluation at another size goes through the configuration, so a later train()/eval() keeps it.
    path = tmp_path / "edge.pt"
    save_checkpoint(detector, path)
    loaded = load_checkpoint(path, config_overrides={"min_size": 200})
    assert loaded.config.min_size == 200
    assert loaded.train().eval().model.transform([image])[0].image_sizes == [(200, 266)]


def test_training_and_test_can_cap_the_long_side_differently():
    # coco_edge trains at short side 320 (long side up to 544) and tests at long side 320.
    config = get_config("edge", min_size=320, max_size=320, train_min_sizes=(320,), train_max_size=544)
    net = Detector(config, CATEGORIES).model
    image = torch.rand(3, 480, 640)
    assert net.eval().transform([image])[0].image_sizes == [(240, 320)]
    assert net.train().transform([image])[0].image_sizes == [(320, 426)]
    assert net.eval().transform([image])[0].image_sizes == [(240, 320)]
    assert complexity.input_shape(config) == (240, 320)
    assert [complexity.input_shape(CONFIGS[name]) for name in ("edge", "paper_1x_g3_600")] == [(320, 427), (600, 800)]


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ({"min_size": "3OO"}, "edge: min_size must be int, got '3OO'"),
        ({"min_size": 16}, "min_size must be at least 32"),
        ({"train_min_sizes": ()}, "train_min_sizes must not be empty"),
        ({"train_max_size": 20}, "train_max_size must be None (max_size) or at least 32"),
        ({"box_nms_thresh": 1.5}, "box_nms_thresh must be within 0..1"),
        ({"image_std": (0.2, 0.2)}, "image_std must be tuple[float, float, float]"),
        ({"frozen_batchnorm": 1}, "frozen_batchnorm must be bool"),
        ({"anchor_sizes": ((16, 32), (64,), (128,), (256,))}, "anchor_sizes needs the same number of sizes"),
    ],
)
def test_a_bad_field_is_named_when_the_config_is_made(override, message):
    with pytest.raises(ConfigError, match=re.escape(message)):
        get_config("edge", **override)


def test_configs_hash_by_value_and_old_files_still_load():
    assert len({get_config("edge"), get_config("edge", train_min_sizes=[256, 288, 320, 352, 384])}) == 1
    assert {hash(config) for config in CONFIGS.values()}
    # Checkpoints and exports written before configs were hashable carry an empty "extra" dict.
    assert DetectorConfig.from_dict({**CONFIGS["edge"].to_dict(), "extra": {}}) == CONFIGS["edge"]


def test_proposals_on_a_region_to_ignore_are_neither_objects_nor_background():
    torch.manual_seed(0)
    heads = Detector(get_config("edge"), CategoryMap([Category(1, "person"), Category(3, "car")])).model.roi_heads
    ignored, car, empty = [40.0, 40.0, 120.0, 120.0], [200.0, 40.0, 280.0, 120.0], [200.0, 200.0, 280.0, 280.0]
    near = [
        [x + dx, y + dy, x2 + dx, y2 + dy]
        for x, y, x2, y2 in (ignored, car, empty)
        for dx in (-4, 0, 4)
        for dy in (-4, 4)
    ]
    targets = [{"boxes": torch.tensor([ignored, car]), "labels": torch.tensor([IGNORE_LABEL, 2])}]
    proposals, _, labels, _ = heads.select_training_samples([torch.tensor(near)], targets)
    overlap = box_iou(proposals[0], torch.tensor([ignored]))[:, 0]
    assert (labels[0] >= 0).all()
    assert not (overlap >= 0.5).any(), "a proposal on the ignored region was sampled"
    assert {0, 2} <= set(labels[0].tolist())  # the car's proposals and the empty ones still are


def test_the_separable_fpn_is_torchvisions_with_lighter_output_convolutions():
    full, light = (get_config("coco_edge", neck=neck) for neck in ("fpn", "fpn_separable"))
    full_cost, light_cost = (detector_complexity(config)["macs_by_part"] for config in (full, light))
    assert light_cost["backbone"] == full_cost["backbone"] and light_cost["rpn"] == full_cost["rpn"]
    assert light_cost["neck"] < full_cost["neck"] / 2.5  # the 3x3 output convolutions were most of it
    torch.manual_seed(0)
    full_neck, light_neck = (Detector(config, CATEGORIES).model.backbone.neck for config in (full, light))
    # The same lateral (1x1) convolutions and top-down path: only the output convolutions differ.
    assert [n for n in full_neck.state_dict() if "inner" in n] == [n for n in light_neck.state_dict() if "inner" in n]
    depthwise = [m for m in light_neck.modules() if isinstance(m, torch.nn.Conv2d) and m.groups == m.in_channels > 1]
    assert len(depthwise) == len(light_neck.layer_blocks) == 3


def test_the_gathering_roi_align_pools_what_torchvisions_does():
    from torchvision.ops import MultiScaleRoIAlign

    from detector.model import GatheringRoIAlign

    torch.manual_seed(0)
    names = ["0", "1", "2"]
    features = {name: torch.rand(1, 8, 40 // 2**i, 48 // 2**i) for i, name in enumerate(names)}
    # Boxes of every level in mixed order, then none of the middle level.
    corners = torch.rand(30, 2) * 200
    sides = torch.cat([torch.full((10, 2), side) for side in (20.0, 300.0, 600.0)])
    mixed = torch.cat([corners, corners + sides], dim=1)[torch.randperm(30)]
    for boxes, levels in ((mixed, {0, 1, 2}), (mixed[mixed[:, 2] - mixed[:, 0] != 300], {0, 2})):
        reference = MultiScaleRoIAlign(names, 7, 2)
        expected = reference(features, [boxes], [(320, 384)])
        assert set(reference.map_levels([boxes]).tolist()) == levels
        actual = GatheringRoIAlign(names, 7, 2)(features, [boxes], [(320, 384)])
        assert torch.equal(actual, expected)
