"""The async micro-batcher: routing of results, the size and time triggers, close, errors, concurrency."""

from __future__ import annotations

import asyncio
from collections.abc import Callable

import pytest

from pipelines.batching import EMBED_STAGE, FETCH_STAGE, Batcher, Occupancy, StageCpu

TIMEOUT = 5.0  # generous upper bound for anything that should happen "soon"; never a fixed wait


async def wait_until(predicate: Callable[[], bool], timeout: float = TIMEOUT) -> None:
    """Yield to the loop until `predicate()` holds; fail after `timeout` seconds."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not predicate():
        if loop.time() > deadline:
            raise AssertionError(f"condition not met within {timeout} s")
        await asyncio.sleep(0.001)


async def settle(rounds: int = 20) -> None:
    """Let every ready callback and task run a few times (no wall-clock wait)."""
    for _ in range(rounds):
        await asyncio.sleep(0)


class Recorder:
    """A batch handler that records its batches and answers each item with a value derived from it."""

    def __init__(self, gate: asyncio.Event | None = None) -> None:
        self.batches: list[list[int]] = []
        self.running = 0
        self.max_running = 0
        self.gate = gate

    async def __call__(self, batch: list[int]) -> list[str]:
        self.batches.append(list(batch))
        self.running += 1
        self.max_running = max(self.max_running, self.running)
        try:
            if self.gate is not None:
                await self.gate.wait()
            else:
                await asyncio.sleep(0)
            return [f"result-{x}" for x in batch]
        finally:
            self.running -= 1


def test_each_caller_gets_its_own_result_in_order():
    async def main():
        handler = Recorder()
        batcher = Batcher(handler, size=4, max_wait=60)
        tasks = [asyncio.create_task(batcher.submit(i)) for i in range(10)]
        await settle()
        await batcher.close()
        return handler, await asyncio.gather(*tasks)

    handler, results = asyncio.run(main())
    assert results == [f"result-{i}" for i in range(10)]
    assert handler.batches == [[0, 1, 2, 3], [4, 5, 6, 7], [8, 9]]


def test_results_follow_positions_even_when_batches_finish_out_of_order():
    async def main():
        first_gate = asyncio.Event()

        async def handle(batch: list[int]) -> list[int]:
            if 0 in batch:  # the first batch finishes last
                await first_gate.wait()
            return [x * 10 for x in batch]

        batcher = Batcher(handle, size=2, max_wait=60)
        tasks = [asyncio.create_task(batcher.submit(i)) for i in range(4)]
        await wait_until(lambda: tasks[2].done() and tasks[3].done())
        assert not tasks[0].done() and not tasks[1].done()
        first_gate.set()
        await batcher.close()
        return await asyncio.gather(*tasks)

    assert asyncio.run(main()) == [0, 10, 20, 30]


def test_a_full_batch_goes_out_at_once():
    async def main():
        handler = Recorder()
        batcher = Batcher(handler, size=3, max_wait=60)  # the timer would never fire within the test
        full = [asyncio.create_task(batcher.submit(i)) for i in range(3)]
        extra = asyncio.create_task(batcher.submit(3))
        results = await asyncio.wait_for(asyncio.gather(*full), TIMEOUT)
        await settle()
        assert not extra.done(), "a partial batch must wait for size, time or close"
        assert handler.batches == [[0, 1, 2]]
        await batcher.close()
        return results, await extra, handler.batches

    results, extra, batches = asyncio.run(main())
    assert results == ["result-0", "result-1", "result-2"]
    assert extra == "result-3"
    assert batches == [[0, 1, 2], [3]]


def test_a_partial_batch_goes_out_after_max_wait():
    async def main():
        loop = asyncio.get_running_loop()
        sent_at: list[float] = []
        recorder = Recorder()

        async def handler(batch: list[int]) -> list[str]:
            sent_at.append(loop.time())
            return await recorder(batch)

        batcher = Batcher(handler, size=100, max_wait=0.05)
        start = loop.time()
        tasks = [asyncio.create_task(batcher.submit(i)) for i in range(2)]
        first = await asyncio.wait_for(asyncio.gather(*tasks), TIMEOUT)  # no close(): only the timer can send it
        # When the batch went, not whether it had gone by some moment: a stalled loop cannot fail this.
        waited = sent_at[0] - start
        # A later trickle gets its own timer.
        second = await asyncio.wait_for(batcher.submit(7), TIMEOUT)
        await batcher.close()
        return first, second, waited, recorder.batches

    first, second, waited, batches = asyncio.run(main())
    assert first == ["result-0", "result-1"]
    assert second == "result-7"
    assert waited >= 0.04  # the loop clock; call_later may fire a hair early
    assert batches == [[0, 1], [7]]


def test_flush_sends_what_is_pending_without_waiting_for_it():
    async def main():
        gate = asyncio.Event()
        handler = Recorder(gate)
        batcher = Batcher(handler, size=100, max_wait=60)
        tasks = [asyncio.create_task(batcher.submit(i)) for i in range(3)]
        await settle()
        batcher.flush()
        await wait_until(lambda: handler.running == 1)
        assert handler.batches == [[0, 1, 2]]
        assert not any(t.done() for t in tasks)
        gate.set()
        return await asyncio.wait_for(asyncio.gather(*tasks), TIMEOUT)

    assert asyncio.run(main()) == ["result-0", "result-1", "result-2"]


def test_close_flushes_and_waits_for_every_batch():
    async def main():
        gate = asyncio.Event()
        handler = Recorder(gate)
        batcher = Batcher(handler, size=2, max_wait=60, max_in_flight=4)
        tasks = [asyncio.create_task(batcher.submit(i)) for i in range(5)]  # [0, 1], [2, 3] go out by size
        await wait_until(lambda: handler.running == 2)
        closing = asyncio.create_task(batcher.close())
        await wait_until(lambda: handler.running == 3)  # close sent the partial batch [4]
        await settle()
        assert not closing.done(), "close() returned while batches were still being handled"
        gate.set()
        await asyncio.wait_for(closing, TIMEOUT)
        assert all(t.done() for t in tasks), "close() returned before every caller had its result"
        return [t.result() for t in tasks], handler.batches

    results, batches = asyncio.run(main())
    assert results == [f"result-{i}" for i in range(5)]
    assert batches == [[0, 1], [2, 3], [4]]


def test_close_with_nothing_pending_sends_no_batch():
    async def main():
        handler = Recorder()
        batcher = Batcher(handler, size=2, max_wait=60)
        await asyncio.wait_for(batcher.close(), TIMEOUT)
        return handler.batches

    assert asyncio.run(main()) == []


def test_a_handler_error_reaches_every_caller_of_that_batch_and_no_other():
    class Boom(Exception):
        pass

    async def main():
        async def handle(batch: list[int]) -> list[int]:
            await asyncio.sleep(0)
            if 1 in batch:
                raise Boom("batch with 1")
            return [x + 100 for x in batch]

        batcher = Batcher(handle, size=2, max_wait=60)
        tasks = [asyncio.create_task(batcher.submit(i)) for i in range(6)]
        await batcher.close()
        return await asyncio.gather(*tasks, return_exceptions=True)

    results = asyncio.run(main())
    assert isinstance(results[0], Boom) and isinstance(results[1], Boom)
    assert results[0] is results[1]
    assert results[2:] == [102, 103, 104, 105]


def test_a_handler_that_returns_the_wrong_number_of_results_fails_its_batch():
    async def main():
        async def handle(batch: list[int]) -> list[int]:
            return batch[:-1] if 0 in batch else batch

        batcher = Batcher(handle, size=2, max_wait=60)
        tasks = [asyncio.create_task(batcher.submit(i)) for i in range(4)]
        await batcher.close()
        return await asyncio.gather(*tasks, return_exceptions=True)

    results = asyncio.run(main())
    assert all(isinstance(r, RuntimeError) and "returned 1 results for 2 items" in str(r) for r in results[:2])
    assert results[2:] == [2, 3]


def test_the_batcher_keeps_working_after_a_failed_batch():
    async def main():
        fail = True

        async def handle(batch: list[int]) -> list[int]:
            if fail:
                raise ValueError("down")
            return batch

        batcher = Batcher(handle, size=1, max_wait=60)
        with pytest.raises(ValueError):
            await asyncio.wait_for(batcher.submit(1), TIMEOUT)
        fail = False
        result = await asyncio.wait_for(batcher.submit(2), TIMEOUT)
        await batcher.close()
        return result

    assert asyncio.run(main()) == 2


# A setting of 0 (or less) means one batch at a time, never none.
@pytest.mark.parametrize(("max_in_flight", "bound"), [(1, 1), (2, 2), (3, 3), (0, 1)])
def test_max_in_flight_bounds_concurrent_handler_calls(max_in_flight, bound):
    async def main():
        gate = asyncio.Event()
        handler = Recorder(gate)
        batcher = Batcher(handler, size=1, max_wait=60, max_in_flight=max_in_flight)
        tasks = [asyncio.create_task(batcher.submit(i)) for i in range(8)]
        await wait_until(lambda: handler.running == bound)
        await settle(50)
        assert handler.running == bound, "more batches handled at once than max_in_flight"
        assert len(handler.batches) == bound
        gate.set()
        results = await asyncio.wait_for(asyncio.gather(*tasks), TIMEOUT)
        await batcher.close()
        return results, handler

    results, handler = asyncio.run(main())
    assert results == [f"result-{i}" for i in range(8)]
    assert handler.max_running == bound
    assert sorted(b[0] for b in handler.batches) == list(range(8))


def test_a_slot_is_freed_when_a_handler_fails():
    async def main():
        async def handle(batch: list[int]) -> list[int]:
            if batch == [0]:
                raise ValueError("first")
            return batch

        batcher = Batcher(handle, size=1, max_wait=60, max_in_flight=1)
        tasks = [asyncio.create_task(batcher.submit(i)) for i in range(3)]
        done = await asyncio.wait_for(asyncio.gather(*tasks, return_exceptions=True), TIMEOUT)
        await batcher.close()
        return done

    results = asyncio.run(main())
    assert isinstance(results[0], ValueError)
    assert results[1:] == [1, 2]


def test_spread_cuts_a_batch_over_the_free_places_and_only_then():
    async def main():
        gate = asyncio.Event()
        handler = Recorder(gate)
        batcher = Batcher(handler, size=4, max_wait=60, max_in_flight=2, spread=True)
        first = [asyncio.create_task(batcher.submit(i)) for i in range(4)]  # both places free: two halves
        await wait_until(lambda: handler.running == 2)
        second = [asyncio.create_task(batcher.submit(i)) for i in range(4, 8)]  # none free: whole, waiting
        await settle()
        gate.set()
        results = await asyncio.wait_for(asyncio.gather(*first, *second), TIMEOUT)
        return results, handler.batches

    results, batches = asyncio.run(main())
    assert results == [f"result-{i}" for i in range(8)]
    assert batches == [[0, 2], [1, 3], [4, 5, 6, 7]]


def test_without_spread_a_batch_stays_whole():
    async def main():
        handler = Recorder()
        batcher = Batcher(handler, size=4, max_wait=60, max_in_flight=2)
        await asyncio.wait_for(asyncio.gather(*[batcher.submit(i) for i in range(4)]), TIMEOUT)
        return handler.batches

    assert asyncio.run(main()) == [[0, 1, 2, 3]]


def test_a_partial_batch_goes_at_once_when_nothing_more_is_on_its_way():
    async def main():
        occupancy = Occupancy()
        handler = Recorder()
        batcher = Batcher(handler, size=10, max_wait=60, upstream_idle=occupancy.idle(FETCH_STAGE))
        occupancy.watch(batcher.poke)
        with occupancy.inside(FETCH_STAGE):  # an item still downloading: the first three wait for it
            first = [asyncio.create_task(batcher.submit(i)) for i in range(3)]
            await settle()
            assert handler.batches == []
        last = asyncio.create_task(batcher.submit(3))  # the last one, with nothing upstream: no 60 s timer
        assert await asyncio.wait_for(asyncio.gather(*first, last), TIMEOUT) == [f"result-{i}" for i in range(4)]
        assert handler.batches == [[0, 1, 2, 3]]

    asyncio.run(main())


def test_an_item_dropped_upstream_releases_what_waits_for_it():
    async def main():
        occupancy = Occupancy()
        handler = Recorder()
        batcher = Batcher(handler, size=10, max_wait=60, upstream_idle=occupancy.idle(FETCH_STAGE, EMBED_STAGE))
        occupancy.watch(batcher.poke)
        with occupancy.inside(EMBED_STAGE):
            waiting = asyncio.create_task(batcher.submit(1))
            await settle()
            assert handler.batches == []
        # The item left without reaching this stage (a rejected image): what signals a drop pokes the batcher.
        occupancy._poke()
        assert await asyncio.wait_for(waiting, TIMEOUT) == "result-1"

    asyncio.run(main())


def test_a_partial_batch_is_not_queued_behind_busy_places():
    async def main():
        gate = asyncio.Event()
        handler = Recorder(gate)
        idle = False
        batcher = Batcher(handler, size=3, max_wait=60, max_in_flight=1, upstream_idle=lambda: idle)
        busy = [asyncio.create_task(batcher.submit(i)) for i in range(3)]  # full: takes the only place
        await settle()
        idle = True
        trickle = [asyncio.create_task(batcher.submit(i)) for i in (3, 4)]
        await settle()
        assert handler.batches == [[0, 1, 2]]  # 3 and 4 pending, not queued alone behind the busy place
        gate.set()  # the place frees: what is pending goes at once
        await asyncio.wait_for(asyncio.gather(*busy, *trickle), TIMEOUT)
        assert handler.batches == [[0, 1, 2], [3, 4]]

    asyncio.run(main())


def test_stage_cpu_counts_the_worker_threads_time_whether_the_work_returns_or_raises():
    import concurrent.futures
    import time

    from scrapy.statscollectors import MemoryStatsCollector
    from scrapy.utils.test import get_crawler

    def spin(seconds: float, fail: bool = False) -> str:
        end = time.thread_time() + seconds
        while time.thread_time() < end:
            pass
        if fail:
            raise ValueError("bad image")
        return "done"

    stats = MemoryStatsCollector(get_crawler())
    cpu = StageCpu(stats, "fetch")
    with concurrent.futures.ThreadPoolExecutor(max_workers=2) as pool:
        done = pool.submit(cpu.run, spin, 0.05)
        failed = pool.submit(cpu.run, spin, 0.05, True)
        assert done.result() == "done"
        with pytest.raises(ValueError):
            failed.result()
    cpu.report()
    assert 0.1 <= stats.get_value("imgsearch/fetch/cpu_seconds") < 1.0
