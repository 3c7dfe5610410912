"""A progress line every few seconds during a crawl and a one-line summary at the end, from the stats."""

from __future__ import annotations

import logging
import time
from typing import Any

from scrapy import signals
from scrapy.crawler import Crawler
from twisted.internet import task

logger = logging.getLogger(__name__)


def _reasons(stats: dict[str, Any], prefix: str) -> tuple[int, str]:
    found = {k[len(prefix):]: v for k, v in stats.items() if k.startswith(prefix)}
    total = sum(found.values())
    detail = ", ".join(f"{k} {v}" for k, v in sorted(found.items(), key=lambda kv: -kv[1]))
    return total, f" ({detail})" if detail else ""


def summary(stats: dict[str, Any], elapsed: float) -> str:
    """One line: what the crawl found, fetched, embedded and indexed, and why the rest was not."""
    skipped, skipped_detail = _reasons(stats, "imgsearch/fetch/skipped/")
    failed, failed_detail = _reasons(
        {k.replace("imgsearch/embed/failed/", "imgsearch/fetch/failed/embed_")
          .replace("imgsearch/index/failed/", "imgsearch/fetch/failed/index_"): v for k, v in stats.items()},
        "imgsearch/fetch/failed/")
    indexed = stats.get("imgsearch/index/indexed", 0)
    rate = indexed / elapsed if elapsed > 0 else 0.0
    return (f"pages {stats.get('response_received_count', 0) - stats.get('imgsearch/fetch/downloaded', 0)}, "
            f"images found {stats.get('imgsearch/find/found', 0)}, "
            f"downloaded {stats.get('imgsearch/fetch/downloaded', 0)}, "
            f"embedded {stats.get('imgsearch/embed/embedded', 0)}, "
            f"indexed {indexed} (new images {stats.get('imgsearch/index/images_created', 0)}), "
            f"skipped {skipped}{skipped_detail}, failed {failed}{failed_detail}; "
            f"{rate:.1f} indexed/s over {elapsed:.0f} s")


class Progress:
    """Logs the crawl's progress every IMGSEARCH_PROGRESS_SECONDS and its summary when it closes."""

    def __init__(self, crawler: Crawler, interval: float) -> None:
        self.crawler = crawler
        self.interval = interval
        self.started = time.monotonic()
        self._loop: task.LoopingCall | None = None

    @classmethod
    def from_crawler(cls, crawler: Crawler) -> Progress:
        extension = cls(crawler, crawler.settings.getfloat("IMGSEARCH_PROGRESS_SECONDS", 10.0))
        crawler.signals.connect(extension.spider_opened, signal=signals.spider_opened)
        crawler.signals.connect(extension.spider_closed, signal=signals.spider_closed)
        return extension

    def spider_opened(self) -> None:
        self.started = time.monotonic()
        if self.interval > 0:
            self._loop = task.LoopingCall(self.log_progress)
            self._loop.start(self.interval, now=False)

    def log_progress(self) -> None:
        logger.info("Progress: %s", summary(self.crawler.stats.get_stats(), time.monotonic() - self.started))

    def spider_closed(self, reason: str) -> None:
        if self._loop is not None and self._loop.running:
            self._loop.stop()
        line = summary(self.crawler.stats.get_stats(), time.monotonic() - self.started)
        self.crawler.stats.set_value("imgsearch/summary", line)
        logger.info("Crawl finished (%s): %s", reason, line)
