"""Downloader middleware: wait as long as a site asks (Retry-After) before Scrapy retries a 429 or 503."""

from __future__ import annotations

import asyncio
import email.utils
import logging
import time
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from scrapy import Request
    from scrapy.crawler import Crawler
    from scrapy.http import Response

logger = logging.getLogger(__name__)

RETRY_AFTER_STATUS = frozenset({429, 503})


def retry_after_seconds(value: str | None, now: float | None = None) -> float | None:
    """Seconds to wait from a Retry-After header: a number of seconds or an HTTP date; None when absent or
    unreadable."""
    if not value:
        return None
    value = value.strip()
    if value.isdigit():
        return float(value)
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError, IndexError):
        return None
    if when is None:
        return None
    return max(0.0, when.timestamp() - (time.time() if now is None else now))


class RetryAfterMiddleware:
    """Before RetryMiddleware (closer to the downloader) sees a 429 or 503 with Retry-After, wait that long (capped
    by IMGSEARCH_RETRY_AFTER_MAX) and raise the site's download delay to it, so that its other requests slow down
    too. Pages and images alike: images come through the engine as well."""

    def __init__(self, crawler: Crawler, max_wait: float) -> None:
        self.crawler = crawler
        self.max_wait = max_wait

    @classmethod
    def from_crawler(cls, crawler: Crawler) -> RetryAfterMiddleware:
        return cls(crawler, crawler.settings.getfloat("IMGSEARCH_RETRY_AFTER_MAX"))

    async def process_response(self, request: Request, response: Response) -> Response:
        if response.status not in RETRY_AFTER_STATUS:
            return response
        wait = retry_after_seconds(response.headers.get(b"Retry-After", b"").decode("latin-1"))
        if wait is None:
            return response
        wait = min(wait, self.max_wait)
        stats = self.crawler.stats
        stats.inc_value("imgsearch/politeness/retry_after")
        stats.max_value("imgsearch/politeness/retry_after_max_seconds", wait)
        downloader = self.crawler.engine.downloader
        slot_key = downloader.get_slot_key(request)
        slot = downloader.slots.get(slot_key)
        if slot is not None and slot.delay < wait:
            slot.delay = wait
        logger.info("%s answered %d with Retry-After: waiting %.1f s before retrying %s", slot_key, response.status,
                    wait, request.url)
        await asyncio.sleep(wait)
        return response
