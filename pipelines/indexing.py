"""Index stage: bulk-write image documents and their occurrences to Elasticsearch, losing nothing.

Small layers over lists of actions, as in elasticsearch-py's helpers: pure builders (`image_document`,
`source_document`, `image_actions`, `source_action`), one sender with retries (`send_actions`), and the
dead-letter file for what still fails. No scripts (not every cluster has scripting): an image's first_seen
is written once by a create-only write; later sightings update last_seen and domains with partial documents,
after reading the stored domains (one mget per batch).
"""

from __future__ import annotations

import asyncio
import datetime as dt
import hashlib
import json
import logging
import os
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

import elastic_transport
import elasticsearch
from scrapy.exceptions import DropItem

from pipelines.batching import Batcher

if TYPE_CHECKING:
    from elasticsearch import AsyncElasticsearch
    from scrapy.crawler import Crawler
    from scrapy.settings import Settings

logger = logging.getLogger(__name__)

RETRYABLE_STATUS = frozenset({408, 429, 500, 502, 503, 504})
MAX_BACKOFF_SECONDS = 60.0


# -- pure builders ---------------------------------------------------------------------------------------------
def utc_now() -> str:
    return dt.datetime.now(dt.timezone.utc).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def domain_of(url: str) -> str:
    return (urlsplit(url).hostname or "").lower()


def occurrence_id(image_url: str, page_url: str) -> str:
    """Id of the (image URL, page URL) pair in the sources index."""
    return hashlib.sha256(f"{image_url}\n{page_url}".encode()).hexdigest()


def image_document(item: Any, now: str, domains: list[str]) -> dict[str, Any]:
    return {
        "image_id": item["image_id"],
        "sha256": item["image_id"],
        "image_embedding": item["image_embedding"],
        "image_name": item["image_name"],
        "relative_path": item["relative_path"],
        "image_url": item["image_url"],
        "width": item["width"],
        "height": item["height"],
        "format": item["format"],
        "bytes": item["bytes"],
        "first_seen": now,
        "last_seen": now,
        "domains": domains,
        "model": item.get("model"),
    }


def source_document(item: Any, now: str) -> dict[str, Any]:
    return {
        "image_id": item["image_id"],
        "image_url": item["image_url"],
        "page_url": item["page_url"],
        "page_title": item.get("page_title") or "",
        "alt_text": item.get("alt_text") or "",
        "domain": domain_of(item["page_url"]),
        "first_seen": now,
        "last_seen": now,
    }


def source_action(index: str, item: Any, now: str) -> dict[str, Any]:
    """Upsert of one occurrence: created with first_seen, afterwards only last_seen, title and alt change."""
    doc = source_document(item, now)
    update = {k: doc[k] for k in ("image_id", "page_title", "alt_text", "last_seen")}
    return {"op": "update", "index": index, "id": occurrence_id(item["image_url"], item["page_url"]),
            "body": {"doc": update, "upsert": doc}}


def image_actions(index: str, items: list[Any], stored_domains: dict[str, list[str] | None],
                  now: str) -> dict[str, dict[str, Any]]:
    """One write per distinct image in the batch: a create-only full document for an image not yet stored,
    a partial update (last_seen, domains merged with the stored ones) for one that is.

    `stored_domains` maps image id to the stored document's domains, or None where there is no document.
    """
    actions: dict[str, dict[str, Any]] = {}
    by_id: dict[str, list[Any]] = {}
    for item in items:
        by_id.setdefault(item["image_id"], []).append(item)
    for image_id, group in by_id.items():
        stored = stored_domains.get(image_id)
        domains = sorted(set(stored or []) | {domain_of(i["page_url"]) for i in group})
        full = next((i for i in group if i.get("image_embedding") is not None), None)
        if stored is None and full is not None:
            actions[image_id] = {"op": "create", "index": index, "id": image_id,
                                 "body": image_document(full, now, domains)}
        else:
            actions[image_id] = {"op": "update", "index": index, "id": image_id,
                                 "body": {"doc": {"last_seen": now, "domains": domains}}}
    return actions


def bulk_operations(actions: Iterable[dict[str, Any]]) -> Iterator[dict[str, Any]]:
    for action in actions:
        yield {action["op"]: {"_index": action["index"], "_id": action["id"]}}
        yield action["body"]


# -- sending ---------------------------------------------------------------------------------------------------
@dataclass
class Outcome:
    ok: bool
    status: int | None = None
    result: str | None = None  # created / updated / noop
    reason: str | None = None  # snake_case, for stats and the dead-letter file
    error: str | None = None


@dataclass
class SendStats:
    retried: int = 0
    reasons: dict[str, int] = field(default_factory=dict)


def _failure_reason(exc: BaseException) -> tuple[str, int | None, bool]:
    """(reason, status, retryable) of an exception from a whole bulk request."""
    if isinstance(exc, elasticsearch.ApiError):
        status = exc.meta.status
        return f"http_{status}", status, status in RETRYABLE_STATUS
    if isinstance(exc, elastic_transport.ConnectionTimeout):
        return "timeout", None, True
    if isinstance(exc, elastic_transport.TransportError):
        return "connection_error", None, True
    return "client_error", None, False


def _retry_after(exc: BaseException) -> float:
    headers = getattr(getattr(exc, "meta", None), "headers", None) or {}
    try:
        return float(headers.get("Retry-After", 0))
    except (TypeError, ValueError):
        return 0.0


async def send_actions(client: AsyncElasticsearch, actions: list[dict[str, Any]], *, max_retries: int,
                       backoff: float, stats: SendStats | None = None) -> list[Outcome]:
    """Send actions in one bulk request, retrying only what failed for a retryable reason (429, 5xx,
    connection errors, timeouts) with exponential backoff. One Outcome per action, in order."""
    stats = stats if stats is not None else SendStats()
    outcomes: list[Outcome | None] = [None] * len(actions)
    pending = list(range(len(actions)))
    for attempt in range(max_retries + 1):
        last = attempt == max_retries
        wait = min(backoff * 2 ** attempt, MAX_BACKOFF_SECONDS)
        try:
            response = await client.bulk(operations=list(bulk_operations(actions[i] for i in pending)))
        except Exception as exc:
            reason, status, retryable = _failure_reason(exc)
            for i in pending:
                outcomes[i] = Outcome(False, status, reason=reason, error=f"{type(exc).__name__}: {exc}"[:500])
            if not retryable or last:
                break
            stats.retried += len(pending)
            logger.warning("Bulk of %d actions failed (%s); retry %d/%d in %.1f s", len(pending), reason,
                           attempt + 1, max_retries, max(wait, _retry_after(exc)))
            await asyncio.sleep(max(wait, _retry_after(exc)))
            continue
        retry = []
        for i, entry in zip(pending, response["items"], strict=True):
            info = next(iter(entry.values()))
            status = info.get("status", 0)
            if status < 300:
                outcomes[i] = Outcome(True, status, result=info.get("result"))
                continue
            error = info.get("error") or {}
            reason = error.get("type") if isinstance(error, dict) else None
            outcomes[i] = Outcome(False, status, reason=reason or f"http_{status}",
                                  error=json.dumps(error)[:500] if error else None)
            if status in RETRYABLE_STATUS:
                retry.append(i)
        if not retry or last:
            break
        stats.retried += len(retry)
        logger.warning("%d of %d bulk actions were refused (e.g. %s); retry %d/%d in %.1f s", len(retry),
                       len(pending), outcomes[retry[0]].reason, attempt + 1, max_retries, wait)
        pending = retry
        await asyncio.sleep(wait)
    return [o if o is not None else Outcome(False, reason="not_sent") for o in outcomes]


async def stored_domains(client: AsyncElasticsearch, index: str, ids: list[str]) -> dict[str, list[str] | None]:
    """Domains of the stored image documents, None for ids with no document."""
    if not ids:
        return {}
    response = await client.mget(index=index, ids=ids, source=["domains"])
    return {doc["_id"]: (doc.get("_source", {}).get("domains") or []) if doc.get("found") else None
            for doc in response["docs"]}


async def write_image_actions(client: AsyncElasticsearch, index: str, items: list[Any], now: str, *,
                              max_retries: int, backoff: float,
                              stats: SendStats) -> tuple[dict[str, dict[str, Any]], dict[str, Outcome]]:
    """Write one action per distinct image of `items`; a create that loses a race becomes an update."""
    ids = sorted({i["image_id"] for i in items})
    try:
        stored = await stored_domains(client, index, ids)
    except (elastic_transport.TransportError, elasticsearch.ApiError):
        stored = {}  # the bulk below meets the same trouble and is retried or dead-lettered with its reason
    actions = image_actions(index, items, stored, now)
    order = list(actions)
    results = dict(zip(order, await send_actions(client, [actions[i] for i in order], max_retries=max_retries,
                                                  backoff=backoff, stats=stats), strict=True))
    conflicts = [i for i in order if actions[i]["op"] == "create" and results[i].status == 409]
    if conflicts:
        # Stored meanwhile (another crawler, or an earlier attempt whose answer was lost): merge into it.
        stored = await stored_domains(client, index, conflicts)
        retry = image_actions(index, [i for i in items if i["image_id"] in conflicts],
                              {k: v or [] for k, v in stored.items()}, now)
        outcomes = await send_actions(client, list(retry.values()), max_retries=max_retries, backoff=backoff,
                                      stats=stats)
        for (image_id, action), outcome in zip(retry.items(), outcomes, strict=True):
            actions[image_id], results[image_id] = action, outcome
    return actions, results


# -- dead letters ----------------------------------------------------------------------------------------------
class DeadLetters:
    """A JSON-lines file of actions that could not be written, each with its reason, for `imgsearch replay`."""

    def __init__(self, directory: str | Path, name: str) -> None:
        self.directory = Path(directory)
        self.name = name
        self.path: Path | None = None
        self.count = 0

    def write(self, action: dict[str, Any], outcome: Outcome, context: dict[str, Any] | None = None) -> None:
        if self.path is None:
            self.directory.mkdir(parents=True, exist_ok=True)
            stamp = dt.datetime.now(dt.timezone.utc).strftime("%Y%m%dT%H%M%SZ")
            self.path = self.directory / f"{self.name}-{stamp}-{os.getpid()}.jsonl"
        record = {**action, "reason": outcome.reason, "status": outcome.status, "error": outcome.error,
                  "time": utc_now(), **(context or {})}
        with self.path.open("a", encoding="utf-8") as f:
            f.write(json.dumps(record, ensure_ascii=False) + "\n")
        self.count += 1


def read_dead_letters(path: str | Path) -> list[dict[str, Any]]:
    actions = []
    with Path(path).open(encoding="utf-8") as f:
        for number, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
                actions.append({k: record[k] for k in ("op", "index", "id", "body")})
            except (ValueError, KeyError) as exc:
                raise ValueError(f"{path}:{number}: not a dead-letter record ({exc})") from exc
    return actions


async def replay(client: AsyncElasticsearch, path: str | Path, *, dead_letter_dir: str | Path, max_retries: int,
                 backoff: float) -> tuple[int, int, Path | None]:
    """Send a dead-letter file's actions again, in order. Returns (written, still failing, their new file)."""
    actions = read_dead_letters(path)
    failed = DeadLetters(dead_letter_dir, Path(path).stem + "-replay")
    written = 0
    for start in range(0, len(actions), 500):
        chunk = actions[start:start + 500]
        outcomes = await send_actions(client, chunk, max_retries=max_retries, backoff=backoff)
        for action, outcome in zip(chunk, outcomes, strict=True):
            if outcome.ok or (action["op"] == "create" and outcome.status == 409):
                written += 1  # a create that finds its document already stored has nothing left to do
            else:
                failed.write(action, outcome)
    return written, failed.count, failed.path


# -- the pipeline ----------------------------------------------------------------------------------------------
class IndexPipeline:
    """Index stage: batches items, writes image documents and occurrences, dead-letters what fails."""

    def __init__(self, *, crawler: Crawler, settings: Settings, index: str, batch_size: int, max_wait: float,
                 max_retries: int, backoff: float, dead_letter_dir: str) -> None:
        self.crawler = crawler
        self.stats = crawler.stats
        self.settings = settings
        self.index = index
        self.sources_index = f"{index}-sources"
        self.batch_size = batch_size
        self.max_wait = max_wait
        self.max_retries = max_retries
        self.backoff = backoff
        self.dead_letters = DeadLetters(dead_letter_dir, index)
        self.client: AsyncElasticsearch | None = None
        self._batcher: Batcher[Any, Outcome] | None = None

    @classmethod
    def from_crawler(cls, crawler: Crawler) -> IndexPipeline:
        s = crawler.settings
        return cls(crawler=crawler, settings=s, index=s.get("IMGSEARCH_INDEX"),
                   batch_size=s.getint("IMGSEARCH_INDEX_BATCH_SIZE"),
                   max_wait=s.getfloat("IMGSEARCH_INDEX_FLUSH_SECONDS"),
                   max_retries=s.getint("IMGSEARCH_INDEX_MAX_RETRIES"),
                   backoff=s.getfloat("IMGSEARCH_INDEX_RETRY_BACKOFF"),
                   dead_letter_dir=s.get("IMGSEARCH_INDEX_DEAD_LETTER_DIR"))

    async def open_spider(self) -> None:
        from index_setup.client import ClusterError, async_es_client, es_client
        from index_setup.indices import ensure_indices

        def ensure() -> None:
            client = es_client(self.settings)
            try:
                ensure_indices(client, self.index, model=self.settings.get("IMGSEARCH_IMAGE_MODEL"),
                               shards=self.settings.getint("IMGSEARCH_SHARDS"),
                               replicas=self.settings.getint("IMGSEARCH_REPLICAS"))
            except (elastic_transport.TransportError, elasticsearch.ApiError) as exc:
                from index_setup.client import describe_error

                raise ClusterError(describe_error(exc, self.settings)) from exc
            finally:
                client.close()

        await asyncio.to_thread(ensure)
        self.client = async_es_client(self.settings)
        self._batcher = Batcher(self._write_batch, size=self.batch_size, max_wait=self.max_wait)

    async def process_item(self, item: Any) -> Any:
        """Write the item's image document (or update it) and its occurrence; drop it when that failed."""
        assert self._batcher is not None, "open_spider was not called"
        outcome = await self._batcher.submit(item)
        item.pop("image_embedding", None)  # written; no need to carry 512 floats into logs and feeds
        if not outcome.ok:
            raise DropItem(f"index failed: {outcome.reason}", log_level="DEBUG")
        self.stats.inc_value("imgsearch/index/indexed")
        return item

    async def _write_batch(self, items: list[Any]) -> list[Outcome]:
        assert self.client is not None
        now = utc_now()
        send = SendStats()
        actions, results = await write_image_actions(self.client, self.index, items, now,
                                                     max_retries=self.max_retries, backoff=self.backoff, stats=send)
        sources = [source_action(self.sources_index, item, now) for item in items]
        source_results = await send_actions(self.client, sources, max_retries=self.max_retries,
                                            backoff=self.backoff, stats=send)
        self.stats.inc_value("imgsearch/index/retried", send.retried)
        self.stats.inc_value("imgsearch/index/bulk_requests")
        for image_id, outcome in results.items():
            if outcome.ok:
                kind = "images_created" if actions[image_id]["op"] == "create" else "images_updated"
                self.stats.inc_value(f"imgsearch/index/{kind}")
            else:
                self._dead_letter(actions[image_id], outcome)
        item_outcomes = []
        for item, action, outcome in zip(items, sources, source_results, strict=True):
            if outcome.ok:
                self.stats.inc_value("imgsearch/index/sources_written")
            else:
                self._dead_letter(action, outcome, {"page_url": item["page_url"]})
            image_outcome = results[item["image_id"]]
            item_outcomes.append(image_outcome if not image_outcome.ok else outcome)
        return item_outcomes

    def _dead_letter(self, action: dict[str, Any], outcome: Outcome, context: dict[str, Any] | None = None) -> None:
        self.stats.inc_value(f"imgsearch/index/failed/{outcome.reason}")
        self.stats.inc_value("imgsearch/index/dead_lettered")
        self.dead_letters.write(action, outcome, context)
        logger.warning("Could not index %s %s (%s, status %s); kept in %s", action["op"], action["id"],
                       outcome.reason, outcome.status, self.dead_letters.path)

    async def close_spider(self) -> None:
        if self._batcher is not None:
            await self._batcher.close()
        if self.client is not None:
            await self.client.close()
        if self.dead_letters.count:
            self.stats.set_value("imgsearch/index/dead_letter_file", str(self.dead_letters.path))
            logger.error("%d writes could not be made; they are kept in %s: send them again with "
                         "`imgsearch replay %s`", self.dead_letters.count, self.dead_letters.path,
                         self.dead_letters.path)
