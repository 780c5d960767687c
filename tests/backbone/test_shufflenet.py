"""The networks: the paper's complexity figures, torchvision parity, weight loading, the feature contract."""

import io
import json
import math
import subprocess
import sys
from contextlib import redirect_stdout
from functools import cache
from pathlib import Path

import pytest
import torch
import torchvision

from backbone import BACKBONES, ChannelShuffle, WeightsError, complexity, create_backbone, load_weights

REPO = Path(__file__).resolve().parents[2]


@cache
def _table() -> dict[str, dict]:
    """The table as users get it, ``python -m backbone.complexity --json``, run once in this process."""
    out = io.StringIO()
    with redirect_stdout(out):
        assert complexity.main(["--json"]) == 0
    return {row["name"]: row for row in json.loads(out.getvalue())}


def _row(name: str) -> dict:
    return _table()[name]


# Table 2 of the paper (1x, MFLOPs per group count) and Table 2's scaled rows for g = 3.
@pytest.mark.parametrize(("groups", "mflops"), [(1, 143), (2, 140), (3, 137), (4, 133), (8, 137)])
def test_v1_flops_at_1x_match_the_paper(groups, mflops):
    assert _row(f"shufflenet_v1_g{groups}_1x")["mflops"] == pytest.approx(mflops, rel=0.02)


@pytest.mark.parametrize(("scale", "mflops"), [("0.5x", 38), ("0.25x", 13), ("1.5x", 292), ("2x", 524)])
def test_v1_g3_flops_across_scales(scale, mflops):
    assert _row(f"shufflenet_v1_g3_{scale}")["mflops"] == pytest.approx(mflops, rel=0.05)


@pytest.mark.parametrize(
    ("name", "params"),
    [
        ("shufflenet_v1_g3_1x", 1.9e6),
        ("shufflenet_v1_g3_0.5x", 0.7e6),
        ("shufflenet_v1_g3_2x", 5.4e6),
        ("shufflenet_v1_g8_1x", 2.4e6),
    ],
)
def test_v1_params(name, params):
    assert _row(name)["params"] == pytest.approx(params, rel=0.05)


@pytest.mark.parametrize(
    ("name", "params"),
    [
        ("shufflenet_v2_x0_5", 1_366_792),
        ("shufflenet_v2_x1_0", 2_278_604),
        ("shufflenet_v2_x1_5", 3_503_624),
        ("shufflenet_v2_x2_0", 7_393_996),
    ],
)
def test_v2_params_equal_torchvision(name, params):
    assert sum(p.numel() for p in create_backbone(name).parameters()) == params


def test_complexity_cli_lists_every_config():
    rows = list(_table().values())
    assert len(rows) == len(BACKBONES) == 29
    assert [r["name"] for r in rows] == list(BACKBONES)
    for r in rows:
        assert {"arch", "groups", "scale", "mflops", "params"} <= r.keys()
        assert r["mflops"] > 0 and r["params"] > 0 and r["input_size"] == 224
        assert (r["groups"] is None) == (r["arch"] == "shufflenet_v2")
    assert _row("shufflenet_v2_x1_0")["params"] == 2_278_604


def test_complexity_cli_counts_the_named_configs_and_refuses_unknown_ones(capsys):
    assert complexity.main(["shufflenet_v2_x0_5", "shufflenet_v1_g8_1x"]) == 0
    header, *lines = capsys.readouterr().out.splitlines()
    assert header.split()[:4] == ["backbone", "groups", "scale", "MFLOPs"]
    assert [line.split()[0] for line in lines] == ["shufflenet_v2_x0_5", "shufflenet_v1_g8_1x"]
    with pytest.raises(SystemExit) as exit_info:
        complexity.main(["shufflenet_v3"])
    assert exit_info.value.code == 2 and "unknown backbone shufflenet_v3" in capsys.readouterr().err


def test_complexity_runs_as_a_module():  # the one run as a user runs it, in a new process, at the paper's 224 px
    out = subprocess.run(
        [sys.executable, "-m", "backbone.complexity", "shufflenet_v1_g3_1x", "--json"],
        capture_output=True,
        text=True,
        cwd=REPO,
        timeout=300,
    )
    assert out.returncode == 0, out.stderr
    assert json.loads(out.stdout) == [_row("shufflenet_v1_g3_1x")]
    assert _row("shufflenet_v1_g3_1x")["mflops"] == pytest.approx(137, rel=0.02)  # Table 2


def test_v2_logits_equal_torchvision_after_loading_its_state_dict(tmp_path):
    torch.manual_seed(0)
    reference = torchvision.models.shufflenet_v2_x0_5().eval()
    path = tmp_path / "tv.pt"
    torch.save(reference.state_dict(), path)
    ours = create_backbone("shufflenet_v2_x0_5").eval()
    load_weights(ours, path)
    x = torch.randn(2, 3, 96, 128)
    with torch.no_grad():
        expected, actual = reference(x), ours(x)
    assert actual.shape == (2, 1000)
    assert torch.equal(actual, expected)


@pytest.fixture
def small_weights(tmp_path):
    model = create_backbone("shufflenet_v1_g3_0.25x", num_classes=10)
    path = tmp_path / "w.pt"
    return model, path


def test_load_weights_names_a_missing_key(small_weights):
    model, path = small_weights
    state = model.state_dict()
    del state["fc.bias"]
    torch.save(state, path)
    with pytest.raises(WeightsError, match=r"1 missing: fc\.bias"):
        load_weights(model, path)


def test_load_weights_names_an_extra_key(small_weights):
    model, path = small_weights
    state = model.state_dict()
    state["head.extra"] = torch.zeros(3)
    torch.save(state, path)
    with pytest.raises(WeightsError, match=r"1 unexpected: head\.extra"):
        load_weights(model, path)


def test_load_weights_names_a_missing_or_garbage_file(small_weights):
    model, path = small_weights
    with pytest.raises(WeightsError, match="no such weights file") as missing:
        load_weights(model, path)
    assert str(path) in str(missing.value)
    path.write_bytes(b"not a checkpoint at all")
    with pytest.raises(WeightsError, match="not a readable PyTorch weights file") as garbage:
        load_weights(model, path)
    assert str(path) in str(garbage.value)


def test_load_weights_round_trip_restores_every_tensor(small_weights):
    model, path = small_weights
    torch.save(model.state_dict(), path)
    other = create_backbone("shufflenet_v1_g3_0.25x", num_classes=10)
    load_weights(other, path)
    for key, value in model.state_dict().items():
        assert torch.equal(other.state_dict()[key], value), key


FEATURE_BACKBONES = ["shufflenet_v1_g3_0.5x", "shufflenet_v1_g8_1x", "shufflenet_v2_x0_5", "shufflenet_v2_x1_0"]


@pytest.mark.parametrize("name", FEATURE_BACKBONES)
def test_feature_maps_match_feature_info(name):
    model = create_backbone(name, features_only=True).eval()
    assert [f.stride for f in model.feature_info] == [8, 16, 32]
    for h, w in [(224, 224), (200, 300), (97, 131)]:
        with torch.no_grad():
            maps = model.forward_features(torch.randn(1, 3, h, w))
        assert len(maps) == 3
        for fmap, info in zip(maps, model.feature_info, strict=True):
            assert fmap.shape[1] == info.channels, (name, info)
            assert fmap.shape[2:] == (math.ceil(h / info.stride), math.ceil(w / info.stride)), (name, h, w, info)


@pytest.mark.parametrize("name", FEATURE_BACKBONES)
def test_features_only_has_no_classifier(name):
    full, body = create_backbone(name), create_backbone(name, features_only=True)
    assert any(k.startswith("fc.") for k in full.state_dict())
    assert not any(k.startswith(("fc.", "conv5.")) for k in body.state_dict())
    assert sum(p.numel() for p in body.parameters()) < sum(p.numel() for p in full.parameters())
    with pytest.raises(RuntimeError, match="without a classifier"):
        body(torch.randn(1, 3, 64, 64))


def test_shuffle_false_builds_v1_without_channel_shuffle():
    def count(model):
        return sum(isinstance(m, ChannelShuffle) for m in model.modules())

    with_shuffle = create_backbone("shufflenet_v1_g3_0.5x")
    without = create_backbone("shufflenet_v1_g3_0.5x", shuffle=False)
    assert count(with_shuffle) == 15  # every unit but stage 2's first, whose first conv is ungrouped
    assert count(without) == 0
    assert without.state_dict().keys() == with_shuffle.state_dict().keys()
    with pytest.raises(ValueError, match="shuffle=False"):
        create_backbone("shufflenet_v2_x0_5", shuffle=False)


def test_unknown_backbone_names_the_known_ones():
    with pytest.raises(ValueError, match="unknown backbone 'resnet50'.*shufflenet_v1_g3_1x"):
        create_backbone("resnet50")


@pytest.mark.parametrize("name", ["shufflenet_v1_g3_0.25x", "shufflenet_v2_x0_5"])
def test_features_only_loads_a_classifier_file_of_any_class_count(tmp_path, name):
    # A backbone trained on 10 classes (or ImageNet's 1000) must fit a detector body: the head is left out.
    trained = create_backbone(name, num_classes=10)
    path = tmp_path / "backbone.pt"
    torch.save(trained.state_dict(), path)
    body = create_backbone(name, features_only=True, weights=path)
    for key, value in body.state_dict().items():
        assert torch.equal(value, trained.state_dict()[key]), key
    state = trained.state_dict()
    del state[next(k for k in state if "stage2" in k)]
    torch.save(state, path)
    with pytest.raises(WeightsError, match="1 missing: .*stage2"):
        create_backbone(name, features_only=True, weights=path)
