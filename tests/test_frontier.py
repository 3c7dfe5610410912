"""The shared crawl frontier (crawler/frontier.py): Redis keys, start / join / leave, the CLI's one-line errors,
and two crawl processes sharing one Redis, each page fetched once. Redis is a redis-server started here."""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from crawler.sample_site import Route, SiteServer, encode, page, photo_like
from tests.test_indexing import FaultProxy
from tests.waiting import wait_for

IMGSEARCH = [sys.executable, "-m", "cli"]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]




@pytest.fixture(scope="module")
def redis_url(tmp_path_factory) -> Iterator[str]:
    """A throwaway redis-server on a free loopback port, nothing persisted."""
    server = shutil.which("redis-server")
    if server is None:
        pytest.fail("redis-server is not installed (Debian: apt-get install redis-server; `make test` does it as root)",
                    pytrace=False)
    import redis

    port = free_port()
    folder = tmp_path_factory.mktemp("redis")
    process = subprocess.Popen([server, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly",
                                "no", "--dir", str(folder)], stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT)
    client = redis.Redis(port=port)

    def answers() -> bool:
        try:
            return bool(client.ping())
        except redis.ConnectionError:
            assert process.poll() is None, "redis-server exited"
            return False

    try:
        wait_for(answers, 20, "redis-server to answer")
        yield f"redis://127.0.0.1:{port}/0"
    finally:
        process.terminate()
        process.wait(timeout=20)


def run_cli(*args: str, env: dict | None = None, timeout: float = 120) -> subprocess.CompletedProcess:
    return subprocess.run([*IMGSEARCH, *args], capture_output=True, text=True, timeout=timeout,
                          env={**os.environ, **(env or {})})


# -- the keys -------------------------------------------------------------------------------------------------------
def test_start_join_and_leave_keep_and_clear_the_keys(redis_url):
    from crawler.frontier import Frontier, FrontierError, this_worker

    me = this_worker()  # the process that publishes the arguments, then starts the crawl
    frontier = Frontier.connect(redis_url, "test:keys")
    server = frontier.server
    with pytest.raises(FrontierError, match="no crawl to join"):
        frontier.join("w2")
    server.sadd(frontier.seen_key, "left-over-from-a-finished-crawl")
    token = frontier.publish(me, "site", {"start_urls": "http://127.0.0.1:1/"})
    assert frontier.seen() == 0, "a new crawl forgets what a finished one saw"
    assert frontier.start(me, "site", token) == 0
    assert frontier.record()["args"] == {"start_urls": "http://127.0.0.1:1/"}
    with pytest.raises(FrontierError, match="a crawl is running .* --join"):
        frontier.start("w3", "site")
    assert frontier.join("w2")["spider"] == "site"
    assert frontier.workers() == {me: "busy", "w2": "busy"}
    server.zadd(frontier.queue_key, {b"a request": 0})
    assert not frontier.leave(me)
    assert not frontier.leave("w2"), "a crawl with queued pages is kept for a later run to resume"
    assert frontier.record() is not None
    server.sadd(frontier.seen_key, "seen")
    assert frontier.start("w4", "site") == 1, "an interrupted crawl is resumed"
    assert frontier.seen() == 1, "and what it saw is kept"
    assert frontier.record()["args"] is None, "a start without `imgsearch crawl` records no arguments"
    server.delete(frontier.queue_key)
    assert frontier.leave("w4")
    assert server.keys("test:keys*") == []


def test_the_publisher_starts_its_crawl_whoever_joined_it_first(redis_url):
    from crawler.frontier import Frontier, FrontierError

    frontier = Frontier.connect(redis_url, "test:first")
    token = frontier.publish("publisher", "site", {"start_urls": "http://127.0.0.1:1/"})
    assert frontier.join("early", token)["args"] == {"start_urls": "http://127.0.0.1:1/"}
    with pytest.raises(FrontierError, match=r"a crawl is running .*\(2 worker\(s\): early, publisher\)"):
        frontier.publish("second", "site", {"start_urls": "http://127.0.0.1:2/"})
    with pytest.raises(FrontierError, match="a crawl is running"):
        frontier.start("second", "site")
    assert frontier.start("publisher", "site", token) == 0
    assert frontier.workers() == {"publisher": "busy", "early": "busy"}
    assert frontier.record()["token"] == token
    assert not frontier.leave("publisher") and frontier.leave("early")


def test_a_crawl_replaced_since_it_was_read_is_neither_joined_nor_started(redis_url):
    from crawler.frontier import Frontier, FrontierError

    frontier = Frontier.connect(redis_url, "test:replaced")
    stale = frontier.publish("crashed", "site", {"start_urls": "http://127.0.0.1:1/"})
    frontier.server.delete(frontier.worker_key("crashed"))  # its registration expired
    fresh = frontier.publish("restarted", "site", {"start_urls": "http://127.0.0.1:2/"})
    with pytest.raises(FrontierError, match="replaced since this worker read its arguments"):
        frontier.join("joiner", stale)
    with pytest.raises(FrontierError, match="is gone or was replaced by another"):
        frontier.start("crashed", "site", stale)
    assert frontier.workers() == {"restarted": "busy"}
    assert frontier.start("restarted", "site", fresh) == 0
    # A worker of the same host and pid as this one is a dead process's: its key does not stop a restart.
    assert frontier.leave("restarted")
    frontier.heartbeat("restarted", "busy")
    frontier.publish("restarted", "site", {"start_urls": "http://127.0.0.1:2/"})
    assert frontier.leave("restarted")


def test_a_start_or_leave_that_another_worker_overtakes_reads_again(redis_url, monkeypatch):
    """What a start or the last worker out decides on is read again when another worker changed it meanwhile:
    here, between one's counting the live workers and its writing."""
    from crawler.frontier import Frontier, FrontierError

    first = Frontier.connect(redis_url, "test:overtaken")
    other = Frontier.connect(redis_url, "test:overtaken")
    counted = first.workers

    def others_start_meanwhile() -> dict[str, str]:
        live = counted()
        if not other.workers():
            other.publish("other", "site", {"start_urls": "http://127.0.0.1:2/"})
        return live

    monkeypatch.setattr(first, "workers", others_start_meanwhile)
    with pytest.raises(FrontierError, match=r"\(1 worker\(s\): other\)"):
        first.publish("first", "site", {"start_urls": "http://127.0.0.1:1/"})
    assert first.record()["publisher"] == "other"

    other.server.delete(other.worker_key("other"))
    other.server.set(other.worker_key("leaving"), "idle")
    assert not first.leave("leaving"), "a crawl started while the last worker left is kept"
    assert first.record()["publisher"] == "other"
    monkeypatch.undo()
    assert first.workers() == {"other": "busy"}
    assert first.leave("other")


def test_the_addon_switches_scheduler_and_lock_only_with_a_redis_url(redis_url):
    from crawler.config import load_settings
    from crawler.frontier import FrontierError, JoinCrawl, SharedFrontier
    from crawler.joblock import JobLock

    plain = load_settings()
    SharedFrontier().update_settings(plain)
    assert plain["SCHEDULER"] == "crawler.jobstate.JournalScheduler"
    assert "crawler.joblock.JobLock" in plain.getdict("EXTENSIONS")
    shared = load_settings({"IMGSEARCH_REDIS_URL": redis_url, "IMGSEARCH_REDIS_JOIN": "true"})
    SharedFrontier().update_settings(shared)
    assert shared["SCHEDULER"] == "crawler.frontier.SharedScheduler"
    assert shared.getdict("EXTENSIONS")[JobLock] is None
    assert shared.getdict("SPIDER_MIDDLEWARES")[JoinCrawl] == 0
    with pytest.raises(FrontierError, match="exclude each other"):
        SharedFrontier().update_settings(load_settings({"IMGSEARCH_REDIS_URL": redis_url, "JOBDIR": "/tmp/job"}))


# -- the command line -------------------------------------------------------------------------------------------
def test_join_without_a_running_crawl_is_one_line(redis_url):
    result = run_cli("crawl", "--redis", redis_url, "--join", "--index", "test-frontier-nothing-to-join")
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [
        f"imgsearch: error: no crawl to join on the frontier imgsearch:test-frontier-nothing-to-join at "
        f"{redis_url}: start one with `imgsearch crawl URL --redis URL` (the same index)"]


def test_a_start_whose_setup_fails_can_be_run_again_at_once(redis_url):
    import redis

    for _ in range(2):  # the first run published the crawl, then withdrew it: it does not stop the second
        result = run_cli("crawl", "http://127.0.0.1:9/", "--redis", redis_url, "--index", "test-frontier-no-es",
                         env={"ES_URL": "http://127.0.0.1:9"})
        assert result.returncode == 2
        assert result.stderr.strip().splitlines() == ["imgsearch: error: Elasticsearch is unreachable at "
                                                      "http://127.0.0.1:9"]
    assert redis.Redis.from_url(redis_url).keys("imgsearch:test-frontier-no-es*") == []


def test_unreachable_redis_and_misused_flags_are_one_line():
    result = run_cli("crawl", "http://127.0.0.1:9/", "--redis", "redis://:pw-s3cret@127.0.0.1:9/0")
    assert result.returncode == 2 and len(result.stderr.strip().splitlines()) == 1, result.stderr
    assert "Redis at redis://***@127.0.0.1:9/0 cannot be used" in result.stderr
    assert "s3cret" not in result.stderr
    result = run_cli("crawl", "--join")
    assert result.returncode == 2 and "--join needs" in result.stderr
    result = run_cli("crawl", "http://127.0.0.1:9/", "--redis", "redis://127.0.0.1:9/0", "--job-dir", "/tmp/x")
    assert result.returncode == 2 and "exclude each other" in result.stderr


# -- two workers ----------------------------------------------------------------------------------------------------
class Gate:
    """Response bodies held until the test opens the gate (after `passing` of them have gone through freely), so
    that a crawl reaches a known point and waits there. `served` counts the bodies asked for."""

    def __init__(self, passing: int = 0) -> None:
        self.passing = passing
        self.served = 0
        self.event = threading.Event()
        self._lock = threading.Lock()

    def body(self, data: bytes) -> Callable[[], bytes]:
        def serve() -> bytes:
            with self._lock:
                self.served += 1
                free = self.served <= self.passing
            if not free:
                self.event.wait(timeout=600)
            return data

        return serve

    def open(self) -> None:
        self.event.set()


def gallery(pages: int, per_page: int, seed: int, *, home: Gate | None = None, pages_gate: Gate | None = None,
            images_gate: Gate | None = None, image_delay: float = 0.2) -> tuple[dict[str, Route], dict[str, bytes]]:
    """A home page linking `pages` pages, each with `per_page` images of its own and links to the next page and
    home (links that another worker finds too). Returns (routes, {image path: bytes})."""
    def gated(data: bytes, gate: Gate | None) -> bytes | Callable[[], bytes]:
        return gate.body(data) if gate else data

    routes = {"/robots.txt": Route(b"User-agent: *\nAllow: /\n", "text/plain")}
    images = {}
    home_page = page("Gallery", "".join(f'<a href="/p{i}.html">page {i}</a> ' for i in range(pages)))
    routes["/"] = Route(gated(home_page.body, home))
    for i in range(pages):
        cells = []
        for j in range(per_page):
            path = f"/img/{i}-{j}.jpg"
            images[path] = encode(photo_like(seed + i * 100 + j, 240, 180))
            routes[path] = Route(gated(images[path], images_gate), "image/jpeg", delay=image_delay)
            cells.append(f'<img src="{path}" alt="image {j} of page {i}">')
        html = page(f"Page {i}", "".join(cells) + f'<a href="/p{(i + 1) % pages}.html">next</a> <a href="/">home</a>')
        routes[f"/p{i}.html"] = Route(gated(html.body, pages_gate))
    return routes, images


def worker_env(base: dict, **extra: str) -> dict:
    """Workers that take at most 3 requests at a time (so that neither can take every page) and leave soon."""
    return {**os.environ, **base, "IMGSEARCH_REDIS_IDLE_SECONDS": "4", "CONCURRENT_REQUESTS": "3",
            "CONCURRENT_REQUESTS_PER_DOMAIN": "3", "DOWNLOAD_TIMEOUT": "600", **extra}


class HeldCluster(FaultProxy):
    """Elasticsearch behind a proxy that holds every request until `release()`: a crawl process that uses it
    stops at its first request, which `imgsearch crawl --redis` makes after publishing the crawl and before
    starting it. `held` counts the requests that came."""

    def __init__(self, upstream: tuple[str, int]) -> None:
        super().__init__(upstream)
        self.held = 0
        self._released = threading.Event()

    def release(self) -> None:
        self._released.set()

    def _serve(self, h) -> None:
        with self.lock:
            self.held += 1
        self._released.wait(timeout=600)
        super()._serve(h)


class Workers:
    """A first crawl process started on the frontier, and a second one joined to it once the first is running
    (`start`) or between the first's publishing the crawl and its starting it (`join_before_start`)."""

    def __init__(self, redis_url: str, key: str, env: dict, folder: Path) -> None:
        self.redis_url, self.key, self.env, self.folder = redis_url, key, env, folder
        self.processes: list[subprocess.Popen] = []

    def start(self, start_url: str) -> None:
        self._spawn("first", start_url, "--depth", "3", "--redis", self.redis_url)
        wait_for(lambda: self.states() or self._dead(), 240, "the first worker to start the crawl")
        self._spawn("second", "--redis", self.redis_url, "--join")
        # Idle: its engine runs and asks the frontier for pages.
        wait_for(lambda: list(self.states().values()).count("idle") >= 1 and len(self.states()) == 2
                 or self._dead(), 240, "the second worker to join and wait for pages")

    def join_before_start(self, start_url: str, held: HeldCluster) -> None:
        self._spawn("first", start_url, "--depth", "3", "--redis", self.redis_url, env={"ES_URL": held.url})
        wait_for(lambda: held.held or self._dead(), 240, "the first worker to publish the crawl and wait")
        self._spawn("second", "--redis", self.redis_url, "--join")
        wait_for(lambda: "idle" in self.states().values() or self._dead(), 240,
                 "the second worker to join and wait for pages")
        held.release()

    def wait_for(self, condition: Callable[[], object], timeout: float, what: str) -> None:
        """wait_for, failing at once with its log when a worker exits meanwhile."""
        wait_for(lambda: condition() or self._dead(), timeout, what)

    def states(self) -> dict[str, str]:
        from crawler.frontier import Frontier

        return Frontier.connect(self.redis_url, self.key).workers()

    def finish(self, timeout: float = 300) -> list[dict]:
        deadline = time.monotonic() + timeout
        for process, name in zip(self.processes, ("first", "second"), strict=True):
            try:
                process.wait(timeout=max(1.0, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
            log = (self.folder / f"{name}.log").read_text(errors="replace")
            assert process.returncode == 0, f"{name} worker:\n{log[-4000:]}"
            assert "Traceback" not in log, f"{name} worker:\n{log[-4000:]}"
        return [json.loads((self.folder / f"{name}.json").read_text()) for name in ("first", "second")]

    def kill(self) -> None:
        for process in self.processes:
            if process.poll() is None:
                process.kill()
                process.wait()

    def _spawn(self, name: str, *args: str, env: dict | None = None) -> None:
        log = (self.folder / f"{name}.log").open("wb")
        self.processes.append(subprocess.Popen(
            [*IMGSEARCH, "crawl", *args, "--stats-file", str(self.folder / f"{name}.json")],
            env={**self.env, **(env or {})}, stdout=log, stderr=subprocess.STDOUT))

    def _dead(self) -> bool:
        dead = [p for p in self.processes if p.poll() is not None]
        if dead:
            name = ("first", "second")[self.processes.index(dead[0])]
            pytest.fail(f"the {name} worker exited early:\n"
                        + (self.folder / f"{name}.log").read_text(errors="replace")[-4000:])
        return False


def html_requests(site: SiteServer) -> dict[str, int]:
    return {path: n for path, n in site.requests.items() if path != "/robots.txt" and not path.startswith("/img/")}


def crawl_two_workers(site: SiteServer, workers: Workers, start: Callable[[], None], home: Gate,
                      pages_gate: Gate) -> list[dict]:
    """`start()` the workers, then see that each takes some of the pages, and that both finish."""
    try:
        start()
        home.open()
        # Each worker holds at most 3 requests: with all 6 pages asked for, each worker has some.
        workers.wait_for(lambda: len(html_requests(site)) == 7, 120, "both workers to take the pages")
        pages_gate.open()
        return workers.finish()
    finally:
        home.open()
        pages_gate.open()
        workers.kill()


def assert_crawled_once(site: SiteServer, images: dict[str, bytes], stats: list[dict], es, alias: str,
                        redis_url: str) -> None:
    import redis

    from index_setup.mappings import sources_alias

    assert html_requests(site) == {"/": 1, **{f"/p{i}.html": 1 for i in range(6)}}, "each page fetched once"
    assert all(site.requests[path] == 1 for path in images), "each image downloaded once"
    assert all(s.get("scheduler/dequeued/redis", 0) > 0 for s in stats), "both workers crawled pages"
    assert sum(s.get("imgsearch/index/images_created", 0) for s in stats) == len(images)
    assert all(s.get("imgsearch/index/dead_lettered", 0) == 0 for s in stats)
    es.indices.refresh(index=f"{alias},{sources_alias(alias)}")
    assert es.count(index=alias)["count"] == len(images)
    assert es.count(index=sources_alias(alias))["count"] == len(images)
    assert redis.Redis.from_url(redis_url).keys(f"imgsearch:{alias}*") == [], \
        "the last worker out deleted the crawl's keys"


def test_two_workers_share_the_frontier_and_fetch_each_page_once(redis_url, crawl_settings_env, es, index_alias,
                                                                 tmp_path):
    home, pages_gate = Gate(), Gate()
    routes, images = gallery(6, 3, seed=500, home=home, pages_gate=pages_gate)
    workers = Workers(redis_url, f"imgsearch:{index_alias}",
                      worker_env({**crawl_settings_env, "IMGSEARCH_INDEX": index_alias}), tmp_path)
    with SiteServer(routes) as site:
        stats = crawl_two_workers(site, workers, lambda: workers.start(site.url + "/"), home, pages_gate)
    assert_crawled_once(site, images, stats, es, index_alias, redis_url)


def test_a_worker_joined_before_the_crawl_starts_does_not_stop_it(redis_url, crawl_settings_env, es, es_upstream,
                                                                  tmp_path):
    """The second worker registers between the first's publishing the crawl and its starting it (two workers
    started together): the first still starts the crawl it published, and both crawl it."""
    import uuid

    from index_setup.indices import delete_indices

    alias = f"test-frontier-early-{uuid.uuid4().hex[:8]}"
    home, pages_gate = Gate(), Gate()
    routes, images = gallery(6, 3, seed=600, home=home, pages_gate=pages_gate)
    workers = Workers(redis_url, f"imgsearch:{alias}", worker_env({**crawl_settings_env, "IMGSEARCH_INDEX": alias}),
                      tmp_path)
    held = HeldCluster(es_upstream).start()
    try:
        with SiteServer(routes) as site:
            stats = crawl_two_workers(site, workers, lambda: workers.join_before_start(site.url + "/", held), home,
                                      pages_gate)
        assert_crawled_once(site, images, stats, es, alias, redis_url)
    finally:
        held.release()
        held.stop()
        delete_indices(es, alias)
