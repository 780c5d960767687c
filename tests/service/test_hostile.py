"""Hostile clients against a real ``python -m service`` on 127.0.0.1 (issue 13): every attack is answered at once
with a 4xx or a 503, and the service stays responsive.

One server with small limits serves most tests (read timeout 1 s, request timeout 1 s, one decode thread, a
body budget of one body, a decode budget of two 24 MP 16-bit images, three admitted images), so each limit is reached
with a few requests.
"""

import os
import signal
import socket
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from urllib.parse import urlparse

import cv2
import httpx
import numpy as np
import pytest

from detector import DEMO_EXPORT

from .conftest import live_server, read_head

REPO = Path(__file__).resolve().parents[2]
RAW = {"content-type": "image/jpeg"}
REFUSED_DETECT = 'service_requests_total{method="POST",route="/detect",status="503"}'
LIMITS = ["--read-timeout-s", "1", "--request-timeout-s", "1", "--decode-workers", "1", "--max-batch-size", "1"]
LIMITS += ["--max-body-bytes", "2000000", "--body-budget-bytes", "2000000", "--decode-budget-pixels", "96100000"]
LIMITS += ["--queue-size", "3", "--max-images-per-request", "3", "--max-header-bytes", "4096", "--max-headers", "20"]


@pytest.fixture(scope="module")
def guarded(launch_server, tmp_path_factory):
    with launch_server(tmp_path_factory.mktemp("hostile"), *LIMITS, "--access-log") as live:
        yield live


@pytest.fixture(scope="module")
def flat_png16() -> bytes:
    """The issue's attack image: 5999 x 4000, 16-bit, flat: 148 KB that decode to 144 MB, about 0.5 s each."""
    ok, data = cv2.imencode(".png", np.zeros((4000, 5999, 3), np.uint16))
    assert ok
    return data.tobytes()


def connect(url: str) -> socket.socket:
    address = urlparse(url)
    return socket.create_connection((address.hostname, address.port), timeout=15)


def post(url: str, data: bytes, **kwargs) -> httpx.Response:
    return httpx.post(f"{url}/detect", content=data, headers=RAW, timeout=30, **kwargs)


def budget(live, name: str) -> float:
    return live.metric(f'service_budget_used{{budget="{name}"}}')


def wait_until(predicate, timeout: float = 10) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "timed out waiting"
        time.sleep(0.02)


@pytest.mark.parametrize(
    "head",
    [
        b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-Big: " + b"a" * 100_000 + b"\r\n\r\n",  # 1 MiB was accepted
        b"GET /healthz HTTP/1.1\r\nHost: x\r\n" + b"".join(b"X-%d: 1\r\n" % i for i in range(5000)) + b"\r\n",
    ],
    ids=["large-head", "many-lines"],
)
def test_oversized_heads_get_431(guarded, head):
    with connect(guarded.url) as sock:
        sock.sendall(head)
        assert read_head(sock).startswith(b"HTTP/1.1 431"), head[:40]


def test_a_stalled_head_or_body_gets_408(guarded, jpeg):
    start = time.monotonic()
    with connect(guarded.url) as head, connect(guarded.url) as body:
        head.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\n")
        body.sendall(b"POST /detect HTTP/1.1\r\nHost: x\r\nContent-Type: image/jpeg\r\nContent-Length: 100000\r\n\r\n")
        body.sendall(jpeg[:1000])
        assert read_head(head).startswith(b"HTTP/1.1 408")
        assert read_head(body).startswith(b"HTTP/1.1 408")
    assert time.monotonic() - start < 5


def test_the_body_budget_refuses_large_bodies_at_once_and_is_given_back(guarded, jpeg):
    head = b"POST /detect HTTP/1.1\r\nHost: x\r\nContent-Type: image/jpeg\r\nContent-Length: %d\r\n\r\n"
    with connect(guarded.url) as first, connect(guarded.url) as second:  # two stalled bodies fill the budget
        for stalled in (first, second):
            stalled.sendall(head % 2_000_000 + jpeg[:1000])  # (each body's first MiB is not counted)
        wait_until(lambda: budget(guarded, "body_bytes") > 1_800_000)
        refusals = guarded.metric(REFUSED_DETECT)
        start = time.monotonic()
        with connect(guarded.url) as large:
            large.sendall(head % 1_200_000)
            refused = read_head(large)
            while chunk := large.recv(65536):  # then the body, until the server closes
                refused += chunk
        assert refused.startswith(b"HTTP/1.1 503") and b"retry-after" in refused.lower(), refused
        assert b'{"detail": "overloaded: request bodies in flight hold' in refused  # JSON, as the app's errors
        assert time.monotonic() - start < 1
        assert guarded.metric(REFUSED_DETECT) == refusals + 1  # counted, though the protocol answered it
        assert post(guarded.url, jpeg).status_code == 200  # a one-photo body still gets in
        assert read_head(first).startswith(b"HTTP/1.1 408") and read_head(second).startswith(b"HTTP/1.1 408")
    wait_until(lambda: budget(guarded, "body_bytes") == 0)


def test_decoding_is_budgeted(guarded, flat_png16, jpeg):
    files = [("files", (f"flat{i}.png", flat_png16, "image/png")) for i in range(3)]
    too_many = httpx.post(f"{guarded.url}/detect", files=files, timeout=30)  # 3 x 24 MP x 16 bits: over the budget
    assert too_many.status_code == 413 and "pixels to decode" in too_many.json()["detail"]
    with ThreadPoolExecutor(1) as pool:
        slow = pool.submit(httpx.post, f"{guarded.url}/detect", files=files[:2], timeout=30)  # ~0.7 s each
        wait_until(lambda: budget(guarded, "decode_pixels") > 0)
        start = time.monotonic()
        refused = post(guarded.url, jpeg)
        assert refused.status_code == 503 and "being decoded" in refused.json()["detail"], refused.text
        assert time.monotonic() - start < 1
        late = slow.result()
    assert late.status_code in (200, 504), late.text  # 504 when decoding outlasted the 1 s timeout (next test)
    wait_until(lambda: budget(guarded, "decode_pixels") == 0)  # given back when the decode thread is done
    assert post(guarded.url, jpeg).status_code == 200


@pytest.mark.slow  # a server of its own: 2.5 s; test_endpoints times out in-process
def test_decoding_counts_against_the_request_timeout(launch_server, tmp_path_factory, flat_png16):
    # Two 24 MP 16-bit PNGs take about 0.3 s each to decode, one after the other (one decode worker): far past
    # a 0.1 s timeout on any machine, so the answer is 504, not a late 200.
    files = [("files", (f"flat{i}.png", flat_png16, "image/png")) for i in range(2)]
    with launch_server(tmp_path_factory.mktemp("timeout"), *LIMITS, "--request-timeout-s", "0.1") as live:
        late = httpx.post(f"{live.url}/detect", files=files, timeout=30)
    assert late.status_code == 504 and "not decoded within 0.1 s" in late.json()["detail"], late.text


def test_no_image_is_decoded_for_a_request_refused_later(start_server, jpeg):
    """Under overload, every 503 comes before decoding (17% came after it: the batcher's own late check)."""
    with start_server("--queue-size", "3", "--max-images-per-request", "3", "--max-batch-size", "1") as live:
        with ThreadPoolExecutor(12) as pool:
            responses = list(pool.map(lambda _: post(live.url, jpeg), range(36)))
        statuses = [r.status_code for r in responses]
        assert set(statuses) == {200, 503}, statuses
        assert live.metric("service_images_decoded_total") == statuses.count(200)


def test_thin_images_are_detected(guarded):
    for height, width in ((4000, 1), (1, 4000)):
        for ext, kind in ((".png", "image/png"), (".jpg", "image/jpeg")):
            data = cv2.imencode(ext, np.full((height, width, 3), 200, np.uint8))[1].tobytes()
            response = httpx.post(f"{guarded.url}/detect", content=data, headers={"content-type": kind}, timeout=30)
            assert response.status_code == 200, (height, width, ext, response.text)


def test_a_hostile_header_scan_does_not_stall_the_server(server):
    """19 MB of empty JPEG segments froze the old server's event loop for 4.3 s each (/healthz took 4 s)."""
    segments = b"\xff\xd8" + b"\xff\xe0\x00\x02" * (19 * 2**20 // 4)
    with ThreadPoolExecutor(3) as pool:
        attacks = [pool.submit(post, server.url, segments) for _ in range(3)]
        wait_until(lambda: budget(server, "body_bytes") > 0 or all(a.done() for a in attacks))
        start = time.monotonic()
        assert httpx.get(f"{server.url}/healthz", timeout=10).status_code == 200
        assert time.monotonic() - start < 1.5
        statuses = [a.result().status_code for a in attacks]
    assert statuses == [400] * 3, statuses


def test_credentials_in_the_query_stay_out_of_the_access_log(guarded):
    httpx.get(f"{guarded.url}/healthz", params={"api_key": "hunter2-secret", "x": "1"})
    wait_until(lambda: "/healthz?api_key=***&x=1" in guarded.log.read_text())
    assert "hunter2-secret" not in guarded.log.read_text()


def test_the_health_check_probes_readiness(guarded):
    script = [sys.executable, str(REPO / "deploy" / "healthcheck.py")]
    ready = subprocess.run(script, env={**os.environ, "SERVICE_PORT": str(urlparse(guarded.url).port)})
    assert ready.returncode == 0
    with socket.socket() as unused:
        unused.bind(("127.0.0.1", 0))
        port = unused.getsockname()[1]
    down = subprocess.run(script, env={**os.environ, "SERVICE_PORT": str(port)}, capture_output=True)
    assert down.returncode == 1


@pytest.mark.slow  # a server of its own: 2 s; test_server's SIGTERM test runs in the default suite
def test_sigterm_answers_a_stalled_upload_and_exits_promptly(start_server, jpeg):
    with start_server("--read-timeout-s", "30") as live:
        with connect(live.url) as stalled:
            stalled.sendall(
                b"POST /detect HTTP/1.1\r\nHost: x\r\nContent-Type: image/jpeg\r\nContent-Length: 90000\r\n\r\n"
            )
            stalled.sendall(jpeg[:1000])
            wait_until(lambda: budget(live, "images") > 0)
            start = time.monotonic()
            live.process.send_signal(signal.SIGTERM)
            reply = read_head(stalled)
        assert reply.startswith(b"HTTP/1.1 503") and b"retry-after" in reply.lower(), reply
        assert live.process.wait(timeout=10) in (0, -signal.SIGTERM)
        assert time.monotonic() - start < 5
        assert "Traceback" not in live.log.read_text()


@pytest.mark.slow  # a server of its own: 2.5 s
def test_uvicorn_limits_come_from_settings(start_server):
    with start_server("--limit-concurrency", "4") as live:
        holders = [connect(live.url) for _ in range(4)]
        try:
            for sock in holders:
                sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\n")  # an unfinished head holds a connection
            time.sleep(0.2)
            assert httpx.get(f"{live.url}/healthz", timeout=5).status_code == 503
        finally:
            for sock in holders:
                sock.close()
        wait_until(lambda: httpx.get(f"{live.url}/healthz", timeout=5).status_code == 200)


def _niceness(stat: Path) -> int:
    text = stat.read_text()
    return int(text[text.rindex(")") + 2 :].split()[16])  # field 19 of /proc/.../stat


@pytest.mark.skipif(sys.platform != "linux", reason="thread niceness is read from Linux's /proc")
@pytest.mark.slow  # a server of its own: 2 s
def test_worker_nice_lowers_the_decode_and_inference_threads_only(tmp_path_factory, jpeg):
    # ONNX Runtime starts its pool threads when the model loads: they must inherit the workers' priority.
    nice = ("--worker-nice", "7", "--threads", "2")
    with live_server(DEMO_EXPORT, tmp_path_factory.mktemp("nice"), *nice) as live:
        response = httpx.post(f"{live.url}/detect", content=jpeg, headers={"content-type": "image/jpeg"}, timeout=60)
        assert response.status_code == 200
        tasks = Path(f"/proc/{live.process.pid}/task")
        loop = _niceness(tasks / str(live.process.pid) / "stat")  # the main thread runs the event loop
        niceness = [_niceness(stat) for stat in tasks.glob("*/stat")]
    # The inference and decode threads, and ONNX Runtime's pool thread (2 threads: the caller and one more).
    assert niceness.count(min(19, loop + 7)) >= 3, (loop, niceness)
