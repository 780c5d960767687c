"""The FastAPI app: ``create_app(settings)`` wires the routers; the lifespan loads the model and runs the batcher.

Start-up loads the model into its engine (PyTorch for a .pt checkpoint, ONNX Runtime for a .onnx export; a bad
file stops the server with its message), starts the batcher and warms the model up in the background; /readyz
answers 503 until warm-up is done (requests sent meanwhile simply queue behind it). Shutdown (SIGTERM: uvicorn
first stops accepting and finishes open requests) drains the batcher before the inference thread stops.
"""

import asyncio
import contextlib
import logging
import os
import sys
import threading
from collections.abc import AsyncIterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import asynccontextmanager
from functools import partial

import numpy as np
from fastapi import Depends, FastAPI
from fastapi.middleware.cors import CORSMiddleware

from runtime import Engine, load_engine

from .batcher import Batcher, PredictFn
from .budget import Budget, Budgets
from .dependencies import require_api_key
from .errors import UNAUTHORIZED, install_error_handlers
from .memory import MemoryTrimmer
from .metrics import MetricsMiddleware, ServiceMetrics
from .probes import loop_heartbeat
from .routes import detect, docs, health, metrics, model, page
from .security import SecurityHeaders
from .settings import Settings

log = logging.getLogger("service")


def create_app(
    settings: Settings | None = None, *, engine: Engine | None = None, predict: PredictFn | None = None
) -> FastAPI:
    """The service for ``settings`` (default: from the environment). ``engine``: the model already loaded
    (``python -m service`` loads it first, to report a bad model file in one line); otherwise start-up loads
    ``settings.checkpoint``. ``predict`` replaces the engine's forward pass in the batcher (tests use it to
    inject slow or failing batches); warm-up always uses the engine."""
    settings = settings if settings is not None else Settings()
    app = FastAPI(
        title="shufflenet-detect",
        summary="Object detection with Faster R-CNN on a ShuffleNet backbone, batched for CPUs.",
        version="0.1.0",
        lifespan=lifespan,
        docs_url=None,  # served by routes/docs.py, behind the API key like everything else
        redoc_url=None,
        openapi_url=None,
    )
    app.state.settings = settings
    app.state.metrics = ServiceMetrics(settings.max_batch_size)
    app.state.predict_override = predict
    app.state.engine = engine
    app.state.batcher = None
    app.state.ready = False
    app.state.heartbeat = None  # the event loop's last turn (time.monotonic()), once the lifespan runs
    app.state.budgets = Budgets(
        body_bytes=Budget("body_bytes", settings.body_budget_bytes),
        decode_pixels=Budget("decode_pixels", settings.decode_budget_pixels),
        images=Budget("images", settings.queue_size),
    )
    app.state.metrics.track_budgets(app.state.budgets)

    keyed = settings.api_key is not None
    app.include_router(health.live)  # /healthz: never behind the key, so orchestrators can probe it
    for router in (health.ready, detect.router, model.router, metrics.router, page.router, docs.router):
        app.include_router(
            router, dependencies=[Depends(require_api_key)] if keyed else [], responses=UNAUTHORIZED if keyed else None
        )
    install_error_handlers(app)
    if settings.cors_origins:
        app.add_middleware(
            CORSMiddleware,
            allow_origins=settings.cors_origins,
            allow_methods=["GET", "POST"],
            allow_headers=["Authorization", "Content-Type", "X-API-Key"],
        )
    app.add_middleware(SecurityHeaders)
    app.add_middleware(MetricsMiddleware, metrics=app.state.metrics)
    return app


def lower_thread_priority(nice: int) -> None:
    """Raise the calling thread's niceness by ``nice`` (Linux keeps it per thread; elsewhere a no-op)."""
    if nice and sys.platform == "linux":
        with contextlib.suppress(OSError):  # a sandbox that forbids it costs priority, not service
            tid = threading.get_native_id()
            os.setpriority(os.PRIO_PROCESS, tid, min(19, os.getpriority(os.PRIO_PROCESS, tid) + nice))


@asynccontextmanager
async def lifespan(app: FastAPI) -> AsyncIterator[None]:
    settings: Settings = app.state.settings
    # PyTorch: every batch shape gets its own oneDNN kernels; the cache is sized by the process's first forward pass.
    os.environ["ONEDNN_PRIMITIVE_CACHE_CAPACITY"] = str(settings.kernel_cache)
    # Decoding and inference run at a lower priority than the event loop, so that health checks and the quick
    # refusals of an overloaded server are not queued behind them for the CPU. An engine not given is loaded in
    # the inference thread (``python -m service`` loads it likewise), so the threads its runtime starts inherit
    # that priority.
    lower = {"initializer": lower_thread_priority, "initargs": (settings.worker_nice,)}
    inference = ThreadPoolExecutor(1, "inference", **lower)
    app.state.decode_executor = ThreadPoolExecutor(settings.decode_workers, "decode", **lower)
    engine = app.state.engine
    if engine is None:
        load = partial(load_engine, settings.checkpoint, settings.engine, threads=settings.threads)
        try:
            engine = await asyncio.get_running_loop().run_in_executor(inference, load)
        except BaseException:
            inference.shutdown()
            app.state.decode_executor.shutdown()
            raise
        app.state.engine = engine
    app.state.model_info = model.describe(engine, settings.checkpoint)
    service_metrics: ServiceMetrics = app.state.metrics
    batcher = Batcher(
        app.state.predict_override or engine.predict,
        max_batch_size=settings.max_batch_size,
        max_wait_ms=settings.max_wait_ms,
        queue_size=settings.queue_size,
        on_batch=service_metrics.observe_batch,
        on_idle=MemoryTrimmer(),
    )
    batcher.start(inference)
    service_metrics.track_queue(lambda: batcher.depth)
    app.state.batcher = batcher
    warm_up = asyncio.create_task(_warm_up(app, inference), name="warm-up")
    heartbeat = asyncio.create_task(loop_heartbeat(app), name="heartbeat")  # for the probe port's answers
    try:
        yield
    finally:
        app.state.ready = False
        heartbeat.cancel()
        await batcher.stop()  # finishes every image already accepted
        await warm_up
        inference.shutdown(wait=True)
        app.state.decode_executor.shutdown(wait=True)
        engine.close()


async def _warm_up(app: FastAPI, inference: ThreadPoolExecutor) -> None:
    """A few forward passes at the usual input size (first passes allocate and pick kernels), then ready."""
    engine = app.state.engine
    height, width = engine.card.cost["input_size"]
    image = np.random.default_rng(0).random((3, height, width), dtype=np.float32)
    loop = asyncio.get_running_loop()
    try:
        for _ in range(app.state.settings.warmup_runs):
            await loop.run_in_executor(inference, engine.predict, [image])
    except Exception:  # a model that cannot run one image must not report ready
        log.exception("warm-up failed; /readyz stays 503")
        return
    app.state.ready = True
