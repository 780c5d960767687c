"""One way to see an image: ``python -m tools.predict`` and ``POST /detect`` on a real server give the same
detections for the same model file and images, each at its default threshold."""

import json
from pathlib import Path

import cv2
import httpx
import pytest

from detector.config import DEFAULT_CHECKPOINT, DEFAULT_EXPORT
from tools import predict

from .conftest import live_server

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def photos(tmp_path_factory) -> list[Path]:
    """The page's sample, the bundled COCO photos, and one of them as PNG (the decoder's other path)."""
    paths = [REPO / "service" / "static" / "sample.jpg", *sorted((REPO / "data" / "sample" / "images").glob("*.jpg"))]
    png = tmp_path_factory.mktemp("png") / "as_png.png"
    cv2.imwrite(str(png), cv2.imread(str(paths[1])))
    return [*paths, png]


@pytest.mark.parametrize("model", [DEFAULT_EXPORT, DEFAULT_CHECKPOINT], ids=["onnx", "checkpoint"])
def test_the_command_line_and_the_service_agree(model, photos, tmp_path, capsys):
    with live_server(model, tmp_path, "--max-batch-size", "1") as live:
        served = []
        for path in photos:
            content_type = "image/png" if path.suffix == ".png" else "image/jpeg"
            response = httpx.post(
                f"{live.url}/detect", content=path.read_bytes(), headers={"content-type": content_type}, timeout=60
            )
            assert response.status_code == 200, response.text
            served.append(response.json()["results"][0])
    assert (
        predict.main([*map(str, photos), "--model", str(model), "--out", str(tmp_path / "drawn"), "--threads", "1"])
        == 0
    )
    printed = json.loads(capsys.readouterr().out)
    assert len(printed) == len(served) == len(photos)
    found = 0
    for cli, api in zip(printed, served, strict=True):
        assert (cli["width"], cli["height"]) == (api["width"], api["height"])
        assert [d["label"] for d in cli["detections"]] == [d["label"] for d in api["detections"]], cli["image"]
        for a, b in zip(cli["detections"], api["detections"], strict=True):
            assert a["score"] == pytest.approx(b["score"], abs=1e-5)
            assert a["box"] == pytest.approx(b["box"], abs=0.02)
        found += len(cli["detections"])
    assert found >= len(photos)  # real objects were found, so the comparison compared something
