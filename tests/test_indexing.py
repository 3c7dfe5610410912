"""The index stage against the real Elasticsearch: builders, first_seen, races, retries, dead letters, replay.

Faults are injected by `FaultProxy`, a small HTTP/1.1 proxy on 127.0.0.1 in front of the node. It forwards
every request unchanged except `_bulk` requests, for which a per-test rule (a function of the bulk request's
number) may answer the whole request itself (429 with Retry-After, 503), close the connection before or after
forwarding it, or reject chosen items: those items are taken out of the forwarded body (so Elasticsearch never
applies them, as with a real rejection) and put back into the answer as per-item 429s.

Clients pointed at the proxy use the project's own client options (`async_es_client`) with the transport's
retries turned off (`.options(max_retries=0)`): `client_options` sets max_retries=2, and elastic-transport
retries 429/502/503/504 and connection errors itself, immediately and invisibly, which would hide what
`send_actions` does. One test (`test_bug_transport_retries_multiply_ours`) shows that composition.
"""

from __future__ import annotations

import asyncio
import hashlib
import http.client
import json
import threading
import time
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import elastic_transport
import numpy as np
import pytest

from index_setup.client import async_es_client, es_client
from index_setup.indices import ensure_indices
from index_setup.mappings import sources_alias
from pipelines.indexing import (
    DeadLetters,
    Outcome,
    SendStats,
    bulk_operations,
    image_actions,
    iter_dead_letters,
    occurrence_id,
    replay,
    send_actions,
    source_action,
    write_image_actions,
)

DIMS = 512
BACKOFF = 0.01
T1 = "2024-01-01T00:00:00.000Z"
T2 = "2024-02-01T00:00:00.000Z"
T3 = "2024-03-01T00:00:00.000Z"


# -- helpers ---------------------------------------------------------------------------------------------------
def new_image_id() -> str:
    return hashlib.sha256(uuid.uuid4().bytes).hexdigest()


def vector(seed: str) -> list[float]:
    v = [0.0] * DIMS
    v[int(seed[:8], 16) % DIMS] = 1.0
    return v


def make_item(image_id: str, page_url: str, *, embedded: bool = True, image_url: str | None = None,
              title: str = "a page", alt: str = "an image") -> dict[str, Any]:
    item = {
        "image_id": image_id,
        "image_url": image_url or f"https://cdn.example/{image_id[:12]}.png",
        "page_url": page_url,
        "page_title": title,
        "alt_text": alt,
        "image_name": f"{image_id[:12]}.png",
        "relative_path": f"full/{image_id[:2]}/{image_id}.png",
        "width": 64,
        "height": 48,
        "format": "PNG",
        "bytes": 1234,
        "model": "test-model",
    }
    if embedded:
        item["image_embedding"] = vector(image_id)
    return item


def create_action(index: str, image_id: str, page_url: str, now: str = T1, **body: Any) -> dict[str, Any]:
    """The create of a new image's full document, with `body` fields changed."""
    action = image_actions(index, [make_item(image_id, page_url)], {}, now)[image_id]
    action["body"].update(body)
    return action


def run(settings, fn: Callable[[Any], Awaitable[Any]], *, transport_retries: int | None = 0) -> Any:
    """Run `fn(client)` in a fresh event loop with an AsyncElasticsearch built from `settings`.

    transport_retries=0 turns elastic-transport's own retries off, so only send_actions retries;
    None keeps the project's client options as they are.
    """
    async def main() -> Any:
        client = async_es_client(settings)
        try:
            used = client if transport_retries is None else client.options(max_retries=transport_retries)
            return await fn(used)
        finally:
            await client.close()

    return asyncio.run(main())


def source_of(es, index: str, doc_id: str) -> dict[str, Any] | None:
    found = es.options(ignore_status=404).get(index=index, id=doc_id)
    return found.body.get("_source") if found.body.get("found") else None


# -- the fault-injecting proxy ---------------------------------------------------------------------------------
@dataclass(frozen=True)
class Reply:
    """Answer the whole bulk request without forwarding it."""

    status: int
    headers: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class Drop:
    """Close the connection without an answer; with after_forward, Elasticsearch has applied the request."""

    after_forward: bool = False


@dataclass(frozen=True)
class RejectItems:
    """Per-item 429 for these positions of the bulk request; they are not forwarded (not applied)."""

    positions: frozenset[int]


Fault = Reply | Drop | RejectItems | None

_HOP_BY_HOP = {"host", "connection", "content-length", "accept-encoding", "keep-alive", "transfer-encoding"}


def _error_body(status: int) -> bytes:
    kind = "es_rejected_execution_exception" if status == 429 else "unavailable_by_test_proxy"
    return json.dumps({"error": {"type": kind, "reason": "injected by the test proxy"}, "status": status}).encode()


def _split_bulk(body: bytes) -> list[list[bytes]]:
    """The bulk body as one [action line, source line] (or [action line] for delete) per item."""
    lines = [line for line in body.split(b"\n") if line.strip()]
    entries, i = [], 0
    while i < len(lines):
        op = next(iter(json.loads(lines[i])))
        width = 1 if op == "delete" else 2
        entries.append(lines[i:i + width])
        i += width
    return entries


class FaultProxy:
    """A threaded HTTP/1.1 proxy to Elasticsearch that injects faults into `_bulk` requests by rule."""

    def __init__(self, upstream: tuple[str, int]) -> None:
        self.upstream = upstream
        self.lock = threading.Lock()
        self.reset()
        proxy = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args: Any) -> None:  # keep the test output clean
                pass

            def _handle(self) -> None:
                proxy._serve(self)

            do_GET = do_POST = do_PUT = do_DELETE = do_HEAD = _handle

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, name="fault-proxy", daemon=True)

    def reset(self, rule: Callable[[int], Fault] | None = None) -> None:
        with self.lock:
            self.rule = rule or (lambda n: None)
            self.bulk_count = 0
            self.bulk_sizes: list[int] = []  # items in each bulk request received
            self.faults: list[str] = []  # what was done to each bulk request
            self.forwarded_bulks = 0
            self.paths: list[str] = []

    def start(self) -> FaultProxy:
        self.thread.start()
        return self

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()

    # The handler side, on the server's threads.
    def _serve(self, h: BaseHTTPRequestHandler) -> None:
        length = int(h.headers.get("Content-Length") or 0)
        body = h.rfile.read(length) if length else b""
        headers = {k: v for k, v in h.headers.items() if k.lower() not in _HOP_BY_HOP}
        path = h.path.split("?", 1)[0]
        with self.lock:
            self.paths.append(f"{h.command} {path}")
        if not path.endswith("/_bulk"):
            self._send(h, *self._forward(h.command, h.path, body, headers))
            return
        entries = _split_bulk(body)
        with self.lock:
            number = self.bulk_count
            self.bulk_count += 1
            self.bulk_sizes.append(len(entries))
            fault = self.rule(number)
            self.faults.append(type(fault).__name__ if fault is not None else "pass")
        if isinstance(fault, Reply):
            self._send(h, fault.status, {"Content-Type": "application/json", **fault.headers},
                       _error_body(fault.status))
        elif isinstance(fault, Drop):
            if fault.after_forward:
                self._forward(h.command, h.path, body, headers)
            h.close_connection = True  # no answer at all: the client sees the connection closed
        elif isinstance(fault, RejectItems):
            self._send(h, *self._reject(h, entries, fault.positions, headers))
        else:
            self._send(h, *self._forward(h.command, h.path, body, headers))

    def _reject(self, h: BaseHTTPRequestHandler, entries: list[list[bytes]], positions: frozenset[int],
                headers: dict[str, str]) -> tuple[int, dict[str, str], bytes]:
        kept = [e for i, e in enumerate(entries) if i not in positions]
        answered: list[dict[str, Any]] = []
        status, out_headers = 200, {"Content-Type": "application/json", "X-Elastic-Product": "Elasticsearch"}
        if kept:
            status, out_headers, raw = self._forward(h.command, h.path, b"\n".join(
                line for e in kept for line in e) + b"\n", headers)
            answered = json.loads(raw)["items"]
        items, it = [], iter(answered)
        for i, entry in enumerate(entries):
            if i in positions:
                op, meta = next(iter(json.loads(entry[0]).items()))
                items.append({op: {"_index": meta.get("_index"), "_id": meta.get("_id"), "status": 429,
                                   "error": {"type": "es_rejected_execution_exception",
                                             "reason": "rejected by the test proxy"}}})
            else:
                items.append(next(it))
        return status, out_headers, json.dumps({"errors": True, "took": 1, "items": items}).encode()

    def _forward(self, method: str, target: str, body: bytes,
                 headers: dict[str, str]) -> tuple[int, dict[str, str], bytes]:
        if target.split("?", 1)[0].endswith("/_bulk"):
            with self.lock:
                self.forwarded_bulks += 1
        conn = http.client.HTTPConnection(*self.upstream, timeout=30)
        try:
            conn.request(method, target, body=body or None, headers=headers)
            response = conn.getresponse()
            data = response.read()
            out = {k: v for k, v in response.getheaders() if k.lower() not in _HOP_BY_HOP}
            return response.status, out, data
        finally:
            conn.close()

    @staticmethod
    def _send(h: BaseHTTPRequestHandler, status: int, headers: dict[str, str], body: bytes) -> None:
        h.send_response(status)
        for k, v in headers.items():
            h.send_header(k, v)
        h.send_header("Content-Length", str(len(body)))
        h.end_headers()
        if h.command != "HEAD":
            h.wfile.write(body)


# -- fixtures --------------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def index(es, index_alias) -> str:
    """The image index alias of this module (its sources index is `sources_alias(index)`)."""
    ensure_indices(es, index_alias, dims=DIMS)
    return index_alias


@pytest.fixture(scope="module")
def _proxy_server(es_upstream):
    server = FaultProxy(es_upstream).start()
    yield server
    server.stop()


@pytest.fixture
def proxy(_proxy_server) -> FaultProxy:
    _proxy_server.reset()
    return _proxy_server


@pytest.fixture
def proxy_settings(es_settings, proxy):
    settings = es_settings.copy()
    settings.set("ES_URL", proxy.url, priority="cmdline")
    settings.set("ES_REQUEST_TIMEOUT", 10, priority="cmdline")
    return settings


# -- pure builders ---------------------------------------------------------------------------------------------
def test_a_new_image_gets_a_create_with_the_full_document():
    image_id = new_image_id()
    item = make_item(image_id, "https://Shop.Example/page")
    actions = image_actions("imgs", [item], {image_id: None}, T1)
    assert list(actions) == [image_id]
    action = actions[image_id]
    assert action["op"] == "create" and action["index"] == "imgs" and action["id"] == image_id
    body = action["body"]
    assert body["image_id"] == body["sha256"] == image_id
    assert body["image_embedding"] == item["image_embedding"]
    assert body["first_seen"] == body["last_seen"] == T1
    assert body["domains"] == ["shop.example"]
    for key in ("image_name", "relative_path", "image_url", "width", "height", "format", "bytes", "model"):
        assert body[key] == item[key], key


def test_a_stored_image_gets_an_update_with_merged_domains_and_no_first_seen():
    image_id = new_image_id()
    actions = image_actions("imgs", [make_item(image_id, "https://b.example/p")], {image_id: ["a.example"]}, T2)
    assert actions[image_id] == {"op": "update", "index": "imgs", "id": image_id,
                                 "body": {"doc": {"last_seen": T2, "domains": ["a.example", "b.example"]}}}


def test_items_of_one_image_in_a_batch_give_one_action_with_the_union_of_domains():
    new, stored, other = new_image_id(), new_image_id(), new_image_id()
    items = [
        make_item(new, "https://a.example/1", embedded=False),  # a later occurrence, not embedded again
        make_item(stored, "https://c.example/1", embedded=False),
        make_item(new, "https://b.example/2"),
        make_item(other, "https://a.example/3"),
        make_item(new, "https://a.example/4", embedded=False),
        make_item(stored, "https://d.example/9", embedded=False),
    ]
    actions = image_actions("imgs", items, {new: None, stored: ["z.example", "c.example"]}, T1)
    assert list(actions) == [new, stored, other]
    assert actions[new]["op"] == "create"
    assert actions[new]["body"]["domains"] == ["a.example", "b.example"]
    assert actions[new]["body"]["image_embedding"] == vector(new)  # from the one item that carries it
    assert actions[stored]["op"] == "update"
    assert actions[stored]["body"]["doc"]["domains"] == ["c.example", "d.example", "z.example"]
    assert actions[other]["op"] == "create" and actions[other]["body"]["domains"] == ["a.example"]


def test_source_action_ids_are_stable_and_its_upsert_holds_first_seen():
    image_id = new_image_id()
    item = make_item(image_id, "https://www.Example.org/gallery?p=2", title="Gallery", alt="a cat")
    first, later = source_action("srcs", item, T1), source_action("srcs", {**item, "page_title": "New"}, T2)
    assert first["id"] == later["id"] == occurrence_id(item["image_url"], item["page_url"])
    assert first["op"] == "update" and first["index"] == "srcs"
    assert source_action("srcs", {**item, "page_url": "https://www.example.org/other"}, T1)["id"] != first["id"]
    assert source_action("srcs", {**item, "image_url": "https://cdn.example/x.png"}, T1)["id"] != first["id"]
    upsert, doc = first["body"]["upsert"], later["body"]["doc"]
    assert upsert == {"image_id": image_id, "image_url": item["image_url"], "page_url": item["page_url"],
                      "page_title": "Gallery", "alt_text": "a cat", "domain": "www.example.org",
                      "first_seen": T1, "last_seen": T1}
    assert doc == {"image_id": image_id, "page_title": "New", "alt_text": "a cat", "last_seen": T2,
                   "gone_since": None, "gone_reason": None}
    assert "first_seen" not in doc


def test_bulk_operations_pairs_each_action_with_its_body():
    actions = [{"op": "create", "index": "i", "id": "1", "body": {"a": 1}},
               {"op": "update", "index": "i", "id": "2", "body": {"doc": {"b": 2}}}]
    assert list(bulk_operations(actions)) == [{"create": {"_index": "i", "_id": "1"}}, {"a": 1},
                                              {"update": {"_index": "i", "_id": "2"}}, {"doc": {"b": 2}}]


# -- writes against Elasticsearch ------------------------------------------------------------------------------
def test_first_seen_is_never_overwritten(es, es_settings, index):
    image_id = new_image_id()
    first = make_item(image_id, "https://a.example/1", title="First")
    again = make_item(image_id, "https://b.example/2", embedded=False)
    same_page_later = make_item(image_id, "https://a.example/1", embedded=False, title="Renamed")

    async def go(client):
        stats = SendStats()
        one = await write_image_actions(client, index, [first], T1, max_retries=2, backoff=BACKOFF, stats=stats)
        two = await write_image_actions(client, index, [again], T2, max_retries=2, backoff=BACKOFF, stats=stats)
        sources = await send_actions(client, [source_action(sources_alias(index), first, T1),
                                              source_action(sources_alias(index), again, T2)],
                                     max_retries=2, backoff=BACKOFF)
        sources += await send_actions(client, [source_action(sources_alias(index), same_page_later, T3)],
                                      max_retries=2, backoff=BACKOFF)
        return one, two, sources

    (a1, r1), (a2, r2), sources = run(es_settings, go)
    assert a1[image_id]["op"] == "create" and r1[image_id].ok and r1[image_id].result == "created"
    assert a2[image_id]["op"] == "update" and r2[image_id].ok and r2[image_id].result == "updated"
    doc = source_of(es, index, image_id)
    assert doc["first_seen"] == T1
    assert doc["last_seen"] == T2
    assert doc["domains"] == ["a.example", "b.example"]
    assert doc["image_embedding"] == pytest.approx(vector(image_id))
    assert [o.ok for o in sources] == [True, True, True]
    occurrence = source_of(es, sources_alias(index), occurrence_id(first["image_url"], first["page_url"]))
    assert occurrence["first_seen"] == T1 and occurrence["last_seen"] == T3
    assert occurrence["page_title"] == "Renamed" and occurrence["domain"] == "a.example"


class RacingClient:
    """Delegates to a real client; right after the first mget, `intruder` writes (another crawler's create)."""

    def __init__(self, client, intruder: Callable[[Any], Awaitable[None]]) -> None:
        self._client = client
        self._intruder = intruder
        self.mgets = 0

    def __getattr__(self, name: str) -> Any:
        return getattr(self._client, name)

    async def mget(self, **kwargs: Any) -> Any:
        response = await self._client.mget(**kwargs)
        self.mgets += 1
        if self.mgets == 1:
            await self._intruder(self._client)
        return response


def test_a_create_that_loses_a_race_becomes_an_update(es, es_settings, index):
    image_id = new_image_id()
    theirs = create_action(index, image_id, "https://theirs.example/p", T1)

    async def intruder(client):
        await client.create(index=index, id=image_id, document=theirs["body"])

    async def go(client):
        racing = RacingClient(client, intruder)
        stats = SendStats()
        result = await write_image_actions(racing, index, [make_item(image_id, "https://ours.example/p")], T2,
                                           max_retries=2, backoff=BACKOFF, stats=stats)
        return result, racing.mgets, stats

    (actions, results), mgets, stats = run(es_settings, go)
    assert mgets == 2  # the first read found nothing; the conflict was read again
    assert results[image_id].ok, results[image_id]
    assert actions[image_id]["op"] == "update"
    assert stats.retried == 0  # a 409 is not a retry of the same write
    doc = source_of(es, index, image_id)
    assert doc["first_seen"] == T1  # the winner's
    assert doc["last_seen"] == T2
    assert doc["domains"] == ["ours.example", "theirs.example"]


def test_non_retryable_item_errors_are_not_retried_and_give_the_es_error_type(es, proxy, proxy_settings, index):
    good, bad_type, unknown_field, missing = (new_image_id() for _ in range(4))
    actions = [
        create_action(index, good, "https://a.example/"),
        create_action(index, bad_type, "https://a.example/", width="wide"),  # an integer field
        create_action(index, unknown_field, "https://a.example/", colour="red"),  # dynamic: strict
        {"op": "update", "index": index, "id": missing, "body": {"doc": {"last_seen": T1}}},
    ]
    stats = SendStats()
    outcomes = run(proxy_settings, lambda c: send_actions(c, actions, max_retries=3, backoff=BACKOFF, stats=stats))
    assert outcomes[0].ok and outcomes[0].result == "created"
    assert [(o.ok, o.status, o.reason) for o in outcomes[1:]] == [
        (False, 400, "document_parsing_exception"),
        (False, 400, "strict_dynamic_mapping_exception"),
        (False, 404, "document_missing_exception"),
    ]
    assert all(o.error and "reason" in json.loads(o.error) for o in outcomes[1:])
    assert stats.retried == 0
    assert proxy.bulk_sizes == [4]
    assert source_of(es, index, bad_type) is None and source_of(es, index, unknown_field) is None


# -- retries ---------------------------------------------------------------------------------------------------
def test_whole_request_429_on_a_third_of_bulk_requests_is_retried(es, proxy, proxy_settings, index):
    proxy.reset(lambda n: Reply(429, {"Retry-After": "0"}) if n % 3 == 0 else None)
    batches = [[create_action(index, new_image_id(), f"https://s{b}.example/") for _ in range(4)] for b in range(6)]
    stats = SendStats()

    async def go(client):
        return [await send_actions(client, batch, max_retries=3, backoff=BACKOFF, stats=stats) for batch in batches]

    results = run(proxy_settings, go)
    assert proxy.bulk_count == 9 and proxy.faults.count("Reply") == 3  # a third of the bulk requests
    assert all(o.ok and o.result == "created" for outcomes in results for o in outcomes)
    assert stats.retried == 3 * 4
    assert proxy.forwarded_bulks == len(batches)  # a 429 before ES: each batch reached it exactly once
    for batch in batches:
        for action in batch:
            assert source_of(es, index, action["id"]) == action["body"]


def test_per_item_429s_retry_only_the_rejected_items(es, proxy, proxy_settings, index):
    # Every third bulk request has every third item rejected; one in three whole requests also gets a 429.
    def rule(n: int) -> Fault:
        if n % 3 == 0:
            return Reply(429, {"Retry-After": "0"})
        if n % 3 == 1:
            return RejectItems(frozenset(range(0, 1000, 3)))
        return None

    proxy.reset(rule)
    items = [make_item(new_image_id(), f"https://p{i}.example/x") for i in range(30)]
    actions = [source_action(sources_alias(index), item, T1) for item in items]
    stats = SendStats()
    outcomes = run(proxy_settings,
                   lambda c: send_actions(c, actions, max_retries=5, backoff=BACKOFF, stats=stats))
    assert [o.ok for o in outcomes] == [True] * 30
    assert {o.result for o in outcomes} == {"created"}  # a rejected item was never applied, then applied once
    assert proxy.faults == ["Reply", "RejectItems", "pass"]
    assert proxy.bulk_sizes == [30, 30, 10]  # the retry carried only the rejected items
    assert stats.retried == 30 + 10
    for item, action in zip(items, actions, strict=True):
        assert source_of(es, sources_alias(index), action["id"])["page_url"] == item["page_url"]


def test_items_still_rejected_after_max_retries_fail_with_the_es_error_type(proxy, proxy_settings, index):
    # Item 1 is rejected, and rejected again each time it is re-sent (alone, at position 0).
    proxy.reset(lambda n: RejectItems(frozenset({1} if n == 0 else {0})))
    actions = [create_action(index, new_image_id(), "https://a.example/") for _ in range(3)]
    stats = SendStats()
    outcomes = run(proxy_settings, lambda c: send_actions(c, actions, max_retries=2, backoff=BACKOFF, stats=stats))
    assert proxy.bulk_sizes == [3, 1, 1]
    assert [o.ok for o in outcomes] == [True, False, True]
    assert (outcomes[1].status, outcomes[1].reason) == (429, "es_rejected_execution_exception")
    assert stats.retried == 2


def test_retry_after_is_honoured(proxy, proxy_settings, index):
    proxy.reset(lambda n: Reply(429, {"Retry-After": "1"}) if n == 0 else None)
    actions = [create_action(index, new_image_id(), "https://a.example/")]
    started = time.monotonic()
    outcomes = run(proxy_settings, lambda c: send_actions(c, actions, max_retries=2, backoff=BACKOFF))
    assert outcomes[0].ok
    assert time.monotonic() - started >= 1.0
    assert proxy.bulk_count == 2


def test_a_permanent_503_fails_with_http_503_after_max_retries(es, proxy, proxy_settings, index):
    proxy.reset(lambda n: Reply(503))
    actions = [create_action(index, new_image_id(), "https://a.example/") for _ in range(3)]
    stats = SendStats()
    outcomes = run(proxy_settings, lambda c: send_actions(c, actions, max_retries=3, backoff=BACKOFF, stats=stats))
    assert [(o.ok, o.status, o.reason) for o in outcomes] == [(False, 503, "http_503")] * 3
    assert all(o.error for o in outcomes)
    assert proxy.bulk_count == 4  # the first try and three retries
    assert stats.retried == 3 * 3
    assert proxy.forwarded_bulks == 0
    assert all(source_of(es, index, a["id"]) is None for a in actions)


def test_a_closed_connection_is_retried(es, proxy, proxy_settings, index):
    # aiohttp itself re-sends a PUT (bulk is a PUT) once when the connection drops, so drop twice to make sure
    # that send_actions sees a connection error at least once.
    proxy.reset(lambda n: Drop() if n < 2 else None)
    actions = [create_action(index, new_image_id(), "https://a.example/") for _ in range(2)]
    stats = SendStats()
    outcomes = run(proxy_settings, lambda c: send_actions(c, actions, max_retries=3, backoff=BACKOFF, stats=stats))
    assert all(o.ok and o.result == "created" for o in outcomes)
    assert stats.retried >= 2
    assert proxy.forwarded_bulks == 1
    assert all(source_of(es, index, a["id"]) == a["body"] for a in actions)


def test_a_connection_that_never_answers_fails_with_connection_error(proxy, proxy_settings, index):
    proxy.reset(lambda n: Drop())
    actions = [create_action(index, new_image_id(), "https://a.example/") for _ in range(2)]
    stats = SendStats()
    outcomes = run(proxy_settings, lambda c: send_actions(c, actions, max_retries=2, backoff=BACKOFF, stats=stats))
    assert [(o.ok, o.reason) for o in outcomes] == [(False, "connection_error")] * 2
    assert stats.retried == 2 * 2


def test_a_create_whose_answer_was_lost_becomes_an_update(es, proxy, proxy_settings, index):
    # The first bulk reaches Elasticsearch and is applied, but its answer is lost: the create is sent again,
    # meets its own document (409), and write_image_actions merges into it instead of failing.
    proxy.reset(lambda n: Drop(after_forward=True) if n == 0 else None)
    image_id = new_image_id()
    items = [make_item(image_id, "https://a.example/1"), make_item(image_id, "https://b.example/2", embedded=False)]
    stats = SendStats()
    actions, results = run(proxy_settings, lambda c: write_image_actions(
        c, index, items, T1, max_retries=3, backoff=BACKOFF, stats=stats))
    assert results[image_id].ok, results[image_id]
    assert actions[image_id]["op"] == "update"
    doc = source_of(es, index, image_id)
    assert doc["first_seen"] == doc["last_seen"] == T1
    assert doc["domains"] == ["a.example", "b.example"]
    assert proxy.forwarded_bulks >= 3  # the create, its re-send (409), the update


def test_write_image_actions_goes_on_when_the_mget_fails(es, es_settings, index):
    image_id = new_image_id()
    run(es_settings, lambda c: write_image_actions(c, index, [make_item(image_id, "https://a.example/")], T1,
                                                      max_retries=1, backoff=BACKOFF, stats=SendStats()))

    class FailingMget:
        """The first mget fails as if the node were unreachable; everything else goes through."""

        def __init__(self, client):
            self._client = client
            self.failed = False

        def __getattr__(self, name):
            return getattr(self._client, name)

        async def mget(self, **kwargs):
            if not self.failed:
                self.failed = True
                raise elastic_transport.ConnectionError("injected")
            return await self._client.mget(**kwargs)

    actions, results = run(es_settings, lambda c: write_image_actions(
        FailingMget(c), index, [make_item(image_id, "https://b.example/")], T2, max_retries=1, backoff=BACKOFF,
        stats=SendStats()))
    # Without the stored domains it tried a create, met the document (409) and merged into it.
    assert results[image_id].ok and actions[image_id]["op"] == "update"
    doc = source_of(es, index, image_id)
    assert (doc["first_seen"], doc["last_seen"], doc["domains"]) == (T1, T2, ["a.example", "b.example"])


# -- dead letters and replay -----------------------------------------------------------------------------------
def test_dead_letters_are_json_lines_that_replay_stores_once_es_is_back(es, es_settings, proxy, proxy_settings,
                                                                        index, tmp_path):
    proxy.reset(lambda n: Reply(503))
    exists = new_image_id()
    item = make_item(new_image_id(), "https://a.example/page", title="Page")
    actions = [
        create_action(index, item["image_id"], item["page_url"]),
        source_action(sources_alias(index), item, T1),
        create_action(index, exists, "https://a.example/other"),  # will be stored before the replay
    ]
    broken = create_action(index, new_image_id(), "https://a.example/", width="not a number")
    actions.append(broken)
    outcomes = run(proxy_settings, lambda c: send_actions(c, actions, max_retries=1, backoff=BACKOFF))
    assert not any(o.ok for o in outcomes)

    letters = DeadLetters(tmp_path / "dead", "imgs")
    for action, outcome in zip(actions, outcomes, strict=True):
        letters.write(action, outcome, {"page_url": item["page_url"]} if action["op"] == "update" else None)
    assert letters.count == 4 and letters.path.parent == tmp_path / "dead" and letters.path.suffix == ".jsonl"
    records = [json.loads(line) for line in letters.path.read_text(encoding="utf-8").splitlines()]
    for record, action in zip(records, actions, strict=True):
        assert {k: record[k] for k in ("op", "index", "id", "body")} == action
        assert (record["reason"], record["status"]) == ("http_503", 503)
        assert record["error"] and record["time"]
    assert records[1]["page_url"] == item["page_url"]
    assert list(iter_dead_letters(letters.path)) == actions

    # Meanwhile one image got stored (by another crawl, or by an earlier attempt whose answer was lost).
    es.create(index=index, id=exists, document=actions[2]["body"])

    # While Elasticsearch is still unreachable nothing is lost: everything goes to a new file.
    proxy.reset(lambda n: Drop())
    written, failing, still = run(proxy_settings, lambda c: replay(
        c, letters.path, dead_letter_dir=tmp_path / "dead", max_retries=1, backoff=BACKOFF))
    assert (written, failing) == (0, 4)
    assert still != letters.path and still.name.startswith(letters.path.stem + "-replay")
    assert list(iter_dead_letters(still)) == actions
    assert {json.loads(line)["reason"] for line in still.read_text().splitlines()} == {"connection_error"}

    # Elasticsearch is back.
    written, failing, again = run(es_settings, lambda c: replay(
        c, still, dead_letter_dir=tmp_path / "dead", max_retries=1, backoff=BACKOFF))
    assert (written, failing) == (3, 1)  # the create that found its document counts as written
    assert source_of(es, index, item["image_id"]) == actions[0]["body"]
    assert source_of(es, sources_alias(index), actions[1]["id"]) == actions[1]["body"]["upsert"]
    assert source_of(es, index, exists) == actions[2]["body"]
    assert again not in (None, still, letters.path)
    left = [json.loads(line) for line in again.read_text().splitlines()]
    assert [(r["id"], r["reason"], r["status"]) for r in left] == [
        (broken["id"], "document_parsing_exception", 400)]
    assert list(iter_dead_letters(again)) == [broken]


def test_a_replay_with_nothing_failing_writes_no_file(es, es_settings, index, tmp_path):
    action = create_action(index, new_image_id(), "https://a.example/")
    letters = DeadLetters(tmp_path, "imgs")
    letters.write(action, Outcome(False, 503, reason="http_503"))
    written, failing, path = run(es_settings, lambda c: replay(
        c, letters.path, dead_letter_dir=tmp_path, max_retries=0, backoff=BACKOFF))
    assert (written, failing, path) == (1, 0, None)
    assert source_of(es, index, action["id"]) == action["body"]


def test_a_damaged_dead_letter_file_is_refused_with_its_line(tmp_path):
    path = tmp_path / "bad.jsonl"
    path.write_text('{"op": "create", "index": "i", "id": "1", "body": {}}\n\n{"op": "create"}\n')
    with pytest.raises(ValueError, match=r"bad\.jsonl:3"):
        list(iter_dead_letters(path))


# -- bugs ------------------------------------------------------------------------------------------------------
class MgetRendezvous:
    """Delegates to a real client; each mget waits until `parties` mgets have been answered (two batches of
    the Batcher in flight at once, max_in_flight=2, that both read an image's domains before either writes)."""

    def __init__(self, client, state: dict[str, Any]) -> None:
        self._client = client
        self._state = state

    def __getattr__(self, name: str) -> Any:
        return getattr(self._client, name)

    async def mget(self, **kwargs: Any) -> Any:
        response = await self._client.mget(**kwargs)
        self._state["answered"] += 1
        if self._state["answered"] >= self._state["parties"]:
            self._state["event"].set()
        await asyncio.wait_for(self._state["event"].wait(), 5)
        return response


def test_concurrent_batches_of_one_image_keep_every_domain(es, es_settings, index):
    image_id = new_image_id()
    es.create(index=index, id=image_id, document=create_action(index, image_id, "https://a.example/", T1)["body"])

    async def go(client):
        state = {"answered": 0, "parties": 2, "event": asyncio.Event()}
        batches = [[make_item(image_id, "https://b.example/", embedded=False)],
                   [make_item(image_id, "https://c.example/", embedded=False)]]
        return await asyncio.gather(*(write_image_actions(
            MgetRendezvous(client, state), index, batch, T2, max_retries=1, backoff=BACKOFF, stats=SendStats())
            for batch in batches))

    results = run(es_settings, go)
    assert all(r[image_id].ok for _, r in results)  # both report success...
    # ...but each wrote the domains it had read plus its own, so the later write dropped the other's domain.
    assert source_of(es, index, image_id)["domains"] == ["a.example", "b.example", "c.example"]


def test_replaying_an_old_update_keeps_domains_added_since(es, es_settings, index, tmp_path):
    image_id = new_image_id()
    es.create(index=index, id=image_id, document=create_action(index, image_id, "https://a.example/", T1)["body"])
    # A crawl at T2 sees the image on b.example; its update (domains [a, b]) fails and is dead-lettered.
    failed = image_actions(index, [make_item(image_id, "https://b.example/", embedded=False)],
                           {image_id: ["a.example"]}, T2)[image_id]
    letters = DeadLetters(tmp_path, "imgs")
    letters.write(failed, Outcome(False, 503, reason="http_503"))

    # A later crawl at T3 sees it on c.example and succeeds.
    run(es_settings, lambda c: write_image_actions(c, index, [make_item(image_id, "https://c.example/",
                                                                        embedded=False)],
                                                   T3, max_retries=1, backoff=BACKOFF, stats=SendStats()))
    assert source_of(es, index, image_id)["domains"] == ["a.example", "c.example"]

    written, failing, _ = run(es_settings, lambda c: replay(c, letters.path, dead_letter_dir=tmp_path,
                                                             max_retries=1, backoff=BACKOFF))
    assert (written, failing) == (1, 0)
    doc = source_of(es, index, image_id)
    assert doc["domains"] == ["a.example", "b.example", "c.example"]  # replay wrote [a, b]: c.example is lost
    assert doc["last_seen"] == T3  # and last_seen went back to T2


def test_replaying_a_create_whose_image_exists_keeps_its_domains(es, es_settings, index, tmp_path):
    image_id = new_image_id()
    failed = create_action(index, image_id, "https://b.example/", T1)  # dead-lettered: ES was down
    letters = DeadLetters(tmp_path, "imgs")
    letters.write(failed, Outcome(False, None, reason="connection_error"))
    # Another crawl stored the image since, seen on a.example only.
    es.create(index=index, id=image_id, document=create_action(index, image_id, "https://a.example/", T2)["body"])

    written, failing, _ = run(es_settings, lambda c: replay(c, letters.path, dead_letter_dir=tmp_path,
                                                             max_retries=1, backoff=BACKOFF))
    assert (written, failing) == (1, 0)  # counted as written...
    doc = source_of(es, index, image_id)
    assert doc["domains"] == ["a.example", "b.example"]  # ...but b.example was never written anywhere


def test_a_serialization_error_is_not_retried_as_a_connection_error(proxy, proxy_settings, index):
    # A set: the serializer refuses it before anything is sent.
    action = create_action(index, new_image_id(), "https://a.example/", model={"not", "json"})
    stats = SendStats()
    outcomes = run(proxy_settings, lambda c: send_actions(c, [action], max_retries=3, backoff=BACKOFF, stats=stats))
    assert not outcomes[0].ok
    assert proxy.bulk_count == 0
    assert outcomes[0].reason == "serialization_error"  # today: "connection_error"
    assert stats.retried == 0  # today: 3 retries (with the default backoff of 1 s: 1 + 2 + 4 s of waiting)


def test_what_the_fast_serializer_refuses_is_written_and_read_back_as_before(es, es_settings, index):
    # The client's bodies go through orjson, which refuses lone surrogates (the json module passes them on, and
    # Elasticsearch stores and returns them); a page title holding one must not fail its whole bulk request.
    image_id = new_image_id()
    item = make_item(image_id, "https://a.example/p", title="broken \ud800 title")
    action = source_action(sources_alias(index), item, T1)
    outcomes = run(es_settings, lambda c: send_actions(c, [action], max_retries=0, backoff=BACKOFF))
    assert outcomes[0].ok, outcomes[0]
    stored = source_of(es, sources_alias(index), occurrence_id(item["image_url"], item["page_url"]))
    assert stored["page_title"] == "broken \ud800 title"


def test_the_clients_send_numpy_vectors_in_their_float32_digits(es_settings):
    client = es_client(es_settings)
    try:
        body = client.transport.serializers.dumps([{"index": {}}, {"v": np.float32([0.1, 1 / 3])}],
                                                  "application/vnd.elasticsearch+x-ndjson; compatible-with=8")
    finally:
        client.close()
    assert body == b'{"index":{}}\n{"v":[0.1,0.33333334]}\n'


def test_transport_retries_do_not_multiply_ours(proxy, proxy_settings, index):
    # The pipeline's client comes from async_es_client (max_retries=2), whose transport re-sends 429/502/503/504
    # and connection errors itself, at once, without backoff, Retry-After or a count in the stats.
    proxy.reset(lambda n: Reply(429, {"Retry-After": "0"}))
    actions = [create_action(index, new_image_id(), "https://a.example/")]
    stats = SendStats()
    outcomes = run(proxy_settings, lambda c: send_actions(c, actions, max_retries=1, backoff=BACKOFF, stats=stats),
                   transport_retries=None)
    assert outcomes[0].reason == "http_429"
    assert stats.retried == 1
    assert proxy.bulk_count == 2  # today: 6, three HTTP requests per attempt


def test_the_index_stage_of_a_first_crawl_sizes_the_image_index_for_the_configured_model(es, index_alias,
                                                                                        wide_standin_models):
    """What a crawl started without `imgsearch crawl` (scrapyd) relies on: the index stage creates the indices."""
    from scrapy.utils.test import get_crawler, get_reactor_settings

    from crawler.config import load_settings
    from index_setup.indices import delete_indices
    from pipelines.indexing import IndexPipeline

    alias = f"{index_alias}-wide"
    settings = load_settings({"IMGSEARCH_INDEX": alias, "IMGSEARCH_IMAGE_MODEL": str(wide_standin_models[0])})
    # No reactor in this process (the stage runs on asyncio alone), and no spider for the crawl's extensions.
    crawler = get_crawler(settings_dict={**settings.copy_to_dict(), **get_reactor_settings(), "EXTENSIONS": {}})
    pipeline = IndexPipeline.from_crawler(crawler)

    async def open_and_close() -> None:
        await pipeline.open_spider()
        await pipeline.close_spider()

    try:
        asyncio.run(open_and_close())
        mappings = next(iter(es.indices.get_mapping(index=alias).body.values()))["mappings"]
        assert mappings["properties"]["image_embedding"]["dims"] == mappings["_meta"]["dims"] == 768
    finally:
        delete_indices(es, alias)
