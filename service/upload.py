"""Reading a /detect request body within the limits: a raw image or a multipart form, counted while it streams.

A declared Content-Length over the limit is refused before reading; otherwise bytes are counted as they
arrive and reading stops with 413 at the first byte past the limit, so a client cannot make the service hold
more than ``max_body_bytes`` of body, whatever it declares. Every body also holds its bytes of the service-wide
body budget (the declared length up front, else as they arrive; the first MiB free): past it, 503 at once and
the connection is closed (as for every refusal before the body is read). A client that sends nothing for
``read_timeout`` seconds gets 408. Multipart files stay in memory (the budget bounds them): spooled
to /tmp, a few concurrent uploads would fill a container's small tmpfs.
"""

import asyncio
from collections.abc import AsyncIterator
from dataclasses import dataclass, field

from fastapi import HTTPException, Request
from python_multipart.multipart import parse_options_header
from starlette.datastructures import UploadFile
from starlette.formparsers import MultiPartException, MultiPartParser
from starlette.requests import ClientDisconnect

from .budget import Budget, Lease

RAW_TYPES = ("image/jpeg", "image/png", "image/webp", "image/bmp")
ALSO_ACCEPTED = ("image/jpg", "image/x-ms-bmp", "application/octet-stream")  # the bytes are checked anyway
IMAGE_FIELDS = ("files", "file")
MAX_OPTION_FIELDS = 32
MAX_OPTION_BYTES = 4096
# Each body's first MiB is not counted against the body budget: a few large uploads, stalled or not, must not
# lock ordinary one-photo requests out. What that adds is bounded by uvicorn's limit_concurrency.
FREE_BODY_BYTES = 2**20
# Sent with a refusal before the body is read: closing is cheaper than reading (and dropping) what the client
# still sends, which a flood of large refused uploads would otherwise make the event loop do.
CLOSE = {"Connection": "close"}


@dataclass
class Upload:
    images: list[tuple[str, bytes]] = field(default_factory=list)  # (name for messages, bytes), in order sent
    options: dict[str, list[str]] = field(default_factory=dict)  # form fields other than images


@dataclass(frozen=True)
class BodyLimits:
    max_bytes: int  # one body
    read_timeout: float  # seconds without a byte from the client; then 408
    lease: Lease  # this request's share of the service-wide body budget


async def read_upload(request: Request, limits: BodyLimits, *, max_images: int) -> Upload:
    """The images and option fields of a /detect request; HTTPException 400/408/413/415/422/503 for what is wrong."""
    declared = request.headers.get("content-length")
    if declared is not None:
        if not declared.isdigit():
            raise HTTPException(400, f"bad Content-Length header {declared!r}")
        if int(declared) > limits.max_bytes:
            raise HTTPException(
                413, f"request body of {int(declared)} bytes is over the limit of {limits.max_bytes}", headers=CLOSE
            )
        _hold(limits.lease, int(declared))
    raw_type = request.headers.get("content-type", "")
    content_type = parse_options_header(raw_type)[0].decode("latin-1").lower()
    if content_type == "multipart/form-data":
        return await _read_multipart(request, limits, max_images)
    if content_type in RAW_TYPES or content_type in ALSO_ACCEPTED:
        body = b"".join([chunk async for chunk in _limited(request, limits)])
        if not body:
            raise HTTPException(400, "empty body: send an image as the body, or images as multipart field 'files'")
        return Upload(images=[("body", body)])
    if not content_type:
        raise HTTPException(415, f"no Content-Type: send one of {', '.join(RAW_TYPES)} or multipart/form-data")
    raise HTTPException(
        415, f"unsupported Content-Type {content_type!r}: send one of {', '.join(RAW_TYPES)} or multipart/form-data"
    )


def body_budget_full(budget: Budget, size: int, held: int = 0) -> str | None:
    """Why a body of ``size`` bytes (``held`` of them already counted) does not fit ``budget`` now, or None."""
    counted = size - FREE_BODY_BYTES
    if counted <= held or budget.used + counted - held <= budget.limit:
        return None
    return f"overloaded: request bodies in flight hold {budget.used} of {budget.limit} bytes; retry in 1 s"


def _hold(lease: Lease, size: int) -> None:
    """Hold what a body of ``size`` bytes counts against the budget (more than held so far), or 503."""
    counted = size - FREE_BODY_BYTES
    if counted > lease.held and not lease.try_take(counted - lease.held):
        reason = body_budget_full(lease.budget, size, lease.held) or "overloaded: request bodies in flight; retry"
        raise HTTPException(503, reason, headers={"Retry-After": "1", **CLOSE})


async def _limited(request: Request, limits: BodyLimits) -> AsyncIterator[bytes]:
    received = 0
    chunks = request.stream()
    while True:
        try:
            chunk = await asyncio.wait_for(anext(chunks, None), limits.read_timeout)
        except TimeoutError:
            message = f"no body bytes for {limits.read_timeout:g} s; send the whole body"
            raise HTTPException(408, message, headers=CLOSE) from None
        except ClientDisconnect:
            raise HTTPException(400, "the client disconnected before sending the whole body") from None
        if chunk is None:
            return
        received += len(chunk)
        if received > limits.max_bytes:
            raise HTTPException(413, f"request body is over the limit of {limits.max_bytes} bytes", headers=CLOSE)
        _hold(limits.lease, received)
        yield chunk


async def _read_multipart(request: Request, limits: BodyLimits, max_images: int) -> Upload:
    parser = MultiPartParser(
        request.headers,
        _limited(request, limits),
        max_files=max_images,
        max_fields=MAX_OPTION_FIELDS,
        max_part_size=MAX_OPTION_BYTES,
    )
    parser.spool_max_size = limits.max_bytes  # files stay in memory (see the module's docstring)
    try:
        form = await parser.parse()
    except MultiPartException as exc:
        if exc.message.startswith("Too many files"):
            raise HTTPException(413, f"too many images: at most {max_images} per request") from None
        raise HTTPException(400, f"malformed multipart body: {exc.message}") from None
    upload = Upload()
    try:
        for name, value in form.multi_items():
            if isinstance(value, UploadFile):
                if name not in IMAGE_FIELDS:
                    raise HTTPException(422, f"unexpected file field {name!r}: send images as 'files' (or 'file')")
                upload.images.append((value.filename or name, await value.read()))
            elif name in IMAGE_FIELDS:
                raise HTTPException(422, f"field {name!r} must be a file upload (a part with a filename)")
            else:
                upload.options.setdefault(name, []).append(value)
    finally:
        await form.close()
    return upload
