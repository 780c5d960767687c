"""bench/peers.py times every model at its own test input size, and its JSON holds the ratios."""

import importlib.util
import json
from pathlib import Path

import pytest

PEERS = Path(__file__).resolve().parents[2] / "bench" / "peers.py"


@pytest.fixture(scope="module")
def peers():
    spec = importlib.util.spec_from_file_location("bench_peers", PEERS)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_every_model_is_timed_at_its_test_input_size(peers):
    models = {name: model.eval() for name, model in peers.build_models("coco_edge", [{"box_head_width": 64}]).items()}
    sizes = {name: peers.eval_input_size(model) for name, model in models.items()}
    # Ours trains at short side 320 (long side up to 544) but tests at NanoDet-m's long side 320; torchvision's
    # mobile Faster R-CNN tests at short side 320, SSDlite at a fixed 320 x 320, the paper's config at 600.
    assert sizes == {
        "ours:coco_edge": (240, 320),
        "variant:box_head_width=64": (240, 320),
        "fasterrcnn_mobilenet_v3_large_320_fpn": (320, 426),
        "ssdlite320_mobilenet_v3_large": (320, 320),
        "ours:paper_1x_g3_600": (600, 800),
    }


def test_json_report_holds_the_ratios(peers, capsys):
    assert (
        peers.main(["--json", "--rounds", "1", "--batch-sizes", "1", "--no-paper", "--no-nanodet", "--threads", "1"])
        == 0
    )
    report = json.loads(capsys.readouterr().out)
    assert {tuple(r["input_hw"]) for r in report["rows"] if r["model"] == "ours:coco_edge"} == {(240, 320)}
    ratio = report["ratio_vs_fasterrcnn_mobilenet_v3_large_320_fpn"]
    assert ratio == report["ratios"]["fasterrcnn_mobilenet_v3_large_320_fpn"]["1"] > 0


@pytest.mark.slow  # two OpenVINO engines and NanoDet-m compiled, coco128 photos timed: 10 s
def test_nanodet_m_on_the_same_engine(peers, capsys, nanodet_ir, coco128):
    # The demo export stands in for the shipped one: the comparison's mechanics, not its figures.
    argv = [
        "--json",
        "--rounds",
        "1",
        "--batch-sizes",
        "1",
        "2",
        "--no-paper",
        "--threads",
        "1",
        "--openvino-shapes",
        "1",
        "--no-torchvision",  # the PyTorch section is the test above
    ]
    argv += ["--export", str(peers.REPO / "models" / "demo.onnx"), "--images", str(coco128 / "images")]
    assert peers.main(argv) == 0
    report = json.loads(capsys.readouterr().out)
    engine_rows = [r for r in report["rows"] if "openvino" in r["model"]]
    assert sorted((r["model"], r["images"], r["batch"]) for r in engine_rows) == sorted(
        (name, images, batch)
        for name in ("ours:demo.onnx (openvino)", "nanodet_m (openvino)")
        for images in ("mixed", "one shape")
        for batch in (1, 2)
    )
    assert report["ratio_vs_nanodet_m"] == min(report["ratios"]["nanodet_m"].values()) > 0
    assert set(report["ratios"]) == {"nanodet_m", "nanodet_m_one_shape"}
    assert {r["model"] for r in report["rows"]} == {r["model"] for r in engine_rows}
    assert report["ratio_vs_nanodet_m_one_shape"] == min(report["ratios"]["nanodet_m_one_shape"].values()) > 0
    # coco128's first 4 photos have 4 input shapes, each seen twice in the warm-up (one may have its own graph);
    # then 4 photos of one shape.
    assert report["openvino_input_shapes"] == {
        "nanodet_m": {"distinct": 4, "with_own_graph": 1},
        "nanodet_m_one_shape": {"distinct": 1, "with_own_graph": 1},
    }


def test_skipping_both_comparisons_is_a_usage_error(peers, capsys):
    with pytest.raises(SystemExit) as exit_info:
        peers.main(["--no-torchvision", "--no-nanodet"])
    assert exit_info.value.code == 2
    assert "leave nothing to time" in capsys.readouterr().err
