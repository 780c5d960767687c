"""Dynamic batching: requests' images wait in one bounded queue; one worker runs them through the model in batches.

The worker (an asyncio task) takes the oldest waiting image and whatever else arrives within ``max_wait_ms`` of
that image's arrival, up to ``max_batch_size`` images, and runs one forward pass in its own thread so the event
loop keeps accepting and decoding. An image that has already waited ``max_wait_ms`` (because the model was busy)
goes into the next batch at once: batching never adds more than ``max_wait_ms`` to a lone request.

Within a batch, requests take turns: each waiting request's first image, then each one's second, and so on, so
a request of sixteen images does not hold back the one-image requests that arrive behind it. Every batch still
takes the oldest waiting image, so a large request advances with every pass and is never starved.

``predict`` is any callable from a list of (3, H, W) tensors to one result per tensor (``Detector.predict``, or a
stand-in in tests). A batch that raises fails only the images in it.
"""

import asyncio
import itertools
import time
from collections import deque
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

import numpy as np

PredictFn = Callable[[list[np.ndarray]], Sequence[Any]]


class QueueFull(Exception):
    """The queue cannot take the request's images now; the client should retry later."""


class BatcherClosed(Exception):
    """The service is shutting down and accepts no new work."""


class BatchFailed(Exception):
    """The forward pass that held this image raised; the message says how."""


class RequestTimeout(Exception):
    """The images were not processed within the request's timeout."""


@dataclass(eq=False)
class _Job:
    image: np.ndarray
    future: asyncio.Future
    enqueued: float  # time.monotonic()
    request: int = 0  # which submit() it came from: requests take turns within a batch
    started: float = 0.0
    inference_s: float = 0.0
    batch_id: int = -1
    batch_size: int = 0


@dataclass(frozen=True)
class Outcome:
    """Results for one request, in the order of its images, with the time they spent where."""

    results: list[Any]
    queue_s: float  # longest wait of its images between arrival and the start of their forward pass
    inference_s: float  # the forward passes that held its images, added up
    batch_sizes: list[int] = field(default_factory=list)


class Batcher:
    def __init__(
        self,
        predict: PredictFn,
        *,
        max_batch_size: int,
        max_wait_ms: float,
        queue_size: int,
        on_batch: Callable[[int, float, bool], None] | None = None,
        on_idle: Callable[[], None] | None = None,
        idle_after_s: float = 1.0,
    ) -> None:
        """``queue_size`` counts images; ``on_batch(size, seconds, failed)`` hears of every forward pass;
        ``on_idle()`` runs in the inference thread once nothing has arrived for ``idle_after_s`` after a batch."""
        if max_batch_size < 1 or queue_size < 1 or max_wait_ms < 0:
            raise ValueError(f"bad batcher limits: {max_batch_size=}, {queue_size=}, {max_wait_ms=}")
        self.predict = predict
        self.max_batch_size = max_batch_size
        self.max_wait_s = max_wait_ms / 1000
        self.queue_size = queue_size
        self.on_batch = on_batch
        self.on_idle = on_idle
        self.idle_after_s = idle_after_s
        self._ran_since_idle = False
        self._waiting: deque[_Job] = deque()
        self._arrived: asyncio.Event | None = None
        self._worker: asyncio.Task | None = None
        self._executor: ThreadPoolExecutor | None = None
        self._owns_executor = False
        self._closing = False
        self.batches_run = 0
        self._requests = itertools.count()

    @property
    def depth(self) -> int:
        """Images waiting for a forward pass (not counting the one running)."""
        return len(self._waiting)

    @property
    def running(self) -> bool:
        return self._worker is not None and not self._worker.done()

    def start(self, executor: ThreadPoolExecutor | None = None) -> None:
        """Start the worker on the running loop; ``executor`` (one thread) may be shared with warm-up."""
        self._arrived = asyncio.Event()
        self._owns_executor = executor is None
        self._executor = executor or ThreadPoolExecutor(max_workers=1, thread_name_prefix="inference")
        self._worker = asyncio.get_running_loop().create_task(self._run(), name="batcher")

    async def stop(self) -> None:
        """Refuse new work, finish every image already accepted, then stop the worker."""
        self._closing = True
        if self._arrived is not None:
            self._arrived.set()
        if self._worker is not None:
            await self._worker
        if self._owns_executor and self._executor is not None:
            self._executor.shutdown(wait=True)

    async def submit(self, images: Sequence[np.ndarray], *, timeout: float) -> Outcome:
        """Queue ``images`` as one request and wait for all their results (QueueFull, BatcherClosed,
        BatchFailed, RequestTimeout). Cancelling the caller withdraws whatever has not started yet."""
        if self._closing or not self.running:
            raise BatcherClosed("the service is shutting down")
        if len(self._waiting) + len(images) > self.queue_size:
            raise QueueFull(f"the queue holds {len(self._waiting)} of {self.queue_size} images")
        loop = asyncio.get_running_loop()
        now = time.monotonic()
        request = next(self._requests)
        jobs = [_Job(image, loop.create_future(), now, request) for image in images]
        self._waiting.extend(jobs)
        self._arrived.set()
        try:
            results = await asyncio.wait_for(asyncio.gather(*(job.future for job in jobs)), timeout)
        except TimeoutError:
            raise RequestTimeout(f"not processed within {timeout:g} s") from None
        finally:
            self._withdraw(jobs)
        passes = {job.batch_id: job.inference_s for job in jobs}  # images sharing a pass count it once
        return Outcome(
            results=list(results),
            queue_s=max(job.started - job.enqueued for job in jobs),
            inference_s=sum(passes.values()),
            batch_sizes=[job.batch_size for job in jobs],
        )

    def _withdraw(self, jobs: list[_Job]) -> None:
        """Take a finished, failed or abandoned request's jobs out of the queue so they free their places."""
        pending = {id(job) for job in jobs if job.batch_id < 0}
        if pending:
            self._waiting = deque(job for job in self._waiting if id(job) not in pending)
        for job in jobs:
            if not job.future.done():
                job.future.cancel()

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            while not self._waiting:
                if self._closing:
                    return
                self._arrived.clear()
                if self._ran_since_idle and self.on_idle is not None:
                    try:
                        await asyncio.wait_for(self._arrived.wait(), self.idle_after_s)
                    except TimeoutError:
                        self._ran_since_idle = False
                        await loop.run_in_executor(self._executor, self.on_idle)
                else:
                    await self._arrived.wait()
            deadline = self._waiting[0].enqueued + self.max_wait_s
            while len(self._waiting) < self.max_batch_size and not self._closing:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    break
                self._arrived.clear()
                try:
                    await asyncio.wait_for(self._arrived.wait(), remaining)
                except TimeoutError:
                    break
                if not self._waiting:  # everything waiting was withdrawn meanwhile
                    break
            batch = self._take_batch()
            if batch:
                await self._run_batch(loop, batch)
                self._ran_since_idle = True

    def _take_batch(self) -> list[_Job]:
        """Up to ``max_batch_size`` waiting images, requests taking turns (each one's first waiting image, then
        each one's second...), in arrival order; the oldest image is always among them."""
        by_request: dict[int, list[_Job]] = {}
        for job in self._waiting:
            by_request.setdefault(job.request, []).append(job)
        chosen: set[int] = set()
        for turn in range(self.max_batch_size):
            for jobs in by_request.values():
                if turn < len(jobs) and len(chosen) < self.max_batch_size:
                    chosen.add(id(jobs[turn]))
        batch = [job for job in self._waiting if id(job) in chosen]
        self._waiting = deque(job for job in self._waiting if id(job) not in chosen)
        return batch

    async def _run_batch(self, loop: asyncio.AbstractEventLoop, batch: list[_Job]) -> None:
        started = time.monotonic()
        for job in batch:
            job.started = started
            job.batch_id = self.batches_run
            job.batch_size = len(batch)
        try:
            results = await loop.run_in_executor(self._executor, self._predict, [job.image for job in batch])
            error = None
        except Exception as exc:  # any failure of the model belongs to this batch only
            results, error = None, BatchFailed(f"inference failed: {type(exc).__name__}: {exc}")
        seconds = time.monotonic() - started
        self.batches_run += 1
        if self.on_batch is not None:
            self.on_batch(len(batch), seconds, error is not None)
        for i, job in enumerate(batch):
            job.inference_s = seconds
            job.image = None  # the tensor is no longer needed; do not keep it alive with the future
            if job.future.done():  # the client went away or timed out
                continue
            if error is not None:
                job.future.set_exception(error)
            else:
                job.future.set_result(results[i])

    def _predict(self, images: list[np.ndarray]) -> Sequence[Any]:
        results = self.predict(images)
        if len(results) != len(images):
            raise RuntimeError(f"predict returned {len(results)} results for {len(images)} images")
        return results
