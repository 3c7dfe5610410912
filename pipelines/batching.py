"""Gather single items from many concurrent callers into batches, by size and by time.

Embedding and bulk indexing are both much cheaper per item in batches, but a crawl hands them one item at
a time from many concurrent `process_item` calls. A caller awaits `submit(x)` and gets its own result back;
a batch goes out when it is full, when its oldest item has waited `max_wait` seconds (so a slow trickle
never stalls the crawl), or at `close()`; and at once, partial, when a place in flight is free and nothing more
is on its way (`Occupancy`: no item is in a stage before this one), as at the end of a crawl, so that the last
images do not wait out the timers of every stage in turn.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
import weakref
from collections import Counter
from collections.abc import Awaitable, Callable, Iterator, Sequence
from contextlib import contextmanager
from typing import Any, Generic, TypeVar

logger = logging.getLogger(__name__)

T = TypeVar("T")
R = TypeVar("R")


class Batcher(Generic[T, R]):
    """Async micro-batcher over `handle(batch) -> results` (one result per input, in order)."""

    def __init__(self, handle: Callable[[list[T]], Awaitable[Sequence[R]]], *, size: int, max_wait: float,
                 max_in_flight: int = 2, spread: bool = False,
                 upstream_idle: Callable[[], bool] | None = None) -> None:
        self._handle = handle
        self.size = max(1, int(size))
        self.max_wait = float(max_wait)
        # Spread a batch over the free places in flight when several are free (see _dispatch).
        self.spread = spread
        self._max_in_flight = max(1, int(max_in_flight))
        self._pending: list[tuple[T, asyncio.Future[R]]] = []
        self._timer: asyncio.TimerHandle | None = None
        self._tasks: set[asyncio.Task[None]] = set()
        # Bounds the batches being handled at once, so a slow consumer pushes back on the callers.
        self._in_flight = asyncio.Semaphore(self._max_in_flight)
        # True when no item is on its way to this batcher: what is pending is all there will be for now.
        self._upstream_idle = upstream_idle

    async def submit(self, item: T) -> R:
        future: asyncio.Future[R] = asyncio.get_running_loop().create_future()
        self._pending.append((item, future))
        if len(self._pending) >= self.size or self._nothing_more_coming():
            self._dispatch()
        elif self._timer is None:
            self._timer = asyncio.get_running_loop().call_later(self.max_wait, self._dispatch)
        return await future

    def flush(self) -> None:
        """Send what is pending now, without waiting for it."""
        self._dispatch()

    def poke(self) -> None:
        """Something upstream changed (an item left an earlier stage): send what is pending if nothing more is
        on its way and a place is free."""
        if self._pending and self._nothing_more_coming():
            self._dispatch()

    def _nothing_more_coming(self) -> bool:
        # Only into a free place: a partial batch queued behind busy ones would just wait there, where it could
        # still have been filled.
        return (self._upstream_idle is not None and len(self._tasks) < self._max_in_flight
                and self._upstream_idle())

    async def close(self) -> None:
        """Send what is pending and wait until every batch has been handled."""
        self._dispatch()
        while self._tasks:
            await asyncio.gather(*list(self._tasks), return_exceptions=True)

    def _dispatch(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        while self._pending:
            batch, self._pending = self._pending[: self.size], self._pending[self.size:]
            free = self._max_in_flight - len(self._tasks)
            parts = min(free, len(batch)) if self.spread and not self._pending and free >= 2 else 1
            # With `spread`, a batch that would run alone while other places stand idle (the first batches,
            # the last ones, a trickle) is cut into as many parts as there are free places, so that the work
            # behind them (a model's threads, one per place) is not left to a single one.
            for i in range(parts):
                task = asyncio.get_running_loop().create_task(self._run(batch[i::parts] if parts > 1 else batch))
                self._tasks.add(task)
                task.add_done_callback(self._finished)

    def _finished(self, task: asyncio.Task[None]) -> None:
        self._tasks.discard(task)
        self.poke()  # a place is free again

    async def _run(self, batch: list[tuple[T, asyncio.Future[R]]]) -> None:
        async with self._in_flight:
            try:
                results = await self._handle([item for item, _ in batch])
                if len(results) != len(batch):
                    raise RuntimeError(f"batch handler returned {len(results)} results for {len(batch)} items")
            except BaseException as exc:  # every caller must hear about it, whatever it is
                for _, future in batch:
                    if not future.done():
                        future.set_exception(exc)
                if not isinstance(exc, Exception):
                    raise
                return
            for (_, future), result in zip(batch, results, strict=True):
                if not future.done():
                    future.set_result(result)


# The stages that count their items (see Occupancy), in the order items go through them.
FETCH_STAGE, EMBED_STAGE = "fetch", "embed"


class Occupancy:
    """How many items each stage of one crawl's item pipeline is working on right now.

    A stage counts an item while the item is on its way to the next stage (being looked up, downloaded,
    decoded, embedded), not while it waits for a later stage to finish. A batching stage asks whether any
    earlier stage holds an item (`idle`, for `Batcher`'s `upstream_idle`) and is poked when an item leaves the
    pipeline dropped or failed (`watch`): one that left normally is already on its way to the next stage.
    """

    _of_crawler: weakref.WeakKeyDictionary[Any, Occupancy] = weakref.WeakKeyDictionary()

    def __init__(self) -> None:
        self._counts: Counter[str] = Counter()
        self._watchers: list[Callable[[], None]] = []

    @classmethod
    def of(cls, crawler: Any) -> Occupancy:
        """The one Occupancy of this crawler's stages."""
        occupancy = cls._of_crawler.get(crawler)
        if occupancy is None:
            from scrapy import signals

            occupancy = cls._of_crawler[crawler] = cls()
            for signal in (signals.item_dropped, signals.item_error):
                crawler.signals.connect(occupancy._poke, signal=signal, weak=False)
        return occupancy

    @contextmanager
    def inside(self, stage: str) -> Iterator[None]:
        self._counts[stage] += 1
        try:
            yield
        finally:
            self._counts[stage] -= 1

    def count(self, *stages: str) -> int:
        return sum(self._counts[stage] for stage in stages)

    def idle(self, *stages: str) -> Callable[[], bool]:
        """A test for `Batcher(upstream_idle=...)`: none of these stages holds an item."""
        return lambda: self.count(*stages) == 0

    def watch(self, poke: Callable[[], None]) -> None:
        self._watchers.append(poke)

    def _poke(self, **_: Any) -> None:
        for poke in self._watchers:
            poke()


class StageCpu:
    """CPU seconds a stage's worker threads spend on its items, for the stats (`imgsearch/<stage>/cpu_seconds`):
    with the crawl process's own total, they tell whether the model has the cores or other work takes them."""

    def __init__(self, stats: Any, stage: str) -> None:
        self.stats = stats
        self.key = f"imgsearch/{stage}/cpu_seconds"
        self.seconds = 0.0
        self._lock = threading.Lock()

    def run(self, function: Callable[..., R], *args: Any) -> R:
        """``function(*args)`` in the calling (worker) thread, its CPU time counted whether it returns or raises."""
        started = time.thread_time()
        try:
            return function(*args)
        finally:
            spent = time.thread_time() - started
            with self._lock:
                self.seconds += spent

    def report(self) -> None:
        self.stats.set_value(self.key, round(self.seconds, 3))
