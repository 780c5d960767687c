"""The guarded protocol itself, fed bytes as uvicorn's event loop would: an early refusal and the liveness probe
are answered without the app, as JSON, and everything else reaches the app."""

import asyncio
import json

from fastapi import FastAPI
from uvicorn.config import Config
from uvicorn.server import ServerState

from service.metrics import ServiceMetrics
from service.protocol import GuardedHttpToolsProtocol, HeadLimits, first_answer, refusal
from service.routes import health


class Transport(asyncio.Transport):
    def __init__(self) -> None:
        super().__init__()
        self.written = b""
        self.closed = False

    def get_extra_info(self, name, default=None):
        return {"peername": ("127.0.0.1", 50000), "sockname": ("127.0.0.1", 8000)}.get(name, default)

    def write(self, data: bytes) -> None:
        self.written += data

    def close(self) -> None:
        self.closed = True

    def is_closing(self) -> bool:
        return self.closed

    def pause_reading(self) -> None:
        pass

    def resume_reading(self) -> None:
        pass


def run_protocol(request: bytes, liveness=None) -> tuple[Transport, list[str]]:
    """Feed ``request`` to a protocol whose early refusal turns away POST /detect over 1 MB (and that answers
    ``liveness`` first, if given); (transport, the paths the app was called for)."""
    called: list[str] = []

    async def app(scope, receive, send):
        called.append(scope["path"])
        await send({"type": "http.response.start", "status": 200, "headers": [(b"content-length", b"2")]})
        await send({"type": "http.response.body", "body": b"ok"})

    def refuse(method: bytes, target: bytes, headers: list[tuple[bytes, bytes]]):
        length = int(dict(headers).get(b"content-length", b"0"))
        if method == b"POST" and target.startswith(b"/detect") and length > 1_000_000:
            return refusal(503, "overloaded: the body budget is full; retry in 1 s", 1)
        return None

    async def feed() -> Transport:
        config = Config(app=app, lifespan="off", access_log=False)
        config.load()
        protocol = GuardedHttpToolsProtocol(
            config=config,
            server_state=ServerState(),
            app_state={},
            limits=HeadLimits(4096, 20, 5.0),
            early_answer=first_answer(liveness, refuse) if liveness else refuse,
        )
        transport = Transport()
        protocol.connection_made(transport)
        protocol.data_received(request)
        await asyncio.sleep(0.05)  # lets an app task run, if one was started
        protocol.connection_lost(None)
        return transport

    return asyncio.run(feed()), called


def test_an_early_refusal_is_json_503_without_the_app():
    transport, called = run_protocol(b"POST /detect?x=1 HTTP/1.1\r\nHost: x\r\nContent-Length: 5000000\r\n\r\nabc")
    head, _, body = transport.written.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 503")
    assert b"retry-after: 1" in head and b"connection: close" in head and b"application/json" in head
    assert json.loads(body) == {"detail": "overloaded: the body budget is full; retry in 1 s"}
    assert transport.closed and called == []


def test_requests_it_lets_through_reach_the_app():
    for request in (
        b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n",
        b"POST /detect HTTP/1.1\r\nHost: x\r\nContent-Length: 3\r\n\r\nabc",
    ):
        transport, called = run_protocol(request)
        assert transport.written.startswith(b"HTTP/1.1 200"), transport.written[:60]
        assert len(called) == 1


def test_a_malformed_request_gets_a_json_400():
    transport, called = run_protocol(b"NOT HTTP AT ALL\r\n\r\n")
    head, _, body = transport.written.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 400") and "detail" in json.loads(body)
    assert called == []


def test_the_liveness_probe_is_answered_without_the_app_and_counted():
    service = FastAPI()
    service.include_router(health.live)
    service.state.metrics = ServiceMetrics(4)
    liveness = health.early_liveness(service)
    transport, called = run_protocol(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n", liveness)
    head, _, body = transport.written.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200") and json.loads(body) == {"status": "ok"}
    assert b"x-content-type-options: nosniff" in head and b"content-security-policy: " in head
    assert transport.closed and called == []
    transport, called = run_protocol(b"HEAD /healthz?probe=1 HTTP/1.1\r\nHost: x\r\n\r\n", liveness)
    head, _, body = transport.written.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200") and b"content-length: 16" in head and body == b""
    requests = service.state.metrics.requests
    assert [requests.labels("/healthz", m, "200")._value.get() for m in ("GET", "HEAD")] == [1, 1]
    # Other paths, and /healthz after a request still being answered on the same connection, reach the app.
    for request in (b"GET /healthzz HTTP/1.1\r\nHost: x\r\n\r\n", b"POST /healthz HTTP/1.1\r\nHost: x\r\n\r\n"):
        transport, called = run_protocol(request, liveness)
        assert len(called) == 1
    pipelined = b"GET /first HTTP/1.1\r\nHost: x\r\n\r\nGET /healthz HTTP/1.1\r\nHost: x\r\n\r\n"
    transport, called = run_protocol(pipelined, liveness)
    assert called == ["/first", "/healthz"] and transport.written.count(b"HTTP/1.1 200") == 2
