"""One way to see an image: ``python -m tools.predict`` and ``POST /detect`` give the same detections for the
same model file and images, each at its default threshold: the export on a real server (what `make serve`
runs), the checkpoint on the app in-process (the same app code, without a second torch import)."""

import asyncio
import json
from pathlib import Path

import cv2
import httpx
import pytest

from detector.config import DEFAULT_CHECKPOINT, DEFAULT_EXPORT
from service import Settings, create_app
from tools import predict

from .conftest import live_server, serving

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def photos(tmp_path_factory) -> list[Path]:
    """The page's sample, the bundled COCO photos, and one of them as PNG (the decoder's other path)."""
    paths = [REPO / "service" / "static" / "sample.jpg", *sorted((REPO / "data" / "sample" / "images").glob("*.jpg"))]
    png = tmp_path_factory.mktemp("png") / "as_png.png"
    cv2.imwrite(str(png), cv2.imread(str(paths[1])))
    return [*paths, png]


def _bodies(photos: list[Path]) -> list[tuple[bytes, dict]]:
    return [
        (path.read_bytes(), {"content-type": "image/png" if path.suffix == ".png" else "image/jpeg"}) for path in photos
    ]


def _served_by_a_real_server(model: Path, photos: list[Path], tmp_path: Path) -> list[dict]:
    with live_server(model, tmp_path, "--max-batch-size", "1") as live:
        responses = [
            httpx.post(f"{live.url}/detect", content=body, headers=headers, timeout=60)
            for body, headers in _bodies(photos)
        ]
    assert all(r.status_code == 200 for r in responses), [r.text for r in responses]
    return [r.json()["results"][0] for r in responses]


def _served_in_process(model: Path, photos: list[Path]) -> list[dict]:
    async def run() -> list[httpx.Response]:
        app = create_app(Settings(checkpoint=model, max_batch_size=1, threads=1))
        async with serving(app, timeout=60) as client:
            return [await client.post("/detect", content=body, headers=headers) for body, headers in _bodies(photos)]

    responses = asyncio.run(run())
    assert all(r.status_code == 200 for r in responses), [r.text for r in responses]
    return [r.json()["results"][0] for r in responses]


@pytest.mark.parametrize("model", [DEFAULT_EXPORT, DEFAULT_CHECKPOINT], ids=["onnx", "checkpoint"])
def test_the_command_line_and_the_service_agree(model, photos, tmp_path, capsys):
    if model.suffix == ".onnx":
        served = _served_by_a_real_server(model, photos, tmp_path)
    else:
        served = _served_in_process(model, photos)
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
