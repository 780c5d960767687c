"""python -m tools.predict: drawn copies of the images and the detections as JSON, as the service sees them."""

import json
from pathlib import Path

import cv2
import numpy as np
import pytest

from detector.categories import Category, CategoryMap
from detector.checkpoint import save_checkpoint
from detector.config import get_config
from detector.model import Detector
from runtime import Detections, load_engine
from tools import predict

CATEGORIES = CategoryMap([Category(3, "car"), Category(18, "dog")])  # labels 1, 2
REPO = Path(__file__).resolve().parents[2]


class FixedEngine:
    """The checkpoint's engine with fixed output: a dog at (10, 20)-(50, 40) and a faint car on every image."""

    def __init__(self, path, threads=1):
        self.real = load_engine(path, threads=threads)
        self.card, self.name, self.shapes = self.real.card, "fixed", []

    def predict(self, images):
        self.shapes += [image.shape for image in images]
        boxes = np.array([[10.0, 20.0, 50.0, 40.0], [0.0, 0.0, 5.0, 5.0]], dtype=np.float32)
        return [Detections(boxes, np.array([2, 1]), np.array([0.9, 0.2], dtype=np.float32)) for _ in images]

    def close(self):
        self.real.close()


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    path = tmp_path_factory.mktemp("ckpt") / "tiny.pt"
    save_checkpoint(Detector(get_config("edge", min_size=64, max_size=96), CATEGORIES), path)
    return path


@pytest.fixture
def images(tmp_path):
    rng = np.random.default_rng(0)
    grey = tmp_path / "grey.png"
    cv2.imwrite(str(grey), rng.integers(0, 255, (60, 80), dtype=np.uint8))
    rgba = tmp_path / "sub" / "grey.png"  # the same file name from another folder
    rgba.parent.mkdir()
    cv2.imwrite(str(rgba), rng.integers(0, 255, (70, 90, 4), dtype=np.uint8))
    return [grey, rgba]


def test_draws_copies_and_prints_json(checkpoint, images, tmp_path, monkeypatch, capsys):
    engines = []

    def load_fixed(path, threads=1):
        engines.append(FixedEngine(path, threads))
        return engines[-1]

    monkeypatch.setattr(predict, "load_engine", load_fixed)
    out = tmp_path / "drawn"
    code = predict.main([*map(str, images), "--model", str(checkpoint), "--out", str(out)])
    stdout, stderr = capsys.readouterr()
    assert code == 0, stderr
    assert "predicting" in stderr  # a progress bar over several images
    report = json.loads(stdout)
    assert [r["image"] for r in report] == list(map(str, images))
    assert [(r["width"], r["height"]) for r in report] == [(80, 60), (90, 70)]
    # Grayscale and RGBA both reach the engine as 3 channels; the larger one shrunk to the model's input (64 px).
    assert engines[0].shapes == [(3, 60, 80), (3, 64, 82)]
    sx, sy = 90 / 82, 70 / 64  # the engine's boxes are in the shrunk array's pixels; the report's in the image's
    boxes = [[10.0, 20.0, 50.0, 40.0], [round(10 * sx, 2), round(20 * sy, 2), round(50 * sx, 2), round(40 * sy, 2)]]
    for r, box in zip(report, boxes, strict=True):  # the 0.2 car is under the default 0.3 threshold
        assert r["detections"] == [{"label": "dog", "category_id": 18, "score": pytest.approx(0.9), "box": box}]
    written = [out / "grey.png", out / "grey_1.png"]
    assert [r["output"] for r in report] == list(map(str, written))
    drawn = cv2.imread(str(written[0]), cv2.IMREAD_COLOR)
    original = cv2.cvtColor(cv2.imread(str(images[0]), cv2.IMREAD_GRAYSCALE), cv2.COLOR_GRAY2BGR)
    assert drawn.shape == original.shape
    assert (drawn[30, 10] != original[30, 10]).any()  # the box's left edge is drawn
    assert (drawn[55, 70] == original[55, 70]).all()  # far from the box, untouched
    assert cv2.imread(str(images[0]), cv2.IMREAD_UNCHANGED).ndim == 2  # the input itself is not modified


def test_threshold_zero_keeps_everything_best_first(checkpoint, images, tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(predict, "load_engine", FixedEngine)
    argv = [str(images[0]), "--model", str(checkpoint), "--out", str(tmp_path), "--score-threshold", "0"]
    assert predict.main(argv) == 0
    detections = json.loads(capsys.readouterr().out)[0]["detections"]
    found = [(d["label"], d["category_id"], round(d["score"], 4)) for d in detections]
    assert found == [("dog", 18, 0.9), ("car", 3, 0.2)]


def test_a_real_checkpoint_runs(checkpoint, images, tmp_path, capsys):
    assert predict.main([str(images[1]), "--model", str(checkpoint), "--out", str(tmp_path)]) == 0
    report = json.loads(capsys.readouterr().out)
    assert (tmp_path / "grey.png").is_file() and isinstance(report[0]["detections"], list)


@pytest.mark.parametrize("problem", ["missing image", "not an image", "missing checkpoint", "a corrupt export"])
def test_bad_input_is_one_line_and_status_2(problem, checkpoint, images, tmp_path, capsys):
    argv = [str(images[0]), "--model", str(checkpoint), "--out", str(tmp_path / "o")]
    if problem == "missing image":
        argv[0], expected = str(tmp_path / "absent.jpg"), "no such image file"
    elif problem == "not an image":
        (tmp_path / "notes.jpg").write_text("not pixels")
        argv[0], expected = (
            str(tmp_path / "notes.jpg"),
            "notes.jpg: not an image: the bytes are not JPEG, PNG, WebP or BMP",
        )
    elif problem == "missing checkpoint":
        argv[2], expected = str(tmp_path / "absent.pt"), "no such checkpoint"
    else:
        (tmp_path / "broken.onnx").write_bytes(b"not a graph")
        argv[2], expected = str(tmp_path / "broken.onnx"), "broken.onnx"
    assert predict.main(argv) == 2
    stdout, stderr = capsys.readouterr()
    assert stdout.strip() in ("", "[]") and len(stderr.strip().splitlines()) == 1
    assert expected in stderr and "Traceback" not in stderr


def test_a_missing_image_is_reported_and_the_others_go_on(checkpoint, images, tmp_path, capsys):
    absent = tmp_path / "absent.jpg"
    argv = [str(images[0]), str(absent), str(images[1]), "--model", str(checkpoint), "--out", str(tmp_path)]
    assert predict.main([*argv, "--no-progress"]) == 2
    stdout, stderr = capsys.readouterr()
    assert [r["image"] for r in json.loads(stdout)] == [str(images[0]), str(images[1])]
    assert stderr.strip().splitlines() == [f"error: {absent}: no such image file"]


def test_a_folder_stands_for_its_images(checkpoint, images, tmp_path, capsys):
    (images[0].parent / "notes.txt").write_text("not an image, and not taken for one")
    argv = [str(images[0].parent), "--model", str(checkpoint), "--out", str(tmp_path / "o"), "--threads", "1"]
    assert predict.main(argv) == 0
    assert [r["image"] for r in json.loads(capsys.readouterr().out)] == [str(images[0])]
