"""Reading a /detect request body within the limits: a raw image or a multipart form, counted while it streams.

A declared Content-Length over the limit is refused before reading; otherwise bytes are counted as they
arrive and reading stops with 413 at the first byte past the limit, so a client cannot make the service hold
more than ``max_body_bytes`` of body, whatever it declares.
"""

from collections.abc import AsyncIterator
from dataclasses import dataclass, field

from fastapi import HTTPException, Request
from python_multipart.multipart import parse_options_header
from starlette.datastructures import UploadFile
from starlette.formparsers import MultiPartException, MultiPartParser
from starlette.requests import ClientDisconnect

RAW_TYPES = ("image/jpeg", "image/png", "image/webp", "image/bmp")
ALSO_ACCEPTED = ("image/jpg", "image/x-ms-bmp", "application/octet-stream")  # the bytes are checked anyway
IMAGE_FIELDS = ("files", "file")
MAX_OPTION_FIELDS = 32
MAX_OPTION_BYTES = 4096


@dataclass
class Upload:
    images: list[tuple[str, bytes]] = field(default_factory=list)  # (name for messages, bytes), in order sent
    options: dict[str, list[str]] = field(default_factory=dict)  # form fields other than images


async def read_upload(request: Request, *, max_body_bytes: int, max_images: int) -> Upload:
    """The images and option fields of a /detect request; HTTPException 400/413/415/422 for what is wrong."""
    declared = request.headers.get("content-length")
    if declared is not None:
        if not declared.isdigit():
            raise HTTPException(400, f"bad Content-Length header {declared!r}")
        if int(declared) > max_body_bytes:
            raise HTTPException(413, f"request body of {int(declared)} bytes is over the limit of {max_body_bytes}")
    raw_type = request.headers.get("content-type", "")
    content_type = parse_options_header(raw_type)[0].decode("latin-1").lower()
    if content_type == "multipart/form-data":
        return await _read_multipart(request, max_body_bytes, max_images)
    if content_type in RAW_TYPES or content_type in ALSO_ACCEPTED:
        body = bytearray()
        async for chunk in _limited(request, max_body_bytes):
            body += chunk
        if not body:
            raise HTTPException(400, "empty body: send an image as the body, or images as multipart field 'files'")
        return Upload(images=[("body", bytes(body))])
    if not content_type:
        raise HTTPException(415, f"no Content-Type: send one of {', '.join(RAW_TYPES)} or multipart/form-data")
    raise HTTPException(
        415, f"unsupported Content-Type {content_type!r}: send one of {', '.join(RAW_TYPES)} or multipart/form-data"
    )


async def _limited(request: Request, limit: int) -> AsyncIterator[bytes]:
    received = 0
    try:
        async for chunk in request.stream():
            received += len(chunk)
            if received > limit:
                raise HTTPException(413, f"request body is over the limit of {limit} bytes")
            yield chunk
    except ClientDisconnect:
        raise HTTPException(400, "the client disconnected before sending the whole body") from None


async def _read_multipart(request: Request, max_body_bytes: int, max_images: int) -> Upload:
    parser = MultiPartParser(
        request.headers,
        _limited(request, max_body_bytes),
        max_files=max_images,
        max_fields=MAX_OPTION_FIELDS,
        max_part_size=MAX_OPTION_BYTES,
    )
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
