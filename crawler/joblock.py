"""One run of a job at a time: scheduled crawls must never overlap.

A job is its job directory when it has one (`--job-dir` / JOBDIR), else the spider, the index and what it
crawls (start URLs or URL file). Its lock is an advisory `flock` on a file, which the operating system
releases when the process ends however it ends (SIGKILL included): a crash never leaves a stale lock.
`imgsearch crawl` takes it before anything else and exits at once when it is held; the `JobLock` extension
takes it for `scrapy crawl` and Scrapyd runs.
"""

from __future__ import annotations

import datetime as dt
import fcntl
import hashlib
import json
import os
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from scrapy.crawler import Crawler
    from scrapy.settings import BaseSettings

LOCK_NAME = "imgsearch.lock"
_held: dict[Path, Any] = {}  # lock file -> open file holding the lock, in this process


class JobLocked(Exception):
    """Another run of the same job holds its lock."""


def lock_path(settings: BaseSettings, spider: str, targets: list[str]) -> Path:
    """The lock file of a job (see the module docstring)."""
    jobdir = settings.get("JOBDIR")
    if jobdir:
        return Path(jobdir).resolve() / LOCK_NAME
    identity = json.dumps([spider, settings.get("IMGSEARCH_INDEX"), sorted(targets)])
    name = hashlib.sha256(identity.encode()).hexdigest()[:20]
    return Path(settings.get("IMGSEARCH_CACHE_DIR")) / "locks" / f"{spider}-{name}.lock"


def acquire(path: Path, description: str) -> None:
    """Take the lock at `path` for this process (a no-op when it already holds it); JobLocked when another
    process holds it, naming that process."""
    path = path.resolve()
    if path in _held:
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    f = path.open("a+", encoding="utf-8")
    try:
        fcntl.flock(f.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        f.seek(0)
        holder = f.read().strip() or "another process"
        f.close()
        raise JobLocked(f"another run of this job is in progress ({holder}; lock {path}); this one exits without "
                        f"crawling. Two runs of one job never overlap: wait for it, or stop it.") from None
    f.seek(0)
    f.truncate()
    started = dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")
    f.write(f"pid {os.getpid()}, started {started}, {description}")
    f.flush()
    _held[path] = f


def release(path: Path) -> None:
    f = _held.pop(path.resolve(), None)
    if f is not None:
        f.close()  # closing the file releases the lock


def spider_targets(spider: Any) -> list[str]:
    if getattr(spider, "start_urls", None):
        return list(spider.start_urls)
    file = getattr(spider, "file", None)
    return [str(Path(file).resolve())] if file else []


class JobLock:
    """Extension: takes the job's lock when the crawler is built, before models load or anything is fetched,
    and releases it when the spider closes. A held lock stops the run with JobLocked."""

    def __init__(self, path: Path) -> None:
        self.path = path

    @classmethod
    def from_crawler(cls, crawler: Crawler) -> JobLock:
        from scrapy import signals

        spider = crawler.spider
        path = lock_path(crawler.settings, spider.name, spider_targets(spider))
        acquire(path, f"spider {spider.name}")
        extension = cls(path)
        crawler.signals.connect(extension.spider_closed, signal=signals.spider_closed)
        return extension

    def spider_closed(self) -> None:
        release(self.path)
