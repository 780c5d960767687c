"""``python -m tools.export``: a checkpoint becomes an ONNX file that detects the same and describes itself."""

import subprocess
import sys
from pathlib import Path

import onnx
import pytest
import torch

from detector import CategoryMap, Detector, get_config, save_checkpoint
from detector.categories import Category
from runtime import load_engine
from tools.export import compare_engines, export_onnx, main

REPO = Path(__file__).resolve().parents[2]


def export_cli(*args: str) -> subprocess.CompletedProcess:
    command = [sys.executable, "-m", "tools.export", *args]
    return subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=300)


def test_export_round_trips_the_card_and_the_detections(tmp_path):
    torch.manual_seed(0)
    categories = CategoryMap([Category(1, "person"), Category(18, "dog")])
    # Left in training mode: the export must still take the test-time input size (320), not a training one.
    detector = Detector(get_config("edge", box_score_thresh=0.0), categories, provenance={"note": "random"}).train()
    checkpoint, exported = tmp_path / "random.pt", tmp_path / "random.onnx"
    save_checkpoint(detector, checkpoint)
    export_onnx(detector, exported)
    card = load_engine(exported).card
    assert card.config == detector.config and card.categories == categories
    assert card.provenance["note"] == "random" and card.cost["params"] > 5e5
    check = compare_engines(checkpoint, exported)
    assert check["detections"] > 0, "random weights at score threshold 0 still detect, so boxes were compared"
    assert check["box_px"] < 0.05 and check["score"] < 1e-4
    # The input is interpolated only in a branch (the engines give it at the input size, where scale 1 skips
    # it); the check above ran both branches: synthetic images to resize, photos shrunk beforehand.
    graph = onnx.load(exported).graph
    assert not [node.name for node in graph.node if node.op_type == "Resize" and "/transform/" in node.name]
    branches = [a.g for node in graph.node if node.op_type == "If" for a in node.attribute if a.type == a.GRAPH]
    assert any(node.op_type == "Resize" for branch in branches for node in branch.node)


def test_cli_exports_next_to_the_checkpoint(tmp_path):  # the one run as a user runs it, in a new process
    checkpoint = tmp_path / "demo-copy.pt"
    checkpoint.write_bytes((REPO / "models" / "demo.pt").read_bytes())
    out = export_cli("--checkpoint", str(checkpoint))
    assert out.returncode == 0, out.stderr
    assert (tmp_path / "demo-copy.onnx").is_file()
    assert "boxes within" in out.stdout


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--checkpoint", "nowhere.pt"], "nowhere.pt: no such checkpoint file"),
        (
            ["--checkpoint", str(REPO / "models" / "demo.onnx")],
            "demo.onnx: an ONNX export, not a checkpoint; give the .pt",
        ),
        (["--output", "model.bin"], "must end in .onnx"),
    ],
)
def test_bad_arguments_exit_2_with_one_line(args, message, capsys):
    try:
        assert main(args) == 2
    except SystemExit as exit_info:  # argparse's own errors
        assert exit_info.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert message in err[-1] and not any("Traceback" in line for line in err)
