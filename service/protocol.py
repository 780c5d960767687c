"""uvicorn's httptools protocol with the limits it lacks, for ``python -m service``.

httptools accepts a request head of any size and any number of header lines, and uvicorn waits forever for a
head that never ends (its keep-alive timeout starts only after a first response). Each connection here gets:

- 431 once the head passes ``max_bytes`` or ``max_headers`` lines: counted both as httptools parses it and,
  for reads that do not finish a head, as bytes arrive (a single endless header line is buffered inside
  httptools), so a connection holds at most one read, 256 KiB, beyond the limit;
- 408 if the head is not complete ``timeout_s`` after its first byte (or after the connection opened);
- at shutdown (SIGTERM), 503 at once for a request still receiving its body: uvicorn would otherwise wait
  for it until the graceful-shutdown timeout and then answer 500. Requests whose body has arrived finish;
- as soon as a head is complete, whatever ``early_answer`` gives for it: a 503 for a request the service's
  budgets cannot admit, the liveness probe's 200. Answered here, without the app, such a request costs the event
  loop a tenth of what the app's own answer does and waits for no task of its own: under a flood of requests that
  are refused anyway, that is what keeps /healthz answering quickly. The app still checks the same budgets (a
  request let through here may find them full by the time it asks).

Every answer here is JSON (errors as ``{"detail": "..."}``, as the app's are), with the app's security headers,
and closes the connection.

The body's own read timeout and size limits are the app's (``service.upload``), where the message can say more.
"""

import asyncio
import json
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial

from uvicorn.protocols.http.httptools_impl import STATUS_LINE, HttpToolsProtocol
from uvicorn.protocols.utils import get_client_addr

from .security import SECURITY_HEADERS

_SECURITY_LINES = [f"{name.lower()}: {value}\r\n".encode() for name, value in SECURITY_HEADERS.items()]


@dataclass(frozen=True)
class HeadLimits:
    max_bytes: int  # request line and header lines together
    max_headers: int
    timeout_s: float  # from the head's first byte (or the connection's start) to its end


@dataclass(frozen=True)
class Answer:
    status: int
    body: dict  # sent as JSON
    retry_after: int | None = None  # seconds, for a 503


def refusal(status: int, message: str, retry_after: int | None = None) -> Answer:
    return Answer(status, {"detail": message}, retry_after)


# (method, request target as sent, header lines as (lower-case name, value)) -> the answer to send at once, or
# None to let the request through to the app.
EarlyAnswer = Callable[[bytes, bytes, list[tuple[bytes, bytes]]], Answer | None]


def target_path(target: bytes) -> bytes:
    """The path of a request target as sent (its query left off), for early answers to match routes by."""
    return target.split(b"?", 1)[0]


def first_answer(*answers: EarlyAnswer) -> EarlyAnswer:
    """The first of ``answers`` that answers a request."""

    def answer(method: bytes, target: bytes, headers: list[tuple[bytes, bytes]]) -> Answer | None:
        return next((a for a in (each(method, target, headers) for each in answers) if a is not None), None)

    return answer


class _Answered(Exception):
    """Raised from a parser callback to stop parsing; the answer is on the protocol."""


class GuardedHttpToolsProtocol(HttpToolsProtocol):
    def __init__(self, *args, limits: HeadLimits, early_answer: EarlyAnswer | None = None, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.limits = limits
        self.early_answer = early_answer
        self._in_head = True  # waiting for (the rest of) a request head
        self._heads_completed = 0
        self._parsed_bytes = 0  # of the current head: its URL and header lines, as parsed
        self._unfinished_bytes = 0  # of the current head: reads that did not finish it
        self._header_lines = 0
        self._answer: Answer | None = None  # set before raising _Answered
        self._head_timer: asyncio.TimerHandle | None = None
        self._head_only = False  # the answer being sent is to a HEAD request

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._arm_head_timer()

    def connection_lost(self, exc: Exception | None) -> None:
        self._disarm_head_timer()
        super().connection_lost(exc)

    def data_received(self, data: bytes) -> None:
        was_in_head, heads_before = self._in_head, self._heads_completed
        super().data_received(data)
        # Counted only when the whole read belongs to one unfinished head (exact; a head that starts after a
        # body in the same read is counted from the next read on).
        if was_in_head and heads_before == self._heads_completed and not self.transport.is_closing():
            self._unfinished_bytes += len(data)
            if self._unfinished_bytes > self.limits.max_bytes:
                self._send(refusal(431, self._too_large))

    @property
    def _too_large(self) -> str:
        return f"request header fields too large: over {self.limits.max_bytes} bytes"

    def on_url(self, url: bytes) -> None:
        self._count_parsed(len(url))
        super().on_url(url)

    def on_message_begin(self) -> None:
        super().on_message_begin()
        self._arm_head_timer()

    def on_header(self, name: bytes, value: bytes) -> None:
        self._header_lines += 1
        if self._header_lines > self.limits.max_headers:
            self._answer = refusal(431, f"request header fields too large: over {self.limits.max_headers} header lines")
            raise _Answered  # httptools stops parsing and uvicorn calls send_400_response, which sends ours
        self._count_parsed(len(name) + len(value) + 4)  # with ": " and CRLF
        super().on_header(name, value)

    def _count_parsed(self, size: int) -> None:
        self._parsed_bytes += size
        if self._parsed_bytes > self.limits.max_bytes:
            self._answer = refusal(431, self._too_large)
            raise _Answered

    def on_headers_complete(self) -> None:
        self._in_head = False
        self._heads_completed += 1
        self._disarm_head_timer()
        if self.early_answer is not None and self._may_answer_now():
            method = self.parser.get_method()
            self._answer = self.early_answer(method, self.url, self.headers)
            if self._answer is not None:
                self._head_only = method == b"HEAD"
                if self._answer.status < 400 and self.access_log:  # refusals are counted, not logged one by one
                    self.access_logger.info(
                        '%s - "%s %s HTTP/%s" %d',
                        get_client_addr(self.scope),
                        method.decode("ascii"),
                        self.url.decode("latin-1"),
                        self.parser.get_http_version(),
                        self._answer.status,
                    )
                raise _Answered
        super().on_headers_complete()

    def _may_answer_now(self) -> bool:
        """No response in flight on this connection (an answer now would overtake it), and uvicorn's concurrency
        limit not reached (past it, uvicorn's own 503 answers every request)."""
        limit = self.limit_concurrency
        over_limit = limit is not None and (len(self.connections) >= limit or len(self.tasks) >= limit)
        return (self.cycle is None or self.cycle.response_complete) and not over_limit

    def on_message_complete(self) -> None:
        super().on_message_complete()
        self._in_head, self._parsed_bytes, self._unfinished_bytes, self._header_lines = True, 0, 0, 0

    def send_400_response(self, msg: str) -> None:
        self._send(self._answer or refusal(400, msg))

    def shutdown(self) -> None:
        cycle = self.cycle
        if cycle is not None and not cycle.response_complete and cycle.more_body and not self._in_head:
            cycle.disconnected = True  # the app's next receive() says so, and its late answer is dropped
            cycle.message_event.set()
            self._send(refusal(503, "the service is shutting down; send the request again", retry_after=5))
            return
        super().shutdown()

    def _send(self, answer: Answer) -> None:
        """Send ``answer`` outside of any app, then close the connection."""
        self._disarm_head_timer()
        if self.transport.is_closing():
            return
        body = json.dumps(answer.body).encode()
        head = [STATUS_LINE[answer.status]]
        head += [name + b": " + value + b"\r\n" for name, value in self.server_state.default_headers]
        head += _SECURITY_LINES
        if answer.retry_after is not None:
            head.append(b"retry-after: %d\r\n" % answer.retry_after)
        head += [b"content-type: application/json\r\n", b"content-length: %d\r\n" % len(body)]
        head_only, self._head_only = self._head_only, False
        self.transport.write(b"".join([*head, b"connection: close\r\n\r\n", b"" if head_only else body]))
        self.transport.close()

    def _arm_head_timer(self) -> None:
        self._disarm_head_timer()
        self._head_timer = self.loop.call_later(self.limits.timeout_s, self._head_timed_out)

    def _disarm_head_timer(self) -> None:
        if self._head_timer is not None:
            self._head_timer.cancel()
            self._head_timer = None

    def _head_timed_out(self) -> None:
        self._head_timer = None
        if self._in_head:
            self._send(refusal(408, f"request head not received within {self.limits.timeout_s:g} s"))


def guarded_http(limits: HeadLimits, early_answer: EarlyAnswer | None = None) -> partial:
    """What ``uvicorn.run(http=...)`` takes: a protocol factory with these limits."""
    return partial(GuardedHttpToolsProtocol, limits=limits, early_answer=early_answer)
