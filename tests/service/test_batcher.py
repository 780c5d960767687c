"""The dynamic batcher on its own, with stand-in predict functions."""

import asyncio
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
    batcher = await started(Recorder(), max_wait_ms=50)
    outcome = await batcher.submit(images(1), timeout=5)
    await batcher.stop()
    assert 0.04 <= outcome.queue_s < 0.05 + 0.1  # slack for a busy test machine


async def test_a_full_batch_does_not_wait():
    batcher = await started(Recorder(), max_wait_ms=5000, max_batch_size=4)
    start = time.monotonic()
    await batcher.submit(images(4), timeout=5)
    await batcher.stop()
    assert time.monotonic() - start < 1


async def test_images_that_waited_for_a_busy_model_go_at_once():
    model = Recorder(delay=0.3)
    batcher = await started(model, max_wait_ms=200, max_batch_size=8)
    first = asyncio.ensure_future(batcher.submit(images(1), timeout=5))
    await asyncio.sleep(0.25)  # the first batch starts at 0.2 s and runs until 0.5 s
    second = await batcher.submit(images(1), timeout=5)
    await first
    await batcher.stop()
    # The second image arrived at 0.25 s, was taken when the model freed at 0.5 s, with no extra 0.2 s wait.
    assert second.queue_s < 0.25 + 0.1


async def test_queue_full_is_refused_at_once():
    batcher = await started(Recorder(delay=0.2), queue_size=4, max_batch_size=1, max_wait_ms=0)
    running = asyncio.ensure_future(batcher.submit(images(1), timeout=5))
    await asyncio.sleep(0.05)  # that one is in the model now; the queue is empty
    waiting = asyncio.ensure_future(batcher.submit(images(3), timeout=5))
    await asyncio.sleep(0)
    start = time.monotonic()
    with pytest.raises(QueueFull):
        await batcher.submit(images(2), timeout=5)
    assert time.monotonic() - start < 0.05
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


async def test_batches_group_images_by_key_without_passing_anyone_over_twice():
    seen: list[list[float]] = []

    def record(batch):
        seen.append(echo(batch))
        return echo(batch)

    batcher = Batcher(
        record, max_batch_size=4, max_wait_ms=50, queue_size=16, group_key=lambda x: float(x[0, 0, 0]) >= 100
    )
    batcher.start()
    values = [1, 101, 2, 102, 3, 4, 103, 5]  # two groups, interleaved
    outcomes = await asyncio.gather(*(batcher.submit(images(1, v), timeout=5) for v in values))
    await batcher.stop()
    assert [o.results[0] for o in outcomes] == values
    assert seen == [[1, 2, 3, 4], [101, 102, 103], [5]]
