"""Prometheus metrics, one registry per app (so tests can build many apps), and the middleware that counts requests.

Requests are labelled by route template (``/detect``), never by raw path, so random URLs cannot grow the
number of series.
"""

import time
from collections.abc import Callable

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from .budget import Budgets

LATENCY_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60)


class ServiceMetrics:
    def __init__(self, max_batch_size: int) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        self.requests = Counter(
            "service_requests",
            "HTTP requests by route and status",
            ["route", "method", "status"],
            registry=self.registry,
        )
        self.latency = Histogram(
            "service_request_duration_seconds",
            "time to answer a request, by route",
            ["route"],
            buckets=LATENCY_BUCKETS,
            registry=self.registry,
        )
        sizes = sorted({1, 2, 4, 8, 16, 32, 64, 128, 256, max_batch_size})
        self.batch_size = Histogram(
            "service_batch_size",
            "images per forward pass",
            buckets=[s for s in sizes if s <= max_batch_size],
            registry=self.registry,
        )
        self.inference = Histogram(
            "service_inference_seconds", "duration of one forward pass", buckets=LATENCY_BUCKETS, registry=self.registry
        )
        self.images = Counter("service_images_processed", "images run through the model", registry=self.registry)
        self.images_decoded = Counter("service_images_decoded", "images decoded", registry=self.registry)
        self.failed_batches = Counter("service_failed_batches", "forward passes that raised", registry=self.registry)
        self.queue_depth = Gauge("service_queue_depth", "images waiting for a forward pass", registry=self.registry)
        self.budget_used = Gauge(
            "service_budget_used",
            "what requests hold of each budget: body_bytes, decode_pixels, images (admitted)",
            ["budget"],
            registry=self.registry,
        )
        self.rejected = Counter(
            "service_rejected",
            "accepted requests that got no detections: queue_full, timeout, client_gone, batch_failed",
            ["reason"],
            registry=self.registry,
        )

    def observe_batch(self, size: int, seconds: float, failed: bool = False) -> None:
        self.batch_size.observe(size)
        self.inference.observe(seconds)
        if failed:
            self.failed_batches.inc()
        else:
            self.images.inc(size)

    def track_queue(self, depth: Callable[[], int]) -> None:
        self.queue_depth.set_function(depth)

    def track_budgets(self, budgets: Budgets) -> None:
        for budget in (budgets.body_bytes, budgets.decode_pixels, budgets.images):
            self.budget_used.labels(budget.name).set_function(lambda budget=budget: budget.used)


class MetricsMiddleware:
    """Counts every HTTP request by route template and status, and times it."""

    def __init__(self, app: ASGIApp, metrics: ServiceMetrics) -> None:
        self.app = app
        self.metrics = metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        start = time.perf_counter()
        status = 500  # what the client sees if the app raises before answering

        async def send_status(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, send_status)
        finally:
            route = scope.get("route")
            name = getattr(route, "path", None) or "unmatched"
            method = scope["method"] if scope["method"] in ("GET", "POST", "HEAD", "OPTIONS") else "other"
            self.metrics.requests.labels(name, method, str(status)).inc()
            self.metrics.latency.labels(name).observe(time.perf_counter() - start)
