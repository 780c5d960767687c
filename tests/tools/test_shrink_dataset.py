"""python -m tools.shrink_dataset: images and boxes shrink together, the set still loads, bad input exits 2."""

import json

import cv2
import pytest

from detector import synthetic
from detector.data import CocoDetectionDataset
from tools.shrink_dataset import main, shrink_factor


@pytest.fixture(scope="module")
def source(tmp_path_factory):
    return synthetic.generate(tmp_path_factory.mktemp("src") / "set", num_images=4, seed=5, image_size=(192, 256))


def test_factor_brings_the_short_side_down_caps_the_long_side_and_never_enlarges():
    assert shrink_factor(640, 480, 320, 544) == pytest.approx(320 / 480)
    assert shrink_factor(1000, 250, 200, 400) == pytest.approx(0.4)  # the long side's cap wins
    assert shrink_factor(200, 100, 320, 544) == 1.0


@pytest.mark.parametrize("encoding", ["jpg", "webp"])
def test_images_and_boxes_shrink_together(source, tmp_path, encoding):
    images, annotations = source
    out = tmp_path / "small"
    argv = ["--images", str(images), "--annotations", str(annotations), "--output", str(out), "--short-side", "96"]
    assert main([*argv, "--format", encoding, "--keep-area"]) == 0
    before, after = json.loads(annotations.read_text()), json.loads((out / "instances.json").read_text())
    for record in after["images"]:
        assert record["file_name"].endswith("." + encoding)
        assert cv2.imread(str(out / "images" / record["file_name"])).shape[:2] == (96, 128)
        assert (record["height"], record["width"]) == (96, 128)
    for old, new in zip(before["annotations"], after["annotations"], strict=True):
        assert new["bbox"] == pytest.approx([v / 2 for v in old["bbox"]], abs=0.01)
        assert new["area"] == old["area"]  # --keep-area
    dataset = CocoDetectionDataset(out / "images", out / "instances.json", train=False)
    image, target = dataset[0]
    assert tuple(image.shape[-2:]) == (96, 128) and len(target["boxes"]) > 0


def test_a_missing_image_exits_2_with_one_line(source, tmp_path, capsys):
    images, annotations = source
    broken = json.loads(annotations.read_text())
    broken["images"][0]["file_name"] = "gone.jpg"
    path = tmp_path / "broken.json"
    path.write_text(json.dumps(broken))
    assert main(["--images", str(images), "--annotations", str(path), "--output", str(tmp_path / "o")]) == 2
    errors = [line for line in capsys.readouterr().err.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "gone.jpg" in errors[0]
