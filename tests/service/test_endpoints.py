"""Health, readiness, model description, metrics, API docs and the page; batching behaviour seen through HTTP."""

import asyncio
import threading

import cv2
import numpy as np
import pytest

pytestmark = pytest.mark.anyio
RAW = {"content-type": "image/jpeg"}


async def until(condition, timeout: float = 30) -> None:
    """Return once ``condition()`` holds; the timeout is generous, since only a broken service reaches it."""
    deadline = asyncio.get_running_loop().time() + timeout
    while not condition():
        assert asyncio.get_running_loop().time() < deadline, "timed out waiting"
        await asyncio.sleep(0.01)


async def test_healthz_and_readyz_wait_for_warm_up(app_factory, serve):
    app = app_factory(warmup_runs=3)
    async with serve(app) as client:
        assert (await client.get("/healthz")).json() == {"status": "ok"}
        early = await client.get("/readyz")
        assert early.status_code == 503 and early.headers["retry-after"] == "1"
        for _ in range(200):
            if (await client.get("/readyz")).status_code == 200:
                break
            await asyncio.sleep(0.05)
        assert (await client.get("/readyz")).json() == {"status": "ready"}


async def test_model_description(app_factory, serve):
    async with serve(app_factory()) as client:
        info = (await client.get("/v1/model")).json()
    assert info["name"] == "edge" and info["backbone"] == "shufflenet_v2_x0_5"
    assert info["classes"] == [{"id": 1, "name": "person"}, {"id": 3, "name": "car"}, {"id": 18, "name": "dog"}]
    assert info["input_size"] == [320, 427] and (info["min_size"], info["max_size"]) == (320, 544)
    assert info["cost"]["macs"] > 1e8 and info["cost"]["params"] > 5e5  # edge: 0.36 G and 0.74 M for 3 classes
    assert info["provenance"]["note"] == "random" and info["checkpoint"] == "random-edge.pt"


async def test_metrics_count_requests_batches_and_images(app_factory, serve, jpeg):
    async with serve(app_factory()) as client:
        await client.post("/detect", content=jpeg, headers=RAW)
        await client.post("/detect", content=b"junk", headers=RAW)
        await client.get("/no/such/page")
        text = (await client.get("/metrics")).text
    assert 'service_requests_total{method="POST",route="/detect",status="200"} 1.0' in text
    assert 'service_requests_total{method="POST",route="/detect",status="400"} 1.0' in text
    assert 'service_requests_total{method="GET",route="unmatched",status="404"} 1.0' in text
    assert 'service_request_duration_seconds_count{route="/detect"} 2.0' in text
    assert "service_batch_size_count 1.0" in text and 'service_batch_size_bucket{le="1.0"} 1.0' in text
    assert "service_images_processed_total 1.0" in text
    assert "service_queue_depth 0.0" in text


async def test_openapi_documents_the_detect_contract(app_factory, serve):
    async with serve(app_factory()) as client:
        schema = (await client.get("/openapi.json")).json()
        docs = await client.get("/docs")
    detect = schema["paths"]["/detect"]["post"]
    content = detect["requestBody"]["content"]
    assert {"multipart/form-data", "image/jpeg", "image/png", "image/webp", "image/bmp"} <= set(content)
    assert {"files", "file", "score_threshold", "max_detections", "classes"} <= set(
        content["multipart/form-data"]["schema"]["properties"]
    )
    assert {"200", "400", "413", "415", "422", "500", "503", "504"} <= set(detect["responses"])
    assert {p["name"] for p in detect["parameters"]} == {"score_threshold", "max_detections", "classes"}
    assert "DetectResponse" in schema["components"]["schemas"]
    assert {"/healthz", "/readyz", "/metrics", "/v1/model"} <= set(schema["paths"])
    assert docs.status_code == 200 and "swagger" in docs.text.lower()


async def test_page_and_its_sample_image_are_served(app_factory, serve):
    async with serve(app_factory()) as client:
        page = await client.get("/")
        sample = await client.get("/sample.jpg")
        detected = await client.post("/detect", content=sample.content, headers=RAW, params={"score_threshold": 0})
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
    assert 'type="file"' in page.text and "/detect" in page.text and "/sample.jpg" in page.text
    assert sample.headers["content-type"] == "image/jpeg"
    result = detected.json()["results"][0]
    assert (result["width"], result["height"]) == (640, 427) and result["detections"]  # a COCO photo


async def test_concurrent_requests_share_forward_passes(app_factory, serve, fake_model_cls, image_paths):
    model = fake_model_cls(delay=0.05)
    app = app_factory(predict=model, max_batch_size=4, max_wait_ms=100)
    chosen = image_paths[:8]
    async with serve(app) as client:
        responses = await asyncio.gather(
            *(
                client.post("/detect", content=p.read_bytes(), headers=RAW, params={"score_threshold": 0})
                for p in chosen
            )
        )
    assert all(r.status_code == 200 for r in responses)
    assert sum(model.batch_sizes) == 8 and len(model.batch_sizes) < 8
    # Each response carries its own image: the stand-in model boxes the middle half of whatever it was given.
    for response in responses:
        result = response.json()["results"][0]
        w, h = result["width"], result["height"]
        assert result["detections"][0]["box"] == pytest.approx([w / 4, h / 4, 3 * w / 4, 3 * h / 4], abs=1.5)
    assert len({r.json()["results"][0]["detections"][0]["score"] for r in responses}) == 8


async def test_a_failing_batch_fails_only_its_requests(app_factory, serve, fake_model_cls, jpeg):
    # Images under 100 pixels wide make the stand-in model raise.
    model = fake_model_cls(fail_if=lambda image: image.shape[2] < 100)
    tiny = cv2.imencode(".png", np.zeros((50, 50, 3), np.uint8))[1].tobytes()
    app = app_factory(predict=model, max_batch_size=1, max_wait_ms=0)
    async with serve(app) as client:
        good, bad = await asyncio.gather(
            client.post("/detect", content=jpeg, headers=RAW),
            client.post("/detect", content=tiny, headers={"content-type": "image/png"}),
        )
        after = await client.post("/detect", content=jpeg, headers=RAW)
        metrics = (await client.get("/metrics")).text
    assert good.status_code == 200 and after.status_code == 200
    assert bad.status_code == 500 and "RuntimeError: injected failure" in bad.json()["detail"]
    assert "service_failed_batches_total 1.0" in metrics
    assert 'service_rejected_total{reason="batch_failed"} 1.0' in metrics


async def test_overload_gets_503_with_retry_after_at_once(app_factory, serve, fake_model_cls, jpeg):
    model = fake_model_cls(delay=0.3)
    app = app_factory(predict=model, max_batch_size=1, max_wait_ms=0, queue_size=2, max_images_per_request=2)
    async with serve(app) as client:
        responses = await asyncio.gather(*(client.post("/detect", content=jpeg, headers=RAW) for _ in range(8)))
        metrics = (await client.get("/metrics")).text
    statuses = sorted(r.status_code for r in responses)
    assert set(statuses) == {200, 503}, statuses
    assert statuses.count(200) >= 2  # queue_size counts every image admitted: decoding, waiting or running
    refused = [r for r in responses if r.status_code == 503]
    assert all(int(r.headers["retry-after"]) >= 1 and "overloaded" in r.json()["detail"] for r in refused)
    assert all(r.json()["timings"]["total_ms"] < 5000 for r in responses if r.status_code == 200)
    assert f'service_rejected_total{{reason="queue_full"}} {len(refused)}.0' in metrics


async def test_slow_requests_time_out_with_504(app_factory, serve, fake_model_cls, jpeg):
    app = app_factory(predict=fake_model_cls(delay=0.5), max_batch_size=1, max_wait_ms=0, request_timeout_s=0.2)
    async with serve(app) as client:
        response = await client.post("/detect", content=jpeg, headers=RAW)
        assert response.status_code == 504 and "timed out" in response.json()["detail"]


async def test_a_client_that_disconnects_leaves_no_work(app_factory, serve, fake_model_cls, jpeg):
    # The model stays busy with the first request until the second has been decoded, queued and withdrawn.
    release = threading.Event()
    model = fake_model_cls(hold=release)
    app = app_factory(predict=model, max_batch_size=1, max_wait_ms=0)
    async with serve(app) as client:
        busy = asyncio.ensure_future(client.post("/detect", content=jpeg, headers=RAW))
        await until(lambda: model.batch_sizes == [1])
        gone = asyncio.Event()
        sent: list[dict] = []
        messages = [{"type": "http.request", "body": jpeg, "more_body": False}]

        async def receive():
            if messages:
                return messages.pop(0)
            await gone.wait()
            return {"type": "http.disconnect"}

        async def send(message):
            sent.append(message)

        scope = {
            "type": "http",
            "asgi": {"version": "3.0"},
            "http_version": "1.1",
            "method": "POST",
            "scheme": "http",
            "path": "/detect",
            "raw_path": b"/detect",
            "query_string": b"",
            "root_path": "",
            "headers": [(b"content-type", b"image/jpeg"), (b"host", b"service")],
            "client": ("127.0.0.1", 1234),
            "server": ("service", 80),
            "state": {},
        }
        abandoned = asyncio.ensure_future(app(scope, receive, send))
        batcher = app.state.batcher
        await until(lambda: batcher.depth == 1)
        gone.set()
        await asyncio.wait_for(abandoned, 30)
        assert batcher.depth == 0  # withdrawn while the model was still busy with the first request
        release.set()
        assert (await busy).status_code == 200
    assert model.batch_sizes == [1], "the abandoned image never reached the model"
