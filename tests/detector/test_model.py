"""The detector builder on every configuration, and its complexity report."""

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from detector import CONFIGS, DEFAULT_CONFIG, Detector, DetectorConfig, get_config
from detector.categories import Category, CategoryMap
from detector.complexity import detector_complexity

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
    with pytest.raises(ValueError, match="unknown detector config fields: neck"):
        get_config("edge", neck=3)
    with pytest.raises(ValueError, match="unknown detector config 'nope'"):
        get_config("nope")


def test_edge_default_is_far_lighter_than_the_papers_settings():
    edge = detector_complexity(CONFIGS["edge"])
    paper = detector_complexity(CONFIGS["paper_1x_g3_300"])
    assert set(edge["macs_by_part"]) == {"backbone", "neck", "rpn", "roi_head"}
    assert sum(edge["macs_by_part"].values()) == pytest.approx(edge["macs"], rel=1e-6)
    assert edge["macs"] < paper["macs"] / 5
    assert edge["params"] < paper["params"] / 3


def test_complexity_cli_prints_every_config():
    out = subprocess.run(
        [sys.executable, "-m", "detector.complexity"], cwd=REPO, capture_output=True, text=True, check=True
    ).stdout
    assert all(name in out for name in CONFIGS)
    row = json.loads(
        subprocess.run(
            [sys.executable, "-m", "detector.complexity", "--config", "edge", "--json"],
            cwd=REPO,
            capture_output=True,
            text=True,
            check=True,
        ).stdout
    )
    assert row["config"] == "edge" and row["macs"] > 0
