"""Gather single items from many concurrent callers into batches, by size and by time.

Embedding and bulk indexing are both much cheaper per item in batches, but a crawl hands them one item at
a time from many concurrent `process_item` calls. A caller awaits `submit(x)` and gets its own result back;
a batch goes out when it is full, when its oldest item has waited `max_wait` seconds (so a slow trickle
never stalls the crawl), or at `close()`.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Sequence
from typing import Generic, TypeVar

logger = logging.getLogger(__name__)

T = TypeVar("T")
R = TypeVar("R")


class Batcher(Generic[T, R]):
    """Async micro-batcher over `handle(batch) -> results` (one result per input, in order)."""

    def __init__(self, handle: Callable[[list[T]], Awaitable[Sequence[R]]], *, size: int, max_wait: float,
                 max_in_flight: int = 2, spread: bool = False) -> None:
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
        self._in_flight = asyncio.Semaphore(max_in_flight)

    async def submit(self, item: T) -> R:
        future: asyncio.Future[R] = asyncio.get_running_loop().create_future()
        self._pending.append((item, future))
        if len(self._pending) >= self.size:
            self._dispatch()
        elif self._timer is None:
            self._timer = asyncio.get_running_loop().call_later(self.max_wait, self._dispatch)
        return await future

    def flush(self) -> None:
        """Send what is pending now, without waiting for it."""
        self._dispatch()

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
                task.add_done_callback(self._tasks.discard)

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
