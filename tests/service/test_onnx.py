"""The service on the ONNX Runtime engine: the edge image's configuration, with torch absent from the process."""

import asyncio
import sys
from pathlib import Path

import cv2
import httpx
import numpy as np
import pytest

from detector import DEMO_EXPORT

from .conftest import live_server

REPO = Path(__file__).resolve().parents[2]
SAMPLE = REPO / "data" / "sample" / "shapes.jpg"
# ``python -m service`` in a process where importing torch fails, as in the edge image.
WITHOUT_TORCH = [
    sys.executable,
    "-c",
    "import runpy, sys; sys.modules['torch'] = sys.modules['torchvision'] = None; "
    "runpy.run_module('service', run_name='__main__', alter_sys=True)",
]


@pytest.fixture(scope="module")
def onnx_server(tmp_path_factory):
    with live_server(
        DEMO_EXPORT,
        tmp_path_factory.mktemp("onnx"),
        "--threads",
        "2",
        "--max-batch-size",
        "4",
        launcher=WITHOUT_TORCH,
    ) as live:
        yield live


def test_serves_the_demo_export_without_torch(onnx_server):
    info = httpx.get(f"{onnx_server.url}/v1/model", timeout=10).json()
    assert info["engine"] == "onnxruntime" and info["checkpoint"] == "demo.onnx" and info["name"] == "edge"
    assert [c["name"] for c in info["classes"]] == ["circle", "square", "triangle", "star"]
    response = httpx.post(
        f"{onnx_server.url}/detect", content=SAMPLE.read_bytes(), headers={"content-type": "image/jpeg"}, timeout=30
    )
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["model"]["engine"] == "onnxruntime"
    (result,) = body["results"]
    assert (result["width"], result["height"]) == (512, 384)
    confident = [d for d in result["detections"] if d["score"] >= 0.5]
    assert len(confident) >= 5, result  # the sample holds 6 shapes
    for detection in confident:
        x1, y1, x2, y2 = detection["box"]
        assert 0 <= x1 < x2 <= 512 and 0 <= y1 < y2 <= 384


def test_concurrent_requests_each_get_their_own_results(onnx_server):
    # The sample and its mirror image, sent at once: each answer must be its own image's.
    sample = SAMPLE.read_bytes()
    mirrored = cv2.imencode(".jpg", cv2.imread(str(SAMPLE))[:, ::-1])[1].tobytes()

    async def send(client, data):
        response = await client.post("/detect", content=data, headers={"content-type": "image/jpeg"})
        assert response.status_code == 200, response.text
        return response.json()["results"][0]["detections"]

    async def main():
        async with httpx.AsyncClient(base_url=onnx_server.url, timeout=60) as client:
            return await asyncio.gather(*(send(client, data) for data in [sample, mirrored] * 4))

    passes_before = onnx_server.metric("service_batch_size_count")
    answers = asyncio.run(main())
    for i, detections in enumerate(answers):
        best = max(detections, key=lambda d: d["score"])
        reference = max(answers[i % 2], key=lambda d: d["score"])
        assert np.allclose(best["box"], reference["box"], atol=0.5)
    plain, mirror = (max(a, key=lambda d: d["score"])["box"] for a in answers[:2])
    assert np.allclose([512 - plain[2], 512 - plain[0]], [mirror[0], mirror[2]], atol=8)  # re-encoded: close, not equal
    assert onnx_server.metric("service_batch_size_count") - passes_before < 8  # fewer passes than requests
