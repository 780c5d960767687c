"""Against a real ``python -m service`` process on 127.0.0.1: the same contract over real sockets."""

import signal
import socket
import time
from concurrent.futures import ThreadPoolExecutor
from urllib.parse import urlparse

import cv2
import httpx
import pytest

from .conftest import read_head

RAW = {"content-type": "image/jpeg"}


def post_image(url: str, data: bytes, **kwargs) -> httpx.Response:
    return httpx.post(f"{url}/detect", content=data, headers=RAW, timeout=60, **kwargs)


def raw_exchange(url: str, request: bytes, *, then: bytes = b"", read_timeout: float = 10) -> bytes:
    """Send bytes on a fresh connection and return what the server answers (up to its first response)."""
    address = urlparse(url)
    with socket.create_connection((address.hostname, address.port), timeout=read_timeout) as sock:
        sock.sendall(request)
        if then:
            try:
                sock.sendall(then)
            except OSError:  # the server may stop reading once it has answered
                pass
        return read_head(sock)


def test_happy_path_with_real_images(server, image_paths):
    chosen = image_paths[:3]
    response = httpx.post(
        f"{server.url}/detect",
        params={"score_threshold": 0},
        files=[("files", (p.name, p.read_bytes(), "image/jpeg")) for p in chosen],
        timeout=60,
    )
    assert response.status_code == 200, response.text
    for path, result in zip(chosen, response.json()["results"], strict=True):
        height, width = cv2.imread(str(path)).shape[:2]
        assert (result["width"], result["height"]) == (width, height)
        assert result["detections"]
    single = post_image(server.url, chosen[0].read_bytes())
    assert single.status_code == 200
    assert httpx.get(f"{server.url}/healthz").json() == {"status": "ok"}
    assert httpx.get(f"{server.url}/v1/model").json()["name"] == "edge"


def test_concurrent_requests_are_batched(server, image_paths):
    chosen = image_paths[10:18]
    passes_before = server.metric("service_batch_size_count")
    with ThreadPoolExecutor(8) as pool:
        responses = list(pool.map(lambda p: post_image(server.url, p.read_bytes()), chosen))
    passes = server.metric("service_batch_size_count") - passes_before
    assert all(r.status_code == 200 for r in responses)
    assert passes < len(chosen), f"{len(chosen)} requests took {passes} forward passes"
    for path, response in zip(chosen, responses, strict=True):
        height, width = cv2.imread(str(path)).shape[:2]
        result = response.json()["results"][0]
        assert (result["width"], result["height"]) == (width, height)
    assert max(max(r.json()["timings"]["batch_sizes"]) for r in responses) > 1


def test_body_over_the_limit_is_refused_before_it_is_read(server):
    declared = b"POST /detect HTTP/1.1\r\nHost: x\r\nContent-Type: image/jpeg\r\nContent-Length: 1000000000\r\n\r\n"
    answer = raw_exchange(server.url, declared)
    assert answer.startswith(b"HTTP/1.1 413"), answer[:200]
    # Chunked, no length declared: the 413 comes while the client is still sending.
    chunked = b"POST /detect HTTP/1.1\r\nHost: x\r\nContent-Type: image/jpeg\r\nTransfer-Encoding: chunked\r\n\r\n"
    chunk = b"100000\r\n" + bytes(0x100000) + b"\r\n"
    answer = raw_exchange(server.url, chunked, then=chunk * 24)  # 24 MiB, never terminated
    assert answer.startswith(b"HTTP/1.1 413"), answer[:200]


def test_client_that_disconnects_does_not_block_others(server, jpeg):
    request = (
        b"POST /detect HTTP/1.1\r\nHost: x\r\nContent-Type: image/jpeg\r\n"
        + f"Content-Length: {len(jpeg)}\r\n\r\n".encode()
        + jpeg
    )
    address = urlparse(server.url)
    for _ in range(5):  # send a whole request, then hang up without reading the answer
        with socket.create_connection((address.hostname, address.port)) as sock:
            sock.sendall(request)
    start = time.monotonic()
    assert post_image(server.url, jpeg).status_code == 200
    assert time.monotonic() - start < 10
    assert server.metric("service_queue_depth") == 0


@pytest.mark.slow  # a server of its own: 3 s; test_hostile's overload test runs one too
def test_overload_gets_503_at_once(start_server, jpeg):
    with start_server("--queue-size", "2", "--max-images-per-request", "2", "--max-batch-size", "1") as live:
        with ThreadPoolExecutor(16) as pool:
            responses = list(pool.map(lambda _: post_image(live.url, jpeg), range(32)))
    statuses = [r.status_code for r in responses]
    assert set(statuses) == {200, 503}, statuses
    assert all("retry-after" in r.headers for r in responses if r.status_code == 503)


@pytest.mark.slow  # a server of its own: 2 s; tests/service/test_auth.py covers the key in-process
def test_api_key_on_a_real_server(start_server, jpeg):
    with start_server(env={"SERVICE_API_KEY": "k3y"}) as live:
        assert httpx.get(f"{live.url}/healthz").status_code == 200
        assert httpx.get(f"{live.url}/v1/model").status_code == 401
        assert post_image(live.url, jpeg).status_code == 401
        assert post_image(live.url, jpeg, params={}).status_code == 401
        assert httpx.get(f"{live.url}/v1/model", headers={"X-API-Key": "k3y"}).status_code == 200


def test_sigterm_finishes_accepted_requests_then_exits(start_server, image_paths):
    with start_server("--max-batch-size", "1", "--max-wait-ms", "0") as live:
        with ThreadPoolExecutor(6) as pool:
            futures = [pool.submit(post_image, live.url, p.read_bytes()) for p in image_paths[:6]]
            deadline = time.monotonic() + 10
            while live.metric("service_queue_depth") < 2 and time.monotonic() < deadline:
                time.sleep(0.01)
            live.process.send_signal(signal.SIGTERM)
            responses = [f.result() for f in futures]
        assert [r.status_code for r in responses] == [200] * 6
        # uvicorn re-raises the signal once shut down, so the exit status says "ended by SIGTERM".
        assert live.process.wait(timeout=30) in (0, -signal.SIGTERM)
        with pytest.raises(httpx.ConnectError):
            httpx.get(f"{live.url}/healthz", timeout=2)
        log = live.log.read_text()
        assert "Application shutdown complete" in log and "Traceback" not in log, log
