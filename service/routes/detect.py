"""POST /detect: images in (multipart ``files``/``file``, or one raw image body), detections out.

Order of checks, cheapest first: room for one more image (503 at once, before the body is read), body size
(413 while reading) and the body budget (503), content type (415), options (422), image count (413), room for
the request's other images (503), every image's header and pixel count (400/413/415) before any is decoded,
then room in the decode budget (503; 413 if the request alone is over it). Nothing is refused for lack of room
after decoding. Headers are read and images decoded in threads, inference runs in the batcher's thread: the
event loop only routes. ``request_timeout_s`` counts from the end of the body: decoding, queue and inference.
"""

import asyncio
import math
import time
from concurrent.futures import ThreadPoolExecutor
from functools import partial
from typing import Annotated, NoReturn

from fastapi import APIRouter, FastAPI, HTTPException, Query, Request
from fastapi.exceptions import RequestValidationError
from pydantic import ValidationError
from starlette.concurrency import run_in_threadpool

from runtime import Detections, ModelCard
from runtime.images import (
    DecodedImage,
    ImageError,
    ImageHeader,
    check_pixels,
    decode,
    decode_cost,
    detections_in_image,
    read_header,
)

from ..batcher import Batcher, BatcherClosed, BatchFailed, Outcome, QueueFull, RequestTimeout
from ..budget import Budget, Lease
from ..dependencies import BatcherDep, BudgetsDep, EngineDep, LeasesDep, SettingsDep
from ..metrics import ServiceMetrics
from ..protocol import Answer, EarlyAnswer, refusal, target_path
from ..schemas import Detection, DetectOptions, DetectResponse, Error, ImageResult, ModelRef, Timings
from ..settings import Settings
from ..upload import CLOSE, RAW_TYPES, BodyLimits, body_budget_full, read_upload

router = APIRouter(tags=["detection"])
_REASONS = {503: "queue_full", 504: "timeout", 400: "client_gone", 500: "batch_failed"}  # for service_rejected

_BINARY = {"type": "string", "format": "binary", "minLength": 1}


def _request_body() -> dict:
    options = DetectOptions.model_json_schema()["properties"]
    form = {
        "type": "object",
        "properties": {
            "files": {
                "type": "array",
                "items": _BINARY,
                "description": "images, in the order results come back",
            },
            "file": {**_BINARY, "description": "one image (an alternative to files)"},
            **options,
        },
        "anyOf": [{"required": ["files"]}, {"required": ["file"]}],
        "additionalProperties": False,
        "description": "images and, optionally, options (a form field wins over the same query parameter)",
    }
    raw = {t: {"schema": {**_BINARY, "description": "one image as the whole body"}} for t in RAW_TYPES}
    return {
        "required": True,
        "description": "JPEG, PNG, WebP or BMP images: as multipart 'files' (or 'file'), or one as the raw body",
        "content": {"multipart/form-data": {"schema": form}, **raw},
    }


def _error(description: str) -> dict:
    return {"model": Error, "description": description}


@router.post(
    "/detect",
    response_model=DetectResponse,
    summary="Detect objects in one or more images",
    openapi_extra={"requestBody": _request_body()},
    responses={
        400: _error("empty body, not an image, or a corrupt or truncated image"),
        408: _error("the client stopped sending its body for read_timeout_s"),
        413: _error("body, image, image count or the request's decoded pixels over the limit"),
        415: _error("unsupported content type or image format"),
        422: _error("bad option values"),
        500: _error("the forward pass holding this request failed"),
        503: _error(
            "the queue, the body or the decode budget is full, or the service is shutting down; see Retry-After"
        ),
        504: _error("not decoded and processed within the request timeout"),
    },
)
async def detect(
    request: Request,
    settings: SettingsDep,
    engine: EngineDep,
    batcher: BatcherDep,
    budgets: BudgetsDep,
    leases: LeasesDep,
    query: Annotated[DetectOptions, Query()],
) -> DetectResponse:
    start = time.perf_counter()
    metrics = request.app.state.metrics
    _admit(leases.images, 1, batcher, metrics)  # every request has an image: refuse before reading its body
    limits = BodyLimits(settings.max_body_bytes, settings.read_timeout_s, leases.body)
    upload = await read_upload(request, limits, max_images=settings.max_images_per_request)
    deadline = time.monotonic() + settings.request_timeout_s
    options = _merge_options(query, upload.options, engine.card, settings)
    if not upload.images:  # (too many is refused while reading the multipart body)
        raise HTTPException(400, "no image: send images as multipart field 'files' (or 'file'), or one as the body")
    _admit(leases.images, len(upload.images) - 1, batcher, metrics)
    headers = await run_in_threadpool(_read_headers, upload.images, settings.max_pixels)
    executor = request.app.state.decode_executor
    decoding = _decode_all(executor, budgets.decode_pixels, upload.images, headers, settings, engine.card)
    try:
        images = await asyncio.wait_for(decoding, deadline - time.monotonic())
    except TimeoutError:
        metrics.rejected.labels("timeout").inc()
        raise HTTPException(504, f"timed out: not decoded within {settings.request_timeout_s:g} s") from None
    metrics.images_decoded.inc(len(images))
    del upload  # the bytes are no longer needed; the bitmaps are
    decoded = time.perf_counter()
    try:
        outcome = await _infer(request, batcher, [image.array for image in images], deadline - time.monotonic())
    except HTTPException as exc:
        metrics.rejected.labels(_REASONS.get(exc.status_code, str(exc.status_code))).inc()
        raise
    results = [
        _result(result, image, options, engine.card) for result, image in zip(outcome.results, images, strict=True)
    ]
    return DetectResponse(
        results=results,
        model=ModelRef(
            name=engine.card.config.name,
            backbone=engine.card.config.backbone,
            checkpoint=settings.checkpoint.name,
            engine=engine.name,
        ),
        timings=Timings(
            decode_ms=_ms(decoded - start),
            queue_ms=_ms(outcome.queue_s),
            inference_ms=_ms(outcome.inference_s),
            total_ms=_ms(time.perf_counter() - start),
            batch_sizes=outcome.batch_sizes,
        ),
    )


def _merge_options(
    query: DetectOptions, fields: dict[str, list[str]], card: ModelCard, settings: Settings
) -> DetectOptions:
    """Query and form options together (a form field wins over the same query parameter); class names checked."""
    given = {name: values if name == "classes" else values[-1] for name, values in fields.items()}
    try:
        options = DetectOptions.model_validate({**query.model_dump(exclude_unset=True), **given})
    except ValidationError as exc:
        raise RequestValidationError([{**e, "loc": ("form", *e["loc"])} for e in exc.errors()]) from None
    if options.classes:
        known = set(card.categories.names)
        unknown = [name for name in options.classes if name not in known]
        if unknown:
            listed = ", ".join(sorted(known)[:100])
            raise HTTPException(422, f"unknown classes {unknown}; this model knows: {listed}")
    if options.score_threshold is None:
        options.score_threshold = settings.score_threshold
    return options


def _read_headers(uploads: list[tuple[str, bytes]], max_pixels: int) -> list[ImageHeader]:
    """Every image's header and pixel count, before any is decoded: one bomb costs nothing."""
    headers = []
    for name, data in uploads:
        try:
            header = read_header(data)
            check_pixels(header, max_pixels)
        except ImageError as exc:
            raise HTTPException(exc.status_code, f"{name[:100]}: {exc}") from None
        headers.append(header)
    return headers


async def _decode_all(
    executor: ThreadPoolExecutor,
    budget: Budget,
    uploads: list[tuple[str, bytes]],
    headers: list[ImageHeader],
    settings: Settings,
    card: ModelCard,
) -> list[DecodedImage]:
    """Decode in the decode threads, within the decode budget: 503 at once if the request's pixels do not fit
    now (413 if they never could). Each image gives its pixels back when its decode ends, even one whose request
    timed out meanwhile (a running decode cannot be stopped; one still queued is cancelled)."""
    sizes = {"min_size": card.config.min_size, "max_size": card.config.max_size}
    costs = [decode_cost(header, **sizes) for header in headers]
    if sum(costs) > budget.limit:
        raise HTTPException(
            413, f"too many pixels to decode: the images need {sum(costs)}, the service decodes {budget.limit} at once"
        )
    if not budget.try_take(sum(costs)):
        raise HTTPException(
            503,
            f"overloaded: {budget.used} of {budget.limit} pixels are being decoded; retry in 1 s",
            headers={"Retry-After": "1"},
        )
    work = partial(decode, max_pixels=settings.max_pixels, **sizes)
    futures = []
    for (_, data), cost in zip(uploads, costs, strict=True):
        job = executor.submit(work, data)
        job.add_done_callback(lambda _, cost=cost: budget.give_back(cost))
        futures.append(asyncio.wrap_future(job))
    images = await asyncio.gather(*futures, return_exceptions=True)
    for (name, _), image in zip(uploads, images, strict=True):
        if isinstance(image, ImageError):
            raise HTTPException(image.status_code, f"{name[:100]}: {image}") from None
        if isinstance(image, BaseException):
            raise image
    return images


async def _infer(request: Request, batcher: Batcher, tensors, timeout: float) -> Outcome:
    """Run through the batcher; if the client goes away first, withdraw its images so nobody waits for them."""
    work = asyncio.ensure_future(batcher.submit(tensors, timeout=max(timeout, 0.001)))
    gone = asyncio.ensure_future(_disconnected(request))
    try:
        await asyncio.wait({work, gone}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for task in (work, gone):
            if not task.done():
                task.cancel()
    if not work.done() or work.cancelled():  # the client went first; work was cancelled above
        await asyncio.gather(work, return_exceptions=True)
        raise HTTPException(400, "the client disconnected before its results were ready")
    try:
        return work.result()
    except QueueFull as exc:
        _busy(batcher, str(exc))
    except BatcherClosed as exc:
        raise HTTPException(503, str(exc), headers={"Retry-After": "5"}) from None
    except RequestTimeout as exc:
        raise HTTPException(504, f"timed out: {exc}") from None
    except BatchFailed as exc:
        raise HTTPException(500, str(exc)) from None


async def _disconnected(request: Request) -> None:
    # After the body, the server's next message is the disconnect (or nothing until the response is sent).
    while (await request.receive())["type"] != "http.disconnect":
        pass


def _admit(lease: Lease, count: int, batcher: Batcher, metrics: ServiceMetrics) -> None:
    """Hold ``count`` more of the admitted-images budget (``queue_size``), or 503 at once."""
    if not lease.try_take(count):
        metrics.rejected.labels("queue_full").inc()
        _busy(batcher, _images_full(lease.budget))


def _images_full(budget: Budget) -> str:
    return f"{budget.used} of {budget.limit} admitted images are being decoded or waiting"


def _retry_after(batcher: Batcher | None) -> int:
    if batcher is None:
        return 1
    return max(1, math.ceil(batcher.depth / batcher.max_batch_size * 0.5))  # about half a second per batch


def _busy(batcher: Batcher, reason: str) -> NoReturn:
    retry = _retry_after(batcher)
    raise HTTPException(503, f"overloaded: {reason}; retry in {retry} s", headers={"Retry-After": str(retry), **CLOSE})


def early_refusal(app: FastAPI) -> EarlyAnswer:
    """The checks of /detect that a request's head is enough for, for the protocol to answer 503 before the app
    runs (``service.protocol``): the admitted-images budget full, or a declared Content-Length that the body
    budget cannot hold now. Counted in the metrics as the app's own 503s are; the app checks both again."""
    budgets, metrics = app.state.budgets, app.state.metrics
    path = app.url_path_for("detect").encode()
    max_body_bytes = app.state.settings.max_body_bytes

    def refuse(method: bytes, target: bytes, headers: list[tuple[bytes, bytes]]) -> Answer | None:
        if method != b"POST" or target_path(target) != path:
            return None
        if budgets.images.used >= budgets.images.limit:
            metrics.rejected.labels("queue_full").inc()
            retry = _retry_after(app.state.batcher)
            reason = f"overloaded: {_images_full(budgets.images)}; retry in {retry} s"
        else:
            declared = next((value for name, value in headers if name == b"content-length"), b"")
            size = int(declared) if declared.isdigit() else None  # the app answers a bad one with 400
            fits = size is not None and size <= max_body_bytes  # else the app's 413
            reason = body_budget_full(budgets.body_bytes, size) if fits else None
            retry = 1
        if reason is None:
            return None
        metrics.requests.labels("/detect", "POST", "503").inc()
        return refusal(503, reason, retry)

    return refuse


def _result(result: Detections, image: DecodedImage, options: DetectOptions, card: ModelCard) -> ImageResult:
    """Detections in the original image's pixels, filtered by score and class, best first."""
    detections = detections_in_image(
        result,
        image,
        card,
        score_threshold=options.score_threshold,
        max_detections=options.max_detections,
        classes=set(options.classes) if options.classes else None,
    )
    return ImageResult(width=image.width, height=image.height, detections=[Detection(**d) for d in detections])


def _ms(seconds: float) -> float:
    return round(seconds * 1000, 2)
