"""bench/peers.py compares like with like: every model at the same short side, figures in its JSON."""

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


def test_every_model_is_timed_at_its_test_short_side(peers):
    models = {name: model.eval() for name, model in peers.build_models("edge", [{"box_head_width": 64}]).items()}
    sides = {name: peers.eval_short_side(model) for name, model in models.items()}
    # Ours trains on several scales up to 384 but tests at 320, like the 320 peers; the paper config at 600.
    assert sides.pop("ours:paper_1x_g3_600") == 600
    assert set(sides.values()) == {320}, sides


def test_json_report_holds_the_ratios(peers, capsys):
    assert (
        peers.main(["--json", "--rounds", "1", "--batch-sizes", "1", "--no-paper", "--no-nanodet", "--threads", "1"])
        == 0
    )
    report = json.loads(capsys.readouterr().out)
    assert {r["short_side"] for r in report["rows"]} == {320}
    ratio = report["ratio_vs_fasterrcnn_mobilenet_v3_large_320_fpn"]
    assert ratio == report["ratios"]["fasterrcnn_mobilenet_v3_large_320_fpn"]["1"] > 0


def test_nanodet_m_on_the_same_engine(peers, capsys, nanodet_ir, coco128):
    # The demo export stands in for the shipped one: the comparison's mechanics, not its figures.
    argv = ["--json", "--rounds", "1", "--batch-sizes", "1", "2", "--no-paper", "--threads", "1"]
    argv += ["--export", str(peers.REPO / "models" / "demo.onnx"), "--images", str(coco128 / "images")]
    assert peers.main(argv) == 0
    report = json.loads(capsys.readouterr().out)
    engine_rows = [r for r in report["rows"] if "openvino" in r["model"]]
    assert {(r["model"], r["batch"]) for r in engine_rows} == {
        (name, batch) for name in ("ours:demo.onnx (openvino)", "nanodet_m (openvino)") for batch in (1, 2)
    }
    assert report["ratio_vs_nanodet_m"] == min(report["ratios"]["nanodet_m"].values()) > 0
