"""Health probes on a port and a thread of their own (``--probe-port``), for the orchestrator.

On the service's port a probe waits its turn in the event loop like every request: under a flood of requests
that are refused anyway, that turn comes after the refusals ahead of it (bench/hostile.py: /healthz p99 100 to
150 ms on 2 cores). Here a thread of its own answers GET or HEAD /healthz and /readyz on a second socket, so a
probe waits for no request, only for the interpreter's lock.

Answering from another thread must not hide a stuck event loop: the app's lifespan stamps a heartbeat from the
loop (``loop_heartbeat``), and both probes answer 503 once it is older than ``STALLED_AFTER_S``. One connection
is served at a time, each given ``TIMEOUT_S`` to send its head, so the thread's work is bounded whatever a client
does; the port is meant for the orchestrator on a private address (the default 127.0.0.1), not for clients.
"""

import asyncio
import json
import time
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, HTTPServer
from threading import Thread

from fastapi import FastAPI

from .routes.health import NOT_READY
from .schemas import Health, Readiness
from .security import SECURITY_HEADERS

HEARTBEAT_S = 0.5  # how often the event loop stamps its heartbeat
STALLED_AFTER_S = 10.0  # far past the loop's worst lag under bench/hostile.py's attacks (under a second)
TIMEOUT_S = 2.0  # for a probe to send its request head


async def loop_heartbeat(app: FastAPI) -> None:
    """Stamp ``app.state.heartbeat`` with the time every ``HEARTBEAT_S`` while the event loop runs (a task)."""
    while True:
        app.state.heartbeat = time.monotonic()
        await asyncio.sleep(HEARTBEAT_S)


def probe_answer(app: FastAPI, path: str) -> tuple[int, dict] | None:
    """(status, JSON body) of the probe at ``path``, or None for any other path."""
    if path not in ("/healthz", "/readyz"):
        return None
    heartbeat = app.state.heartbeat
    if heartbeat is None:
        return 503, {"detail": "the service is starting"}
    stalled = time.monotonic() - heartbeat
    if stalled > STALLED_AFTER_S:
        return 503, {"detail": f"the service's event loop has not run for {stalled:.0f} s"}
    if path == "/healthz":
        return 200, Health().model_dump()
    if not app.state.ready:
        return 503, {"detail": NOT_READY}
    return 200, Readiness().model_dump()


class _ProbeHandler(BaseHTTPRequestHandler):
    server: "ProbeServer"
    timeout = TIMEOUT_S
    protocol_version = "HTTP/1.0"  # one request a connection

    def do_GET(self) -> None:
        self._answer(body=True)

    def do_HEAD(self) -> None:
        self._answer(body=False)

    def _answer(self, *, body: bool) -> None:
        found = probe_answer(self.server.app, self.path.split("?", 1)[0])
        self._send_json(*(found if found is not None else (404, {"detail": "Not Found"})), body=body)

    def send_error(self, code: int, message: str | None = None, explain: str | None = None) -> None:
        # The standard library's own errors (a bad request line, another method) as JSON, like the service's.
        self._send_json(code, {"detail": message or HTTPStatus(code).phrase}, body=self.command != "HEAD")

    def _send_json(self, status: int, payload: dict, *, body: bool) -> None:
        data = json.dumps(payload).encode()
        self.send_response(status)
        for name, value in SECURITY_HEADERS.items():
            self.send_header(name, value)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        if body:
            self.wfile.write(data)

    def log_message(self, format: str, *args) -> None:
        pass  # probes every few seconds would flood the log; they are not requests to the service


class ProbeServer(HTTPServer):
    """Serves the probes of ``app`` on (host, port) from a daemon thread: ``start()``, then ``stop()``. Binding
    happens here, so a port in use raises ``OSError`` before anything runs."""

    def __init__(self, app: FastAPI, host: str, port: int) -> None:
        self.app = app
        super().__init__((host, port), _ProbeHandler)
        self._thread = Thread(target=self.serve_forever, kwargs={"poll_interval": 0.5}, name="probes", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self.shutdown()
        self.server_close()
