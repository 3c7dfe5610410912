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
import functools
import hashlib
import json
import logging
import os
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

import elastic_transport
import elasticsearch
from scrapy.exceptions import DropItem

from pipelines.batching import EMBED_STAGE, FETCH_STAGE, Batcher, Occupancy

if TYPE_CHECKING:
    from elasticsearch import AsyncElasticsearch
    from scrapy.crawler import Crawler
    from scrapy.settings import Settings

logger = logging.getLogger(__name__)

RETRYABLE_STATUS = frozenset({408, 429, 500, 502, 503, 504})
MAX_BACKOFF_SECONDS = 60.0
MAX_CONFLICT_ROUNDS = 5  # re-reads of an image document that changed between our read and our write


# -- pure builders ---------------------------------------------------------------------------------------------
def utc_now() -> str:
    return dt.datetime.now(dt.timezone.utc).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def domain_of(url: str) -> str:
    return (urlsplit(url).hostname or "").lower()


def occurrence_id(image_url: str, page_url: str) -> str:
    """Id of the (image URL, page URL) pair in the sources index."""
    return hashlib.sha256(f"{image_url}\n{page_url}".encode()).hexdigest()


def url_id(image_url: str) -> str:
    """Id of an image URL's document in the urls index."""
    return hashlib.sha256(image_url.encode()).hexdigest()


def image_document(item: Any, now: str, domains: list[str]) -> dict[str, Any]:
    return {
        "image_id": item["image_id"],
        "sha256": item["image_id"],
        "image_embedding": item["image_embedding"],
        "image_name": item["image_name"],
        "relative_path": item["relative_path"],
        "thumbnail_path": item.get("thumbnail_path"),
        "image_url": item["image_url"],
        "width": item["width"],
        "height": item["height"],
        "format": item["format"],
        "bytes": item["bytes"],
        "first_seen": now,
        "last_seen": now,
        "domains": domains,
        "model": item.get("model"),
        "phash": item.get("phash"),
        "phash_crops": item.get("phash_crops") or [],
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
    """Upsert of one occurrence: created with first_seen, afterwards only last_seen, title and alt change; an
    occurrence seen again is live again (check-sources may have marked it gone)."""
    doc = source_document(item, now)
    update = {k: doc[k] for k in ("image_id", "page_title", "alt_text", "last_seen")}
    update.update(gone_since=None, gone_reason=None)
    return {"op": "update", "index": index, "id": occurrence_id(item["image_url"], item["page_url"]),
            "body": {"doc": update, "upsert": doc}}


def url_action(index: str, item: Any, now: str) -> dict[str, Any]:
    """What the urls index keeps of an image URL just downloaded or revalidated (see pipelines.fetch)."""
    return {"op": "index", "index": index, "id": url_id(item["image_url"]),
            "body": {"image_url": item["image_url"], "image_id": item["image_id"], "fetched": now,
                     "etag": item.get("http_etag"), "last_modified": item.get("http_last_modified")}}


def image_actions(index: str, items: list[Any], stored_domains: dict[str, list[str] | None],
                  now: str, versions: dict[str, tuple[int, int]] | None = None) -> dict[str, dict[str, Any]]:
    """One write per distinct image in the batch: a create-only full document for an image not yet stored,
    a partial update (last_seen, domains merged with the stored ones) for one that is.

    `stored_domains` maps image id to the stored document's domains, or None where there is no document;
    `versions` maps image id to the (seq_no, primary_term) they were read at: the update then applies only to
    that version (a 409 otherwise), so that two writers cannot each drop the other's domains.
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
            if versions and image_id in versions:
                actions[image_id]["if_seq_no"], actions[image_id]["if_primary_term"] = versions[image_id]
    return actions


def is_image_write(action: dict[str, Any]) -> bool:
    """Whether an action writes an image document (a create, or an update of last_seen and domains)."""
    body = action["body"]
    return "domains" in body.get("doc", body)


def rebase_image_action(action: dict[str, Any], stored: dict[str, Any] | None) -> dict[str, Any]:
    """An image write made against an older state, redone against `stored` (see `stored_images`): an update
    of that version, adding the action's domains to the stored ones, moving last_seen only forward."""
    if stored is None:
        return action
    body = action["body"].get("doc", action["body"])
    last_seen = max((v for v in (stored.get("last_seen"), body.get("last_seen")) if v), default=None)
    domains = sorted(set(stored.get("domains") or []) | set(body.get("domains") or []))
    return {"op": "update", "index": action["index"], "id": action["id"],
            "body": {"doc": {"last_seen": last_seen, "domains": domains}},
            "if_seq_no": stored["seq_no"], "if_primary_term": stored["primary_term"]}


def bulk_operations(actions: Iterable[dict[str, Any]]) -> Iterator[dict[str, Any]]:
    for action in actions:
        meta = {"_index": action["index"], "_id": action["id"]}
        meta.update({k: action[k] for k in ("if_seq_no", "if_primary_term") if k in action})
        yield {action["op"]: meta}
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
    if isinstance(exc, elastic_transport.SerializationError):
        return "serialization_error", None, False  # a TransportError, but nothing was sent
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
        return min(float(headers.get("Retry-After", 0)), MAX_BACKOFF_SECONDS)
    except (TypeError, ValueError):
        return 0.0


async def send_actions(client: AsyncElasticsearch, actions: list[dict[str, Any]], *, max_retries: int,
                       backoff: float, stats: SendStats | None = None) -> list[Outcome]:
    """Send actions in one bulk request, retrying only what failed for a retryable reason (429, 5xx,
    connection errors, timeouts) with exponential backoff. One Outcome per action, in order."""
    stats = stats if stats is not None else SendStats()
    if not actions:
        return []
    # The retries are ours (with backoff, Retry-After and a count): the transport's own, made at once, are off.
    client = client.options(max_retries=0)
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


async def stored_images(client: AsyncElasticsearch, index: str,
                        ids: list[str]) -> dict[str, dict[str, Any] | None]:
    """Domains, last_seen, seq_no and primary_term of the stored image documents, None for ids with none."""
    if not ids:
        return {}
    response = await client.mget(index=index, ids=ids, source=["domains", "last_seen"])
    return {doc["_id"]: {"domains": doc.get("_source", {}).get("domains") or [],
                         "last_seen": doc.get("_source", {}).get("last_seen"),
                         "seq_no": doc["_seq_no"], "primary_term": doc["_primary_term"]} if doc.get("found") else None
            for doc in response["docs"]}


async def write_image_actions(client: AsyncElasticsearch, index: str, items: list[Any], now: str, *,
                              max_retries: int, backoff: float,
                              stats: SendStats) -> tuple[dict[str, dict[str, Any]], dict[str, Outcome]]:
    """Write one action per distinct image of `items`; a create that loses a race becomes an update, and an
    update of a document that changed since it was read is made again on the new version."""
    ids = sorted({i["image_id"] for i in items})
    try:
        stored = await stored_images(client, index, ids)
    except (elastic_transport.TransportError, elasticsearch.ApiError):
        stored = {}  # the bulk below meets the same trouble and is retried or dead-lettered with its reason
    actions = image_actions(index, items, {k: v["domains"] if v else None for k, v in stored.items()}, now,
                            versions={k: (v["seq_no"], v["primary_term"]) for k, v in stored.items() if v})
    order = list(actions)
    results = dict(zip(order, await send_actions(client, [actions[i] for i in order], max_retries=max_retries,
                                                  backoff=backoff, stats=stats), strict=True))
    await _resolve_conflicts(client, actions, results, max_retries=max_retries, backoff=backoff, stats=stats)
    return actions, results


async def _rebased(client: AsyncElasticsearch, actions: dict[Any, dict[str, Any]],
                   keys: list[Any]) -> dict[Any, dict[str, Any]]:
    """The image writes `keys` of `actions`, each redone against its document as stored now."""
    rebased = {}
    for index in sorted({actions[k]["index"] for k in keys}):
        group = [k for k in keys if actions[k]["index"] == index]
        try:
            stored = await stored_images(client, index, sorted({actions[k]["id"] for k in group}))
        except (elastic_transport.TransportError, elasticsearch.ApiError):
            stored = {}  # sent as they are: the bulk meets the same trouble and reports it
        rebased.update({k: rebase_image_action(actions[k], stored.get(actions[k]["id"])) for k in group})
    return rebased


async def _resolve_conflicts(client: AsyncElasticsearch, actions: dict[Any, dict[str, Any]],
                             results: dict[Any, Outcome], *, max_retries: int, backoff: float,
                             stats: SendStats) -> None:
    """Image writes that met a 409 (stored or changed meanwhile: another batch or crawler, or an earlier attempt
    whose answer was lost), read again and merged into the stored document, a few times at most. In place."""
    for _ in range(MAX_CONFLICT_ROUNDS):
        conflicts = [k for k, action in actions.items() if is_image_write(action) and results[k].status == 409]
        if not conflicts:
            return
        retry = await _rebased(client, actions, conflicts)
        outcomes = await send_actions(client, list(retry.values()), max_retries=max_retries, backoff=backoff,
                                      stats=stats)
        for (key, action), outcome in zip(retry.items(), outcomes, strict=True):
            actions[key], results[key] = action, outcome


def _without_repeats(actions: list[dict[str, Any]]) -> Iterator[list[dict[str, Any]]]:
    """Consecutive parts in which no document is written twice, so that each write can be based on the last."""
    part: list[dict[str, Any]] = []
    seen: set[tuple[str, str]] = set()
    for action in actions:
        key = (action["index"], action["id"])
        if key in seen:
            yield part
            part, seen = [], set()
        part.append(action)
        seen.add(key)
    if part:
        yield part


# -- dead letters ----------------------------------------------------------------------------------------------
def bulk_write_options(settings: Settings) -> dict[str, Any]:
    """How a pipeline stage batches and retries its bulk writes, from the IMGSEARCH_INDEX_* settings."""
    return {"batch_size": settings.getint("IMGSEARCH_INDEX_BATCH_SIZE"),
            "max_wait": settings.getfloat("IMGSEARCH_INDEX_FLUSH_SECONDS"),
            "max_retries": settings.getint("IMGSEARCH_INDEX_MAX_RETRIES"),
            "backoff": settings.getfloat("IMGSEARCH_INDEX_RETRY_BACKOFF")}


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


def iter_dead_letters(path: str | Path) -> Iterator[dict[str, Any]]:
    """The actions of a dead-letter file, one at a time (a file of any size); ValueError names a damaged line."""
    with Path(path).open(encoding="utf-8") as f:
        for number, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
                yield {k: record[k] for k in ("op", "index", "id", "body")}
            except (ValueError, KeyError, TypeError) as exc:
                raise ValueError(f"{path}:{number}: not a dead-letter record ({exc})") from exc


def count_dead_letters(path: str | Path) -> int:
    """The records of a dead-letter file, each checked, none kept: a damaged file is refused before any write."""
    return sum(1 for _ in iter_dead_letters(path))


def _blocks(actions: Iterable[dict[str, Any]], size: int) -> Iterator[list[dict[str, Any]]]:
    block: list[dict[str, Any]] = []
    for action in actions:
        block.append(action)
        if len(block) == size:
            yield block
            block = []
    if block:
        yield block


async def replay(client: AsyncElasticsearch, path: str | Path, *, dead_letter_dir: str | Path, max_retries: int,
                 backoff: float, set_total: Callable[[int], None] | None = None,
                 advance: Callable[..., None] | None = None) -> tuple[int, int, Path | None]:
    """Send a dead-letter file's actions again, in order, reading it as it goes. Returns (written, still
    failing, their new file). `set_total(records)` is called once the file is checked, before any write, and
    `advance(n, written=w, failed=f)` after each part sent (for a progress display)."""
    total = count_dead_letters(path)
    if set_total is not None:
        set_total(total)
    failed = DeadLetters(dead_letter_dir, Path(path).stem + "-replay")
    written = 0
    stats = SendStats()
    parts = (part for block in _blocks(iter_dead_letters(path), 500) for part in _without_repeats(block))
    for chunk in parts:
        # Image writes were made against their documents as they were then: redo them on the stored ones.
        todo = dict(enumerate(chunk))
        todo.update(await _rebased(client, todo, [n for n, a in todo.items() if is_image_write(a)]))
        results = dict(enumerate(await send_actions(client, list(todo.values()), max_retries=max_retries,
                                                    backoff=backoff, stats=stats)))
        await _resolve_conflicts(client, todo, results, max_retries=max_retries, backoff=backoff, stats=stats)
        chunk_written = 0
        for action, outcome in zip(chunk, (results[n] for n in range(len(chunk))), strict=True):
            if outcome.ok or (action["op"] == "create" and outcome.status == 409):
                chunk_written += 1  # a create that finds its document already stored has nothing left to do
            else:
                failed.write(action, outcome)
        written += chunk_written
        if advance is not None:
            advance(len(chunk), written=chunk_written, failed=len(chunk) - chunk_written)
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
        self.urls_index = f"{index}-urls"
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
        return cls(crawler=crawler, settings=s, index=s.get("IMGSEARCH_INDEX"), **bulk_write_options(s),
                   dead_letter_dir=s.get("IMGSEARCH_INDEX_DEAD_LETTER_DIR"))

    async def open_spider(self) -> None:
        from index_setup.client import ClusterError, async_es_client, es_client
        from index_setup.indices import ensure_indices
        from pipelines.embedding import model_dims

        model = self.settings.get("IMGSEARCH_IMAGE_MODEL")

        def ensure() -> None:
            client = es_client(self.settings)
            try:
                # Loads the model for its dims only when a first crawl not started by `imgsearch crawl` (which
                # creates the indices before) creates the image index, while the embed stage loads it too.
                ensure_indices(client, self.index, dims=functools.partial(model_dims, model), model=model,
                               shards=self.settings.getint("IMGSEARCH_SHARDS"),
                               replicas=self.settings.getint("IMGSEARCH_REPLICAS"))
            except (elastic_transport.TransportError, elasticsearch.ApiError) as exc:
                from index_setup.client import describe_error

                raise ClusterError(describe_error(exc, self.settings)) from exc
            finally:
                client.close()

        await asyncio.to_thread(ensure)
        self.client = async_es_client(self.settings)
        occupancy = Occupancy.of(self.crawler)
        self._batcher = Batcher(self._write_batch, size=self.batch_size, max_wait=self.max_wait,
                                upstream_idle=occupancy.idle(FETCH_STAGE, EMBED_STAGE))
        occupancy.watch(self._batcher.poke)

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
        # A URL is recorded as known only once its image is written, so a re-crawl never skips an image that
        # is not in the index.
        urls = [url_action(self.urls_index, item, now) for item in items
                if item.get("url_checked") and results[item["image_id"]].ok]
        sent = await send_actions(self.client, sources + urls, max_retries=self.max_retries,
                                  backoff=self.backoff, stats=send)
        source_results = sent[:len(sources)]
        for action, outcome in zip(urls, sent[len(sources):], strict=True):
            if not outcome.ok:  # the next crawl downloads this URL again; kept for replay all the same
                self._dead_letter(action, outcome)
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

    async def _refresh(self) -> None:
        """Make the crawl's last writes searchable now: a search right after the crawl (a script, the demo)
        would otherwise miss what the last bulk requests wrote until the index's next refresh."""
        from index_setup.indices import IndexNames

        if not self.stats.get_value("imgsearch/index/bulk_requests"):
            return
        try:
            await self.client.indices.refresh(index=",".join(IndexNames.for_alias(self.index).all()))
        except (elastic_transport.TransportError, elasticsearch.ApiError) as exc:
            # Everything is written; it only becomes searchable at the cluster's next refresh instead.
            logger.warning("Could not refresh %s after the crawl (%s: %s)", self.index, type(exc).__name__,
                           str(exc)[:200])

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
            await self._refresh()
            await self.client.close()
        if self.dead_letters.count:
            self.stats.set_value("imgsearch/index/dead_letter_file", str(self.dead_letters.path))
            logger.error("%d writes could not be made; they are kept in %s: send them again with "
                         "`imgsearch replay %s`", self.dead_letters.count, self.dead_letters.path,
                         self.dead_letters.path)
