"""A crawl frontier shared by several crawl processes, kept in Redis with scrapy-redis (the [distributed] extra).

With ``IMGSEARCH_REDIS_URL`` set (`imgsearch crawl ... --redis URL`), the `SharedFrontier` add-on replaces the
crawl's scheduler with `SharedScheduler`: page requests go to one priority queue in Redis and every page
request's fingerprint to one set there, so any number of crawl processes, on any machines, take pages from the
same queue and no page is fetched twice. Images are not requests of the frontier (the fetch stage downloads
them through each worker's engine); they are written once to the index whichever worker finds them, since an
image's document id is the SHA-256 of its bytes.

The crawl's keys start with ``IMGSEARCH_REDIS_KEY`` (default ``imgsearch:<IMGSEARCH_INDEX>``):

    <key>:requests        the queue (scrapy-redis PriorityQueue: a sorted set of pickled requests)
    <key>:seen            fingerprints of every page request scheduled (scrapy-redis RFPDupeFilter)
    <key>:crawl           JSON: the spider and its arguments, so that `imgsearch crawl --join` runs the same spider,
                          and a token naming this crawl
    <key>:worker:<id>     one per live worker ("busy" or "idle"), expiring unless refreshed

The first worker starts the crawl: it is refused while other workers are live, clears what an earlier, finished
crawl left and resumes what an interrupted one left in the queue. `imgsearch crawl` does so in two steps:
`publish`, at once, which records the arguments and registers the process as a busy worker, then `start`, once
its crawl runs, which starts the published crawl (known by its token) whoever has joined it meanwhile. Other
workers `join` it: their spider's start requests are skipped. Each step reads and writes the keys in one Redis
transaction (WATCH/MULTI), so that two at once cannot both act on what they read.

A worker leaves after ``IMGSEARCH_REDIS_IDLE_SECONDS`` with nothing to do while no other worker is busy (one
that is may still find pages); the last one to leave a finished crawl deletes its keys. A worker that is killed
loses the pages it had taken from the queue (at most CONCURRENT_REQUESTS): the frontier is a work queue, not a
journal (for that, use one process with --job-dir).
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import os
import socket
import threading
import time
import uuid
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, TypeVar

from scrapy import signals
from scrapy.exceptions import DontCloseSpider

if TYPE_CHECKING:
    from scrapy import Request
    from scrapy.crawler import Crawler
    from scrapy.settings import BaseSettings
    from scrapy.spiders import Spider

logger = logging.getLogger(__name__)
T = TypeVar("T")

SCHEDULER_PATH = "crawler.frontier.SharedScheduler"
# A worker's liveness key lasts this long unless refreshed (every third of it).
WORKER_TTL_SECONDS = 30
BUSY, IDLE = "busy", "idle"
EXTRA_HINT = "pip install 'imgsearch[distributed]' (scrapy-redis and redis)"


class FrontierError(Exception):
    """The shared frontier cannot be used as asked; the message says why and what to do."""


def frontier_key(settings: BaseSettings) -> str:
    """Prefix of the crawl's Redis keys: IMGSEARCH_REDIS_KEY, or one crawl per index."""
    key = settings.get("IMGSEARCH_REDIS_KEY") or f"imgsearch:{settings.get('IMGSEARCH_INDEX')}"
    return str(key).replace("%", "_")  # scrapy-redis formats its keys with %


def this_worker() -> str:
    return f"{socket.gethostname()}:{os.getpid()}"


def redacted(url: str) -> str:
    from index_setup.client import redact_url

    return redact_url(url)


def require_scrapy_redis() -> None:
    try:
        import redis  # noqa: F401
        import scrapy_redis  # noqa: F401
    except ImportError as exc:
        raise FrontierError(f"IMGSEARCH_REDIS_URL (--redis) needs scrapy-redis, which is not installed: "
                            f"{EXTRA_HINT}") from exc


class Frontier:
    """The shared crawl's keys in one Redis (see the module docstring); plain blocking calls."""

    def __init__(self, server: Any, key: str, url: str = "") -> None:
        self.server = server
        self.key = key
        self.url = url
        self.queue_key = f"{key}:requests"
        self.seen_key = f"{key}:seen"
        self.crawl_key = f"{key}:crawl"

    @classmethod
    def connect(cls, url: str, key: str) -> Frontier:
        """Connect and check that Redis answers; FrontierError with a one-line reason otherwise."""
        require_scrapy_redis()
        import redis

        try:
            server = redis.Redis.from_url(url, socket_timeout=30, socket_connect_timeout=10, retry_on_timeout=True)
            server.ping()
        except (redis.RedisError, ValueError) as exc:
            raise FrontierError(f"Redis at {redacted(url)} cannot be used for the crawl frontier: "
                                f"{type(exc).__name__}: {exc}") from exc
        return cls(server, key, url)

    def worker_key(self, worker: str) -> str:
        return f"{self.key}:worker:{worker}"

    def pending(self) -> int:
        """Page requests waiting in the queue."""
        return int(self.server.zcard(self.queue_key))

    def seen(self) -> int:
        return int(self.server.scard(self.seen_key))

    def workers(self) -> dict[str, str]:
        """Live workers and their state (busy / idle)."""
        prefix = self.worker_key("")
        found = {}
        for key in self.server.scan_iter(match=prefix + "*", count=100):
            state = self.server.get(key)
            if state is not None:
                found[key.decode()[len(prefix):]] = state.decode()
        return found

    def record(self) -> dict[str, Any] | None:
        """The crawl's spider and arguments, as its first worker recorded them; None when no crawl is recorded."""
        data = self.server.get(self.crawl_key)
        return json.loads(data) if data else None

    def publish(self, worker: str, spider: str, args: dict[str, Any]) -> str:
        """Record the spider and its arguments for `--join` (before this process starts the crawl), and register
        the publisher as a busy worker; returns the crawl's token, by which `start` knows the crawl as its own."""
        token = uuid.uuid4().hex
        self._claim(worker, {"spider": spider, "args": args, "publisher": worker, "token": token,
                             "published": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")})
        return token

    def check_can_start(self, worker: str) -> None:
        # A key of this worker's own name is this process's, or a dead one's with the same host and pid.
        live = {other for other in self.workers() if other != worker}
        if live:
            raise FrontierError(f"a crawl is running on the frontier {self.key} at {redacted(self.url)} "
                                f"({len(live)} worker(s): {', '.join(sorted(live))}); add a worker to it with "
                                f"--join, or use another index or IMGSEARCH_REDIS_KEY")

    def start(self, worker: str, spider: str, token: str | None = None) -> int:
        """Start the crawl as its first worker; returns how many requests an interrupted crawl left to resume.
        With the `token` of the crawl this worker published, it starts that one, whoever has joined it since."""
        if token is None:
            # Started without `imgsearch crawl` (scrapy crawl, Scrapyd): joining workers pass the same arguments.
            return self._claim(worker, {"spider": spider, "args": None, "publisher": worker,
                                        "token": uuid.uuid4().hex})
        try:
            self._register(worker, token, f"the crawl this worker published on the frontier {self.key} at "
                                          f"{redacted(self.url)} is gone or was replaced by another; start it again")
        except FrontierError:
            self.server.delete(self.worker_key(worker))  # registered when it published
            raise
        return self.pending()

    def join(self, worker: str, token: str | None = None) -> dict[str, Any]:
        """Join the recorded crawl as another worker; FrontierError when there is none, or when it is not the one
        whose `token` this worker read its arguments from."""
        return self._register(worker, token, f"the crawl on the frontier {self.key} ended or was replaced since "
                                             f"this worker read its arguments: start this worker again")

    def recorded_arguments(self) -> dict[str, Any]:
        """The recorded crawl, for a joining `imgsearch crawl`, which needs its spider's arguments."""
        record = self._joinable(self.record())
        if record.get("args") is None:
            raise FrontierError(f"the crawl on the frontier {self.key} was started by `scrapy crawl` or Scrapyd, "
                                f"which record no spider arguments: start this worker the same way, with the same "
                                f"-a arguments and -s IMGSEARCH_REDIS_JOIN=true")
        return record

    def _joinable(self, record: dict[str, Any] | None) -> dict[str, Any]:
        if record is None:
            raise FrontierError(f"no crawl to join on the frontier {self.key} at {redacted(self.url)}: start one "
                                f"with `imgsearch crawl URL --redis URL` (the same index)")
        return record

    def heartbeat(self, worker: str, state: str) -> None:
        self.server.set(self.worker_key(worker), state, ex=WORKER_TTL_SECONDS)

    def leave(self, worker: str) -> bool:
        """Unregister; the last worker to leave a crawl with nothing queued deletes its keys (True then)."""
        self.server.delete(self.worker_key(worker))

        def last_out(pipe: Any) -> bool:
            if self.workers() or pipe.zcard(self.queue_key):
                return False
            pipe.multi()
            pipe.delete(self.queue_key, self.seen_key, self.crawl_key)
            return True

        return self._transaction(last_out, self.crawl_key, self.queue_key)

    # Each step reads what it decides on under WATCH: a concurrent start, join or leave makes it read again
    # instead of acting on what was true a moment before.
    def _claim(self, worker: str, record: dict[str, Any]) -> int:
        """Record a new crawl and register its first worker, refused while other workers are live; forgets what
        an earlier, finished crawl saw and keeps what an interrupted one left queued (returns how many)."""
        def claim(pipe: Any) -> int:
            self.check_can_start(worker)
            pending = int(pipe.zcard(self.queue_key))
            pipe.multi()
            if not pending:  # what an earlier, finished crawl saw must not stop this one
                pipe.delete(self.seen_key)
            pipe.set(self.crawl_key, json.dumps(record))
            pipe.set(self.worker_key(worker), BUSY, ex=WORKER_TTL_SECONDS)
            return pending

        return self._transaction(claim, self.crawl_key, self.queue_key)

    def _register(self, worker: str, token: str | None, replaced: str) -> dict[str, Any]:
        """Register a worker of the recorded crawl (the one of `token`, when given: FrontierError `replaced`
        otherwise); returns the record."""
        def register(pipe: Any) -> dict[str, Any]:
            data = pipe.get(self.crawl_key)
            record = json.loads(data) if data else None
            if token is not None and (record is None or record.get("token") != token):
                raise FrontierError(replaced)
            record = self._joinable(record)
            pipe.multi()
            # Written again, unchanged, so that a start or leave that counted the workers before this one retries.
            pipe.set(self.crawl_key, data)
            pipe.set(self.worker_key(worker), BUSY, ex=WORKER_TTL_SECONDS)
            return record

        return self._transaction(register, self.crawl_key)

    def _transaction(self, step: Callable[[Any], T], *watched: str) -> T:
        """Run `step(pipe)` with the `watched` keys watched, and again while another client changed them."""
        import redis

        with self.server.pipeline() as pipe:
            while True:
                try:
                    pipe.watch(*watched)
                    result = step(pipe)
                    if pipe.explicit_transaction:
                        pipe.execute()
                    return result
                except redis.WatchError:
                    continue


class Prepared:
    """What `prepare` read or wrote, for this process's scheduler: the crawl's token, and for a publisher a
    thread that keeps it registered as a busy worker until its scheduler starts the crawl (joiners that came
    first wait for it meanwhile, and a second starter is refused)."""

    def __init__(self, frontier: Frontier, token: str | None, *, publisher: str | None = None) -> None:
        self.frontier = frontier
        self.token = token
        self.publisher = publisher
        self._stopped = threading.Event()
        self._thread: threading.Thread | None = None
        if publisher is not None:
            self._thread = threading.Thread(target=self._beat, name="frontier-publisher", daemon=True)
            self._thread.start()

    def stop(self) -> None:
        self._stopped.set()
        if self._thread is not None:
            self._thread.join()

    def _beat(self) -> None:
        while not self._stopped.wait(WORKER_TTL_SECONDS / 3):
            try:
                self.frontier.heartbeat(self.publisher, BUSY)
            except Exception as exc:  # Redis briefly away: the next beat tries again
                logger.warning("Could not refresh this worker's liveness in Redis: %s: %s", type(exc).__name__, exc)


# By frontier key: what `prepare` did in this process, taken by the scheduler that opens the crawl.
_prepared: dict[str, Prepared] = {}


def prepare(settings: BaseSettings, spider: str | None, args: dict[str, Any]) -> tuple[str, dict[str, Any]]:
    """What `imgsearch crawl --redis` runs: a first worker records its spider and arguments and gets them back; a
    joining worker (IMGSEARCH_REDIS_JOIN) gets the recorded ones. FrontierError when it cannot."""
    frontier = Frontier.connect(settings.get("IMGSEARCH_REDIS_URL"), frontier_key(settings))
    if settings.getbool("IMGSEARCH_REDIS_JOIN"):
        record = frontier.recorded_arguments()
        _prepared[frontier.key] = Prepared(frontier, record.get("token"))
        return record["spider"], record["args"]
    if spider is None:
        raise FrontierError("give start URLs or --urls-file to start a crawl, or --join to join the running one")
    worker = this_worker()
    _prepared[frontier.key] = Prepared(frontier, frontier.publish(worker, spider, args), publisher=worker)
    return spider, args


def withdraw(settings: BaseSettings) -> None:
    """After the crawl (or its failed setup): a crawl this process published and never started is left, so that
    it can be started again at once instead of once the publisher's registration has expired."""
    prepared = _prepared.pop(frontier_key(settings), None)
    if prepared is not None and prepared.publisher is not None:
        prepared.stop()
        try:
            prepared.frontier.leave(prepared.publisher)
        except Exception as exc:  # its registration expires by itself
            logger.warning("Could not leave the unstarted crawl in Redis: %s: %s", type(exc).__name__, exc)


class SharedScheduler:
    """Scrapy's scheduler interface over the shared frontier: scrapy-redis's priority queue and fingerprint set.

    Unlike scrapy-redis's own scheduler, the fingerprints of requests that skip the filter (start URLs, retries)
    are recorded too, so that a link back to a start page is not fetched again by another worker; and the queue
    is never flushed on close, since other workers may still be using it.
    """

    def __init__(self, *, crawler: Crawler, frontier: Frontier, join: bool, idle_seconds: float) -> None:
        self.crawler = crawler
        self.stats = crawler.stats
        self.frontier = frontier
        self.join = join
        self.idle_seconds = idle_seconds
        self.worker = this_worker()
        self.queue: Any = None
        self.seen: Any = None
        self._state = BUSY
        self._idle_since: float | None = None
        self._beat: Any = None

    @classmethod
    def from_crawler(cls, crawler: Crawler) -> SharedScheduler:
        settings = crawler.settings
        frontier = Frontier.connect(settings.get("IMGSEARCH_REDIS_URL"), frontier_key(settings))
        scheduler = cls(crawler=crawler, frontier=frontier, join=settings.getbool("IMGSEARCH_REDIS_JOIN"),
                        idle_seconds=settings.getfloat("IMGSEARCH_REDIS_IDLE_SECONDS"))
        crawler.signals.connect(scheduler._spider_idle, signal=signals.spider_idle)
        return scheduler

    # -- Scrapy's scheduler interface ---------------------------------------------------------------------------
    def open(self, spider: Spider) -> None:
        from scrapy_redis.dupefilter import RFPDupeFilter
        from scrapy_redis.queue import PriorityQueue
        from twisted.internet import task

        self.queue = PriorityQueue(server=self.frontier.server, spider=spider, key=self.frontier.queue_key)
        self.seen = RFPDupeFilter(self.frontier.server, key=self.frontier.seen_key)
        where = f"{self.frontier.key} at {redacted(self.frontier.url)}"
        prepared = _prepared.pop(self.frontier.key, None)
        if prepared is not None:
            prepared.stop()  # from here on, this scheduler's heartbeat keeps the worker registered
        token = prepared.token if prepared is not None else None
        if self.join:
            self.frontier.join(self.worker, token)
            logger.info("Joined the crawl on the shared frontier %s as worker %s: %d page(s) queued, %d seen",
                        where, self.worker, self.frontier.pending(), self.frontier.seen())
        else:
            resumed = self.frontier.start(self.worker, spider.name, token)
            logger.info("Started the crawl on the shared frontier %s as worker %s%s", where, self.worker,
                        f"; resuming {resumed} queued page(s) of an interrupted crawl" if resumed else "")
            self.stats.set_value("imgsearch/frontier/resumed_pages", resumed)
        self.stats.set_value("imgsearch/frontier/worker", self.worker)
        self._beat = task.LoopingCall(self._heartbeat)
        self._beat.start(WORKER_TTL_SECONDS / 3, now=False)

    def close(self, reason: str) -> None:
        if self._beat is not None and self._beat.running:
            self._beat.stop()
        if self.frontier.leave(self.worker):
            logger.info("Last worker out of a finished crawl: deleted the frontier's keys (%s:*)", self.frontier.key)

    def has_pending_requests(self) -> bool:
        return self.queue is not None and len(self.queue) > 0

    def enqueue_request(self, request: Request) -> bool:
        # The fingerprint is recorded even when the filter is skipped (start URLs, retries).
        if self.seen.request_seen(request) and not request.dont_filter:
            self.stats.inc_value("dupefilter/filtered")
            return False
        self.queue.push(request)
        self.stats.inc_value("scheduler/enqueued/redis")
        self.stats.inc_value("scheduler/enqueued")
        return True

    def next_request(self) -> Request | None:
        request = self.queue.pop()
        if request is not None:
            self.stats.inc_value("scheduler/dequeued/redis")
            self.stats.inc_value("scheduler/dequeued")
            self._idle_since = None
            self._set_state(BUSY)
        return request

    # -- idle exit ----------------------------------------------------------------------------------------------
    def _spider_idle(self) -> None:
        """This worker has nothing in progress: wait (DontCloseSpider) while the frontier may still get pages."""
        if self.has_pending_requests():
            self._idle_since = None
            raise DontCloseSpider  # the engine takes them on its next loop
        self._set_state(IDLE)
        now = time.monotonic()
        others_busy = any(state == BUSY for worker, state in self.frontier.workers().items() if worker != self.worker)
        if self._idle_since is None or others_busy:
            self._idle_since = now
        if now - self._idle_since < self.idle_seconds:
            raise DontCloseSpider
        logger.info("Nothing to crawl for %.0f s and no other worker busy: this worker leaves", self.idle_seconds)

    def _set_state(self, state: str) -> None:
        if state != self._state:
            self._state = state
            self.frontier.heartbeat(self.worker, state)

    def _heartbeat(self) -> None:
        try:
            self.frontier.heartbeat(self.worker, self._state)
        except Exception as exc:  # Redis briefly away: the next beat tries again
            logger.warning("Could not refresh this worker's liveness in Redis: %s: %s", type(exc).__name__, exc)


class JoinCrawl:
    """Spider middleware for a joining worker: its spider's start requests (and start items) are the first
    worker's, already in the frontier; nothing of them is produced again."""

    async def process_start(self, start: Any) -> Any:
        logger.info("Joining a running crawl: the spider's start requests are left to its first worker")
        return
        yield  # an async generator that yields nothing


class SharedFrontier:
    """Scrapy add-on (ADDONS): with IMGSEARCH_REDIS_URL set, the crawl uses the shared frontier (SharedScheduler),
    takes no per-job lock (the frontier is meant for several processes at once), and with IMGSEARCH_REDIS_JOIN
    skips its start requests. Without IMGSEARCH_REDIS_URL it changes nothing."""

    def update_settings(self, settings: BaseSettings) -> None:
        if not settings.get("IMGSEARCH_REDIS_URL"):
            return
        require_scrapy_redis()
        if settings.get("JOBDIR"):
            raise FrontierError("JOBDIR (--job-dir) and IMGSEARCH_REDIS_URL (--redis) exclude each other: a shared "
                                "frontier keeps the crawl's state in Redis")
        from crawler.joblock import JobLock

        # The project's scheduler is set at the project's priority: the frontier's must win over it.
        settings.set("SCHEDULER", SCHEDULER_PATH, priority=max(settings.getpriority("SCHEDULER") or 0, 15))
        settings.set_in_component_priority_dict("EXTENSIONS", JobLock, None)
        if settings.getbool("IMGSEARCH_REDIS_JOIN"):
            settings.set_in_component_priority_dict("SPIDER_MIDDLEWARES", JoinCrawl, 0)
