"""Scrapy's downloader, with CONCURRENT_REQUESTS_PER_DOMAIN applied to every request its slots queue.

Scrapy (2.19) starts each download of a slot's queue as an asyncio task, and the download takes its transfer
place only when that task first runs. One pass over a queue therefore started every request in it: with no
download delay, the images the fetch stage hands to the engine (hundreds at once, see IMGSEARCH_FETCH_MAX_IN_FLIGHT)
all went to the site at the same time, each on a new connection, since none had finished to give its
connection back. Pages are not affected (the engine hands them over one by one, within CONCURRENT_REQUESTS),
nor are crawls with a download delay (AutoThrottle's included), which take one request per delay.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from scrapy.core.downloader import Downloader as ScrapyDownloader

if TYPE_CHECKING:
    from collections.abc import Coroutine

    from scrapy import Request
    from scrapy.core.downloader import Slot
    from twisted.internet.defer import Deferred


class Downloader(ScrapyDownloader):
    def _wait_for_download(self, slot: Slot, request: Request,
                           queue_dfd: Deferred[Any]) -> Coroutine[Any, Any, None]:
        # Called in the queue pass, before the task exists: the place is taken before the pass looks for the
        # next free one. The download adds the request again (a set) and gives the place back when it ends.
        slot.transferring.add(request)
        return super()._wait_for_download(slot, request, queue_dfd)
