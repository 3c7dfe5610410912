"""Pause and resume that survive SIGKILL: a job directory's page journal.

Scrapy's own JOBDIR keeps the request queue on disk but writes its index only on a clean shutdown, and marks a
page as seen when it is scheduled, not when its images are indexed: a crawl killed with SIGKILL resumes with an
empty queue, the pages it had scheduled or was working on marked as seen, and their images never indexed.

With a job directory (`imgsearch crawl --job-dir DIR`, or Scrapy's JOBDIR setting), `JournalScheduler` keeps
instead an append-only journal, `DIR/pages.journal`, flushed line by line:

    + KEY FINGERPRINT REQUEST   a page request was scheduled (REQUEST: the serialised request)
    - KEY                       the page is done: parsed, and every image item it yielded has left the pipeline
    = FINGERPRINT               (after compaction) a page done in an earlier run

`PageTracker` (a spider middleware) decides when a page is done and sends the `page_done` signal. On start the
journal is read back: every fingerprint counts as seen, and each page scheduled but not done is scheduled
again. A page may thus be fetched twice (killed after its images were written but before its `-` line was),
never lost; writes are idempotent (image id = SHA-256 of the bytes, occurrence id = image URL + page URL), so
the index ends the same. A torn last line (killed mid-write) is ignored.

Without a job directory the scheduler is Scrapy's, and the tracker passes everything through.
"""

from __future__ import annotations

import base64
import logging
import os
import pickle
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

from scrapy import Request, signals
from scrapy.core.scheduler import Scheduler
from scrapy.dupefilters import BaseDupeFilter
from scrapy.utils.job import job_dir
from scrapy.utils.misc import load_object
from scrapy.utils.request import request_from_dict

if TYPE_CHECKING:
    from scrapy.crawler import Crawler
    from scrapy.http import Response
    from scrapy.spiders import Spider

logger = logging.getLogger(__name__)

# Sent with `key` (a page request's journal key) when the page is done; see the module docstring.
page_done = object()
KEY = "imgsearch_page_key"
JOURNAL_NAME = "pages.journal"


class PageJournal:
    """The journal file: `load` reads and compacts it, `scheduled` and `done` append to it."""

    def __init__(self, directory: str | Path) -> None:
        self.path = Path(directory) / JOURNAL_NAME
        self._file: Any = None
        self._open_keys: set[str] = set()

    def load(self) -> tuple[set[str], list[dict[str, Any]]]:
        """(fingerprints seen, requests scheduled and not done), and the file rewritten with the first only."""
        seen: set[str] = set()
        pending: dict[str, dict[str, Any]] = {}
        if self.path.exists():
            for line in self.path.read_bytes().split(b"\n")[:-1]:  # the part after the last newline is torn
                parts = line.decode("ascii", "replace").split(" ")
                try:
                    if parts[0] == "+" and len(parts) == 4:
                        seen.add(parts[2])
                        pending[parts[1]] = pickle.loads(base64.b64decode(parts[3]))
                    elif parts[0] == "-" and len(parts) == 2:
                        pending.pop(parts[1], None)
                    elif parts[0] == "=" and len(parts) == 2:
                        seen.add(parts[1])
                except (ValueError, pickle.UnpicklingError, EOFError, AttributeError, ImportError):
                    logger.warning("Skipping an unreadable line of %s", self.path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.path.with_name(JOURNAL_NAME + ".tmp")
        with tmp.open("w", encoding="ascii") as f:
            f.writelines(f"= {fp}\n" for fp in sorted(seen))
            f.flush()
            os.fsync(f.fileno())
        tmp.replace(self.path)  # the pending requests are written again as they are rescheduled
        self._file = self.path.open("a", encoding="ascii")
        return seen, list(pending.values())

    def scheduled(self, key: str, fingerprint: str, request: dict[str, Any]) -> None:
        data = base64.b64encode(pickle.dumps(request, protocol=pickle.HIGHEST_PROTOCOL)).decode("ascii")
        self._write(f"+ {key} {fingerprint} {data}\n")
        self._open_keys.add(key)

    def done(self, key: str) -> None:
        if key in self._open_keys:
            self._open_keys.discard(key)
            self._write(f"- {key}\n")

    def close(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None

    def _write(self, line: str) -> None:
        # Flushed to the OS at once: SIGKILL loses nothing the OS has; a power cut is another matter (no fsync
        # per line, which would cost a disk round trip per page).
        self._file.write(line)
        self._file.flush()


class JournalScheduler(Scheduler):
    """Scrapy's scheduler, keeping its queue in memory and its state in the page journal when a job directory
    is set (see the module docstring); Scrapy's own scheduler, unchanged, when none is."""

    @classmethod
    def from_crawler(cls, crawler: Crawler) -> JournalScheduler:
        directory = job_dir(crawler.settings)
        if directory is None:
            return super().from_crawler(crawler)
        scheduler = cls(
            dupefilter=BaseDupeFilter(),  # duplicates are filtered here, against the journal's fingerprints
            jobdir=None,  # no disk queue: the journal holds what a restart needs
            mqclass=load_object(crawler.settings["SCHEDULER_MEMORY_QUEUE"]),
            logunser=crawler.settings.getbool("SCHEDULER_DEBUG"),
            stats=crawler.stats,
            pqclass=load_object(crawler.settings["SCHEDULER_PRIORITY_QUEUE"]),
            crawler=crawler,
        )
        scheduler.journal = PageJournal(directory)
        crawler.signals.connect(scheduler._page_done, signal=page_done)
        return scheduler

    journal: PageJournal | None = None
    _seen: set[str]

    def open(self, spider: Spider) -> Any:
        result = super().open(spider)
        if self.journal is None:
            return result
        self._seen, pending = self.journal.load()
        for data in pending:
            request = request_from_dict(data, spider=spider)
            request.dont_filter = True
            self.enqueue_request(request)
        if pending:
            logger.info("Resuming the job in %s: %d page(s) scheduled earlier and not finished are scheduled "
                        "again, %d page(s) seen", self.journal.path.parent, len(pending), len(self._seen))
        self.stats.set_value("imgsearch/job/resumed_pages", len(pending))
        return result

    def close(self, reason: str) -> Any:
        if self.journal is not None:
            self.journal.close()
        return super().close(reason)

    def enqueue_request(self, request: Request) -> bool:
        if self.journal is None:
            return super().enqueue_request(request)
        assert self.crawler is not None and self.stats is not None
        fingerprint = self.crawler.request_fingerprinter.fingerprint(request).hex()
        if not request.dont_filter and fingerprint in self._seen:
            self.stats.inc_value("dupefilter/filtered")
            if request.meta.get(KEY) is not None:
                # A redirect to a page already seen: the page that redirected ends here, or every resume would
                # fetch it again.
                self.journal.done(request.meta[KEY])
            return False
        self._seen.add(fingerprint)
        try:
            data = request.to_dict(spider=self.spider)
        except ValueError as exc:  # a callback that is not a spider method: it cannot be restored
            self.stats.inc_value("imgsearch/job/unjournaled")
            logger.warning("Request %s cannot be kept in the job journal (%s); a restart will not resume it",
                           request.url, exc)
            self._mqpush(request)
            return True
        data["meta"] = {k: v for k, v in data["meta"].items() if k != KEY}
        earlier = request.meta.get(KEY)
        key = uuid.uuid4().hex
        self.journal.scheduled(key, fingerprint, data)
        if earlier is not None:
            self.journal.done(earlier)  # a redirect or a retry: this request carries the page on
        request.meta[KEY] = key
        self._mqpush(request)
        self.stats.inc_value("scheduler/enqueued/memory")
        self.stats.inc_value("scheduler/enqueued")
        return True

    def _page_done(self, key: str | None) -> None:
        if key is not None and self.journal is not None:
            self.journal.done(key)


class PageTracker:
    """Spider middleware: a page is done once its callback has returned and each item it yielded has been
    scraped, dropped or has failed in the pipeline; then `page_done` is sent with the page's key."""

    def __init__(self, crawler: Crawler) -> None:
        self.crawler = crawler
        self._outstanding: dict[str, int] = {}
        self._parsing: set[str] = set()
        self._items: dict[int, str] = {}

    @classmethod
    def from_crawler(cls, crawler: Crawler) -> PageTracker:
        tracker = cls(crawler)
        for signal in (signals.item_scraped, signals.item_dropped, signals.item_error):
            crawler.signals.connect(tracker._item_done, signal=signal)
        return tracker

    async def process_spider_output(self, response: Response, result: AsyncIterator[Any]) -> AsyncIterator[Any]:
        key = response.meta.get(KEY)
        if key is None:
            async for output in result:
                yield output
            return
        self._parsing.add(key)
        async for output in result:
            if not isinstance(output, Request):
                self._items[id(output)] = key
                self._outstanding[key] = self._outstanding.get(key, 0) + 1
            yield output
        # A callback that raised never gets here: its page stays open and is crawled again on resume.
        self._parsing.discard(key)
        self._maybe_done(key)

    def _item_done(self, item: Any, **_: Any) -> None:
        key = self._items.pop(id(item), None)
        if key is not None:
            self._outstanding[key] -= 1
            self._maybe_done(key)

    def _maybe_done(self, key: str) -> None:
        if key not in self._parsing and self._outstanding.get(key, 0) == 0:
            self._outstanding.pop(key, None)
            self.crawler.signals.send_catch_log(signal=page_done, key=key)
