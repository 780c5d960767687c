"""The dynamic batcher on its own, with stand-in predict functions."""

import asyncio
import threading
import time

import numpy as np
import pytest

from service.batcher import Batcher, BatcherClosed, BatchFailed, QueueFull, RequestTimeout

pytestmark = pytest.mark.anyio


def images(n: int, value: float = 0.0) -> list[np.ndarray]:
    return [np.full((3, 4, 4), value + i, np.float32) for i in range(n)]


def echo(batch: list[np.ndarray]) -> list[float]:
    return [float(image[0, 0, 0]) for image in batch]


class Recorder:
    def __init__(self, delay: float = 0.0, fail_on: float | None = None) -> None:
        self.sizes: list[int] = []
        self.delay = delay
        self.fail_on = fail_on

    def __call__(self, batch):
        self.sizes.append(len(batch))
        time.sleep(self.delay)
        if self.fail_on is not None and any(float(image[0, 0, 0]) == self.fail_on for image in batch):
            raise ValueError("bad batch")
        return echo(batch)


async def started(predict, **limits) -> Batcher:
    batcher = Batcher(predict, **{"max_batch_size": 4, "max_wait_ms": 20, "queue_size": 16, **limits})
    batcher.start()
    return batcher


async def test_concurrent_requests_share_batches_and_get_their_own_results():
    model = Recorder(delay=0.05)
    batcher = await started(model, max_wait_ms=100)
    outcomes = await asyncio.gather(*(batcher.submit(images(1, 10 * i), timeout=5) for i in range(8)))
    await batcher.stop()
    assert [o.results for o in outcomes] == [[10.0 * i] for i in range(8)]
    assert sum(model.sizes) == 8 and len(model.sizes) < 8 and max(model.sizes) <= 4


async def test_a_request_keeps_the_order_of_its_images_across_batches():
    batcher = await started(Recorder(), max_batch_size=3)
    outcome = await batcher.submit(images(7), timeout=5)
    await batcher.stop()
    assert outcome.results == [float(i) for i in range(7)]
    assert sorted(set(outcome.batch_sizes)) == [1, 3]


async def test_a_lone_request_waits_at_most_max_wait_extra():
    batcher = await started(Recorder(), max_wait_ms=200)
    outcome = await batcher.submit(images(1), timeout=30)
    await batcher.stop()
    # Goes when the wait is over, not when a batch fills (never) or the request times out (30 s): the bounds
    # are 25x apart, so a busy machine's scheduling delays cannot cross them.
    assert 0.19 <= outcome.queue_s < 5


async def test_a_full_batch_does_not_wait():
    batcher = await started(Recorder(), max_wait_ms=60_000, max_batch_size=4)
    outcome = await batcher.submit(images(4), timeout=30)
    await batcher.stop()
    assert outcome.queue_s < 5 and outcome.batch_sizes == [4] * 4  # not the 60 s wait


class Gate(Recorder):
    """A model that holds each forward pass until the test opens the gate: what is queued meanwhile is known
    without timing anything."""

    def __init__(self) -> None:
        super().__init__()
        self.open = threading.Event()
        self.entered = threading.Event()

    def __call__(self, batch):
        self.entered.set()
        self.open.wait(30)
        return super().__call__(batch)


async def test_images_that_waited_for_a_busy_model_go_at_once():
    model = Gate()
    batcher = await started(model, max_wait_ms=1000, max_batch_size=2)
    first = asyncio.ensure_future(batcher.submit(images(2), timeout=30))  # a full batch: into the model at once
    await asyncio.to_thread(model.entered.wait, 30)
    second = asyncio.ensure_future(batcher.submit(images(1), timeout=30))  # queued while the model is busy
    await asyncio.sleep(1.2)  # past the second's own 1 s window, the model still held
    model.open.set()
    outcome = await second
    await first
    await batcher.stop()
    # Its window ran out while it waited for the model, so it goes as soon as the model is free (~1.2 s), not
    # after a fresh 1 s window (~2.2 s): half a second of margin either side of the bound.
    assert model.sizes == [2, 1] and 1.2 <= outcome.queue_s < 1.7, outcome


async def test_requests_take_turns_so_a_large_one_does_not_hold_back_a_small_one():
    seen: list[list[float]] = []
    model = Gate()

    def record(batch):
        seen.append(echo(batch))
        return model(batch)

    batcher = await started(record, max_wait_ms=0, max_batch_size=4, queue_size=16)
    blocker = asyncio.ensure_future(batcher.submit(images(1, 100), timeout=30))
    await asyncio.to_thread(model.entered.wait, 30)  # the model is busy; the two requests below queue up
    large = asyncio.ensure_future(batcher.submit(images(8), timeout=30))
    await asyncio.sleep(0)
    small = asyncio.ensure_future(batcher.submit(images(1, 50), timeout=30))
    await asyncio.sleep(0)
    model.open.set()
    outcomes = await asyncio.gather(blocker, large, small)
    await batcher.stop()
    # The one-image request, queued behind eight images, goes in the next pass rather than the third; the large
    # one still advances in every pass and keeps its order.
    assert seen == [[100.0], [0.0, 1.0, 2.0, 50.0], [3.0, 4.0, 5.0, 6.0], [7.0]]
    assert outcomes[1].results == [float(i) for i in range(8)] and outcomes[2].results == [50.0]


async def test_queue_full_is_refused_at_once():
    model = Gate()
    batcher = await started(model, queue_size=4, max_batch_size=1, max_wait_ms=0)
    running = asyncio.ensure_future(batcher.submit(images(1), timeout=30))
    await asyncio.to_thread(model.entered.wait, 30)  # that one is in the model now; the queue is empty
    waiting = asyncio.ensure_future(batcher.submit(images(3), timeout=30))
    await asyncio.sleep(0)
    with pytest.raises(QueueFull):
        await batcher.submit(images(2), timeout=30)
    # Refused while nothing could have left the queue: the model is still held.
    assert not running.done() and not waiting.done() and batcher.depth == 3
    model.open.set()
    await asyncio.gather(running, waiting)
    await batcher.stop()


async def test_timeout_withdraws_the_waiting_images():
    batcher = await started(Recorder(delay=0.3), max_batch_size=1, max_wait_ms=0)
    slow = asyncio.ensure_future(batcher.submit(images(1), timeout=5))
    await asyncio.sleep(0.05)
    with pytest.raises(RequestTimeout):
        await batcher.submit(images(3), timeout=0.1)
    assert batcher.depth == 0  # its images left the queue with it
    await slow
    await batcher.stop()


async def test_cancelled_requests_leave_no_work_behind():
    model = Recorder(delay=0.2)
    batcher = await started(model, max_batch_size=1, max_wait_ms=0)
    first = asyncio.ensure_future(batcher.submit(images(1), timeout=5))
    await asyncio.sleep(0.05)
    abandoned = asyncio.ensure_future(batcher.submit(images(5), timeout=5))
    await asyncio.sleep(0.01)
    assert batcher.depth == 5
    abandoned.cancel()
    await asyncio.gather(abandoned, return_exceptions=True)
    assert batcher.depth == 0
    await first
    await batcher.stop()
    assert model.sizes == [1]


async def test_a_failing_batch_fails_only_its_own_requests():
    model = Recorder(fail_on=666.0)
    batcher = await started(model, max_batch_size=1, max_wait_ms=0)
    good, bad = await asyncio.gather(
        batcher.submit(images(1, 1.0), timeout=5), batcher.submit(images(1, 666.0), timeout=5), return_exceptions=True
    )
    assert good.results == [1.0]
    assert isinstance(bad, BatchFailed) and "ValueError: bad batch" in str(bad)
    after = await batcher.submit(images(1, 2.0), timeout=5)
    assert after.results == [2.0]
    await batcher.stop()


async def test_wrong_number_of_results_is_a_failed_batch():
    batcher = await started(lambda batch: [1], max_batch_size=2, max_wait_ms=0)
    with pytest.raises(BatchFailed, match="1 results for 2 images"):
        await batcher.submit(images(2), timeout=5)
    await batcher.stop()


async def test_stop_finishes_accepted_work_then_refuses_new():
    batcher = await started(Recorder(delay=0.05), max_batch_size=1, max_wait_ms=0)
    accepted = [asyncio.ensure_future(batcher.submit(images(1, i), timeout=5)) for i in range(4)]
    await asyncio.sleep(0)
    await batcher.stop()
    assert [(await a).results for a in accepted] == [[0.0], [1.0], [2.0], [3.0]]
    with pytest.raises(BatcherClosed):
        await batcher.submit(images(1), timeout=5)


def test_bad_limits_are_refused():
    with pytest.raises(ValueError, match="max_batch_size=0"):
        Batcher(echo, max_batch_size=0, max_wait_ms=1, queue_size=1)
