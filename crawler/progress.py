"""The crawl's progress while it runs, and a one-line summary at the end, from the stats.

By default a log line every IMGSEARCH_PROGRESS_SECONDS (what `scrapy crawl` and scheduled runs show). With
IMGSEARCH_PROGRESS_BAR (`imgsearch crawl` on a terminal sets it) the same figures drive the command line's
progress display instead (cli.progress: a bar with the rate and ETA on a terminal, plain lines otherwise).
"""

from __future__ import annotations

import logging
import time
from typing import Any

from scrapy import signals
from scrapy.crawler import Crawler
from scrapy.spiders import Spider
from twisted.internet import task

logger = logging.getLogger(__name__)

# Seconds between two readings of the stats for the progress display (it redraws at most ten times a second).
DISPLAY_TICK_SECONDS = 0.25
# The display's named counters, in this order.
DISPLAY_COUNTS = ("found", "downloaded", "skipped", "failed")


def _reasons(stats: dict[str, Any], prefix: str) -> tuple[int, str]:
    found = {k[len(prefix):]: v for k, v in stats.items() if k.startswith(prefix)}
    total = sum(found.values())
    detail = ", ".join(f"{k} {v}" for k, v in sorted(found.items(), key=lambda kv: -kv[1]))
    return total, f" ({detail})" if detail else ""


def _failures(stats: dict[str, Any]) -> tuple[int, str]:
    """Images that failed at any stage (fetch, embed, index), with their reasons."""
    return _reasons(
        {k.replace("imgsearch/embed/failed/", "imgsearch/fetch/failed/embed_")
          .replace("imgsearch/index/failed/", "imgsearch/fetch/failed/index_"): v for k, v in stats.items()},
        "imgsearch/fetch/failed/")


def pages_done(stats: dict[str, Any]) -> int:
    """Pages parsed or given up on (image requests and robots.txt are not pages)."""
    return stats.get("imgsearch/find/pages", 0) + _reasons(stats, "imgsearch/find/failed/")[0]


def figures(stats: dict[str, Any]) -> dict[str, int]:
    """What the progress display shows: images indexed, found, downloaded, skipped and failed; pages."""
    return {"indexed": stats.get("imgsearch/index/indexed", 0), "found": stats.get("imgsearch/find/found", 0),
            "downloaded": stats.get("imgsearch/fetch/downloaded", 0),
            "skipped": _reasons(stats, "imgsearch/fetch/skipped/")[0], "failed": _failures(stats)[0],
            "pages": pages_done(stats)}


def summary(stats: dict[str, Any], elapsed: float) -> str:
    """One line: what the crawl found, fetched, embedded and indexed, and why the rest was not."""
    skipped, skipped_detail = _reasons(stats, "imgsearch/fetch/skipped/")
    failed, failed_detail = _failures(stats)
    pages_failed, pages_detail = _reasons(stats, "imgsearch/find/failed/")
    indexed = stats.get("imgsearch/index/indexed", 0)
    rate = indexed / elapsed if elapsed > 0 else 0.0
    # Failed pages beside the images: a 404 start page is a failure, not "failed 0".
    pages = f"pages {pages_done(stats)}" + (f" (failed {pages_failed}: {pages_detail[2:-1]})" if pages_failed else "")
    return (f"{pages}, "
            f"images found {stats.get('imgsearch/find/found', 0)}, "
            f"downloaded {stats.get('imgsearch/fetch/downloaded', 0)}, "
            f"embedded {stats.get('imgsearch/embed/embedded', 0)}, "
            f"indexed {indexed} (new images {stats.get('imgsearch/index/images_created', 0)}), "
            f"skipped {skipped}{skipped_detail}, failed {failed}{failed_detail}; "
            f"{rate:.1f} indexed/s over {elapsed:.0f} s")


class Progress:
    """Reports the crawl's progress (log lines, or the progress display) and logs its summary when it closes."""

    def __init__(self, crawler: Crawler, interval: float, *, display: bool = False) -> None:
        self.crawler = crawler
        self.interval = interval
        self.display = display
        self.started = time.monotonic()
        self._loop: task.LoopingCall | None = None
        self._bar: Any = None  # cli.progress.Progress, while the display runs
        self._pages: Any = None  # cli.progress.RateWindow of pages, against a page budget
        self._max_pages = 0
        self._shown: dict[str, int] = {}

    @classmethod
    def from_crawler(cls, crawler: Crawler) -> Progress:
        extension = cls(crawler, crawler.settings.getfloat("IMGSEARCH_PROGRESS_SECONDS", 10.0),
                        display=crawler.settings.getbool("IMGSEARCH_PROGRESS_BAR"))
        crawler.signals.connect(extension.spider_opened, signal=signals.spider_opened)
        crawler.signals.connect(extension.spider_closed, signal=signals.spider_closed)
        return extension

    def spider_opened(self, spider: Spider) -> None:
        # After the pipelines opened (models loaded): that setup is not counted in the rates.
        self.started = time.monotonic()
        if self.display:
            from cli.progress import Progress as Display
            from cli.progress import RateWindow

            self._bar = Display("crawl", unit="images", interval=self.interval, counts=DISPLAY_COUNTS,
                                eta_for="for the images found so far")
            self._max_pages = int(getattr(spider, "max_pages", 0) or 0)
            self._pages = RateWindow(self.started)
            self._shown = dict.fromkeys(("indexed", *DISPLAY_COUNTS), 0)
            self._loop = task.LoopingCall(self.show_progress)
            self._loop.start(DISPLAY_TICK_SECONDS, now=False)
        elif self.interval > 0:
            self._loop = task.LoopingCall(self.log_progress)
            self._loop.start(self.interval, now=False)

    def log_progress(self) -> None:
        logger.info("Progress: %s", summary(self.crawler.stats.get_stats(), time.monotonic() - self.started))

    def show_progress(self, *, final: bool = False) -> None:
        """The stats' latest figures into the display (a few dict reads and at most one short write)."""
        now = time.monotonic()
        current = figures(self.crawler.stats.get_stats())
        pages = current.pop("pages")
        # Images found can still be indexed unless skipped or failed: the total grows as pages are parsed.
        self._bar.set_total(current["found"] - current["skipped"] - current["failed"] or None, restart=False)
        self._bar.set_note(self._pages_note(now, pages, final=final))
        delta = {name: n - self._shown[name] for name, n in current.items()}
        self._shown = current
        self._bar.update(delta.pop("indexed"), **delta)

    def _pages_note(self, now: float, pages: int, *, final: bool) -> str:
        """Pages done; against --max-pages (the site spider's max_pages), with the ETA of that budget."""
        if not self._max_pages:
            return f"pages {pages}"
        if final:
            return f"pages {pages}/{self._max_pages}"
        from cli.progress import format_duration

        self._pages.add(now, pages)
        eta = self._pages.eta(now, pages, self._max_pages) if pages < self._max_pages else 0.0
        return f"pages {pages}/{self._max_pages}, ETA {format_duration(eta)} for the page limit"

    def spider_closed(self, reason: str) -> None:
        if self._loop is not None and self._loop.running:
            self._loop.stop()
        if self._bar is not None:
            self.show_progress(final=True)
            self._bar.finish()
            self._bar = None
        line = summary(self.crawler.stats.get_stats(), time.monotonic() - self.started)
        self.crawler.stats.set_value("imgsearch/summary", line)
        logger.info("Crawl finished (%s): %s", reason, line)
