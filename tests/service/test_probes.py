"""The probe port (``--probe-port``): /healthz and /readyz from a thread of their own, honest about the loop."""

import http.client
import json
import os
import socket
import subprocess
import sys
import time
from urllib.parse import urlparse

import pytest

from service.probes import STALLED_AFTER_S, ProbeServer, probe_answer
from service.security import SECURITY_HEADERS

from .conftest import REPO, free_port


def _get(port: int, path: str, method: str = "GET") -> tuple[int, dict, bytes]:
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    try:
        connection.request(method, path)
        response = connection.getresponse()
        return response.status, {k.lower(): v for k, v in response.getheaders()}, response.read()
    finally:
        connection.close()


@pytest.fixture(scope="module")
def probed(launch_server, tmp_path_factory):
    port = free_port()
    with launch_server(tmp_path_factory.mktemp("probed"), "--probe-port", str(port)) as live:
        yield live, port


def test_the_probe_port_answers_as_the_service_does(probed):
    live, port = probed
    for path in ("/healthz", "/readyz"):
        status, headers, body = _get(port, path)
        assert (status, json.loads(body)) == (200, json.loads(_get(urlparse(live.url).port, path)[2]))
        assert headers["content-type"] == "application/json"
        assert all(headers[name.lower()] == value for name, value in SECURITY_HEADERS.items())
        status, headers, body = _get(port, path + "?verbose=1", "HEAD")
        assert status == 200 and body == b"" and int(headers["content-length"]) > 0
    status, _, body = _get(port, "/detect")
    assert status == 404 and json.loads(body) == {"detail": "Not Found"}
    status, _, body = _get(port, "/healthz", "POST")
    assert status == 501 and "detail" in json.loads(body)


def test_a_silent_or_endless_probe_client_does_not_hold_the_port(probed):
    _, port = probed
    silent = socket.create_connection(("127.0.0.1", port))
    try:
        started = time.monotonic()
        assert _get(port, "/healthz")[0] == 200  # answered once the silent one's head times out (2 s)
        assert time.monotonic() - started < 5
    finally:
        silent.close()
    with socket.create_connection(("127.0.0.1", port)) as flood:
        flood.sendall(b"GET /healthz HTTP/1.1\r\n" + b"x-filler: " + b"a" * 70_000 + b"\r\n\r\n")
        assert flood.recv(4096).startswith(b"HTTP/1.0 431")  # the standard library's line limit (65,536)
    assert _get(port, "/healthz")[0] == 200


def test_a_stalled_event_loop_or_an_unready_model_is_not_healthy(app_factory):
    app = app_factory()
    assert probe_answer(app, "/healthz")[0] == 503  # no lifespan yet: no heartbeat
    app.state.heartbeat = time.monotonic()
    assert probe_answer(app, "/healthz") == (200, {"status": "ok"})
    assert probe_answer(app, "/readyz")[0] == 503 and not app.state.ready
    app.state.ready = True
    assert probe_answer(app, "/readyz")[0] == 200
    assert probe_answer(app, "/metrics") is None
    app.state.heartbeat = time.monotonic() - STALLED_AFTER_S - 5
    probes = ProbeServer(app, "127.0.0.1", 0)
    probes.start()
    try:
        for path in ("/healthz", "/readyz"):
            status, _, body = _get(probes.server_address[1], path)
            assert status == 503 and "event loop has not run for 15 s" in json.loads(body)["detail"]
    finally:
        probes.stop()


def test_the_container_health_check_asks_the_probe_port(probed):
    _, port = probed
    script = [sys.executable, str(REPO / "deploy" / "healthcheck.py")]
    env = {**os.environ, "SERVICE_PROBE_PORT": str(port), "SERVICE_PORT": str(free_port())}  # nothing on SERVICE_PORT
    assert subprocess.run(script, env=env).returncode == 0
    env["SERVICE_PROBE_PORT"] = str(free_port())
    assert subprocess.run(script, env=env, capture_output=True).returncode == 1
