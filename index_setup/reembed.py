"""Re-embed the image index with another image model, from the original images kept by the crawl.

`imgsearch reembed --model NAME` builds a new concrete image index, `<alias>-v2-<model>-<hash>` (the name follows
from the alias and the model, so an interrupted run finds its own work again), with every document of the
current one: every field is copied (metadata, first/last seen, domains, perceptual hashes) and the vector is
computed again from the original (FILES_STORE + relative_path) by `pipelines.embedding.Embedder`, in batches,
while the next batch's originals are read and decoded in threads. The sources and urls indices key on the image
id (the SHA-256 of the bytes, which does not change) and are left as they are.

1. Copy: every document not yet in the new index (or there without a vector) is embedded and written. Searches
   and crawls go on using the current index meanwhile.
2. Catch up: writes to the current index are blocked (a crawl running meanwhile dead-letters its refused
   writes for `imgsearch replay`), and the documents a crawl wrote or updated since the copy began (last_seen)
   are copied again, keeping the vectors already made.
3. The counts are checked, the alias moves to the new index in one atomic call, and the old index is deleted.

A failure in 2 or 3 unblocks the current index and keeps the new one; run the command again and it resumes
(documents already in the new index are not embedded again). The new index's `_meta` records the model and
its dims, plus `reembed` ({"from": the old index, "started": when}).

An image whose original cannot be read (missing, unreadable, or not the bytes its id names) is not dropped: its
document is copied with all its fields but without a vector (`model` null), so exact and near-duplicate search
and the source finder still find it, and semantic search does not. Each one is reported (its id, path and
reason) and counted. Once the originals are back, `imgsearch reembed` with the same model embeds, in place,
just the documents that have no vector.
"""

from __future__ import annotations

import concurrent.futures
import datetime as dt
import hashlib
import logging
import re
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import TYPE_CHECKING, Any

from elasticsearch import Elasticsearch, helpers

from index_setup.indices import IndexConflict, IndexNames, _existing_mappings, require_indices
from index_setup.mappings import concrete_name, image_mapping, index_settings

if TYPE_CHECKING:
    from PIL import Image

    from pipelines.embedding import Embedder

logger = logging.getLogger(__name__)

VECTOR_FIELD = "image_embedding"
# Documents read, embedded and written per step.
CHUNK = 64
# Documents a crawl wrote up to this long before the copy began (clocks of other machines) are caught up too.
CLOCK_MARGIN = dt.timedelta(minutes=10)
# Reasons an original could not be used.
NO_PATH, MISSING, READ_ERROR, CHECKSUM_MISMATCH = "no_path", "missing", "read_error", "checksum_mismatch"
# Failed documents named in a ReembedFailed message.
SHOWN_FAILURES = 5

Advance = Callable[..., None]
OnMissing = Callable[[dict[str, Any], str], None]


class ReembedFailed(IndexConflict):
    """Documents could not be written, or the new index does not hold every document; nothing was switched."""


@dataclass
class ReembedReport:
    alias: str
    model: str
    dims: int
    index: str  # the concrete index behind the alias afterwards
    previous: str | None  # the index it replaced; None when nothing was switched
    outcome: str  # "switched" | "repaired" (same model: documents without a vector embedded in place)
    documents: int = 0
    embedded: int = 0
    kept: int = 0  # already in the new index (an earlier, interrupted run), not embedded again
    caught_up: int = 0  # written by a crawl during the copy, copied again
    missing: dict[str, int] = field(default_factory=dict)  # reason -> documents this run could not embed
    without_vector: int = 0  # documents of the index left without a vector


# -- pure helpers ----------------------------------------------------------------------------------------------
def reembed_index_name(alias: str, model: str) -> str:
    """The new concrete index for `alias` embedded with `model`: the same name every time (resumable),
    lower case, a readable part of the model's name and a hash of the whole of it."""
    readable = re.sub(r"[^a-z0-9]+", "-", PurePosixPath(model.rstrip("/")).name.lower()).strip("-")[:40]
    digest = hashlib.sha256(model.encode()).hexdigest()[:8]
    return f"{concrete_name(alias)}-{readable or 'model'}-{digest}"


def copied_document(source: dict[str, Any], vector: list[float] | None, model: str | None) -> dict[str, Any]:
    """The old document with its vector and model replaced; without a vector field when there is none."""
    doc = {k: v for k, v in source.items() if k != VECTOR_FIELD}
    if vector is not None:
        doc[VECTOR_FIELD] = vector
    doc["model"] = model if vector is not None else None
    return doc


def utc(moment: dt.datetime) -> str:
    return moment.astimezone(dt.timezone.utc).isoformat(timespec="milliseconds").replace("+00:00", "Z")


# -- originals -------------------------------------------------------------------------------------------------
@dataclass
class Pending:
    """A document of the old index on its way to the new one; `vector` set: copied, not embedded again."""

    hit: dict[str, Any]
    vector: list[float] | None = None
    model: str | None = None
    embed: bool = True


class StoredOriginals:
    """Vectors of indexed images computed from the originals in a local FILES_STORE with the one Embedder.

    Originals are read and decoded (`imaging.load_image`, as the crawl does) in `workers` threads, one chunk
    ahead of the chunk being embedded; each is checked against its id (SHA-256 of the bytes).
    """

    def __init__(self, embedder: Embedder, base: Path, *, max_pixels: int, workers: int = 2) -> None:
        self.embedder = embedder
        self.base = base
        self.max_pixels = max_pixels
        self._pool = concurrent.futures.ThreadPoolExecutor(max_workers=max(1, workers),
                                                           thread_name_prefix="imgsearch-originals")

    @property
    def model(self) -> str:
        return self.embedder.image_model_name

    @property
    def dims(self) -> int:
        return self.embedder.dims

    def close(self) -> None:
        self._pool.shutdown(wait=True, cancel_futures=True)

    def load(self, hit: dict[str, Any]) -> Image.Image | str:
        """The decoded original of an image document, or the reason it cannot be had."""
        from pipelines import imaging

        relative = hit["_source"].get("relative_path")
        if not relative:
            return NO_PATH
        try:
            data = (self.base / relative).read_bytes()
        except FileNotFoundError:
            return MISSING
        except OSError:
            return READ_ERROR
        try:
            loaded = imaging.load_image(data, max_bytes=1 << 40, max_pixels=self.max_pixels, min_width=1,
                                        min_height=1)
        except imaging.ImageRejected as exc:
            return exc.reason
        if loaded.sha256 != (hit["_source"].get("sha256") or hit["_id"]):
            return CHECKSUM_MISMATCH
        return loaded.image

    def vectors(self, chunks: Iterable[list[Pending]]
                ) -> Iterator[list[tuple[Pending, list[float] | None, str | None]]]:
        """For each chunk, (pending, vector or None, reason or None) per document, in order; the next chunk's
        originals are decoded while this one is embedded."""
        ahead: tuple[list[Pending], list[concurrent.futures.Future[Any] | None]] | None = None
        for chunk in chunks:
            loads = [self._pool.submit(self.load, p.hit) if p.embed else None for p in chunk]
            if ahead is not None:
                yield self._embed(*ahead)
            ahead = (chunk, loads)
        if ahead is not None:
            yield self._embed(*ahead)

    def _embed(self, chunk: list[Pending], loads: list[concurrent.futures.Future[Any] | None]
               ) -> list[tuple[Pending, list[float] | None, str | None]]:
        loaded = [f.result() if f is not None else None for f in loads]
        images = [x for x in loaded if x is not None and not isinstance(x, str)]
        vectors = iter(self.embedder.embed_images(images).tolist() if images else [])
        results: list[tuple[Pending, list[float] | None, str | None]] = []
        for pending, outcome in zip(chunk, loaded, strict=True):
            if not pending.embed:
                results.append((pending, pending.vector, None))
            elif isinstance(outcome, str):
                results.append((pending, None, outcome))
            else:
                results.append((pending, next(vectors), None))
        return results


# -- the index work --------------------------------------------------------------------------------------------
def _now() -> dt.datetime:
    return dt.datetime.now(dt.timezone.utc)


def _only_index(client: Elasticsearch, alias: str) -> tuple[str, dict[str, Any]]:
    existing = _existing_mappings(client, alias) or {}
    if len(existing) != 1:
        raise IndexConflict(f"alias {alias} points at {len(existing)} indices ({', '.join(existing)}); expected one")
    index, body = next(iter(existing.items()))
    return index, body.get("mappings", {}).get("_meta", {})


def reembed(client: Elasticsearch, alias: str, originals: StoredOriginals, *, chunk: int = CHUNK,
            advance: Advance | None = None, on_missing: OnMissing | None = None,
            set_total: Callable[[int], None] | None = None, max_retries: int = 5) -> ReembedReport:
    """Re-embed the image index behind `alias` with `originals.model` and switch the alias (see the module
    docstring); with the model it already has, embed in place the documents that have no vector.

    `advance(n, **counts)` is told of every n documents done; `on_missing(hit, reason)` of each document whose
    original could not be used; `set_total(n)` of the documents to go through, once known.
    """
    require_indices(client, alias)
    names = IndexNames.for_alias(alias)
    old, meta = _only_index(client, names.images)
    model = originals.model
    if meta.get("model") == model:
        return _repair(client, alias, old, originals, chunk=chunk, advance=advance, on_missing=on_missing,
                       set_total=set_total, max_retries=max_retries)
    dims = originals.dims
    new = reembed_index_name(alias, model)
    started = _prepare_new_index(client, old, new, model, dims)
    report = ReembedReport(alias=alias, model=model, dims=dims, index=new, previous=old, outcome="switched")
    report.documents = client.count(index=old)["count"]
    if set_total is not None:
        set_total(report.documents)
    # 1. Copy, while crawls and searches go on with the old index.
    _copy(client, old, new, originals, {"match_all": {}}, report, chunk=chunk, catch_up=False, advance=advance,
          on_missing=on_missing, max_retries=max_retries)
    # 2. Catch up with what crawls wrote meanwhile, the old index blocked; 3. check and switch.
    client.indices.put_settings(index=old, settings={"index.blocks.write": True})
    try:
        since = utc(dt.datetime.fromisoformat(started.replace("Z", "+00:00")) - CLOCK_MARGIN)
        _copy(client, old, new, originals, {"range": {"last_seen": {"gte": since}}}, report, chunk=chunk,
              catch_up=True, advance=None, on_missing=on_missing, max_retries=max_retries)
        client.indices.refresh(index=new)
        expected, stored = client.count(index=old)["count"], client.count(index=new)["count"]
        if stored != expected:
            raise ReembedFailed(f"{new} holds {stored} documents, {old} has {expected}; nothing was switched. "
                                f"Run the command again to resume")
        report.documents = expected
        report.without_vector = _count_without_vector(client, new)
        client.indices.update_aliases(actions=[
            {"remove": {"index": old, "alias": names.images}},
            {"add": {"index": new, "alias": names.images, "is_write_index": True}},
        ])
    except BaseException:
        client.indices.put_settings(index=old, settings={"index.blocks.write": False})
        raise
    client.indices.delete(index=old)
    logger.info("Alias %s now points at %s (model %s, %d dims); %s deleted", names.images, new, model, dims, old)
    return report


def _prepare_new_index(client: Elasticsearch, old: str, new: str, model: str, dims: int) -> str:
    """Create the new index, or find the one an interrupted run left; returns when its copy began."""
    if client.indices.exists(index=new):
        body = client.indices.get_mapping(index=new).body[new]["mappings"]
        meta = body.get("_meta", {})
        vector = body.get("properties", {}).get(VECTOR_FIELD, {})
        previous = meta.get("reembed") or {}
        if previous.get("from") != old or meta.get("model") != model or vector.get("dims") != dims:
            raise IndexConflict(f"index {new} exists but is not an unfinished re-embedding of {old} with {model} "
                                f"({dims} dims); nothing was changed. Delete it (DELETE /{new}) and run again")
        logger.info("Resuming the re-embedding of %s into %s, begun %s", old, new, previous.get("started"))
        # Blocked by the interrupted run's catch-up: crawls may write to it again until this run's.
        client.indices.put_settings(index=old, settings={"index.blocks.write": False})
        return str(previous["started"])
    started = utc(_now())
    mapping = image_mapping(dims, model)
    mapping["_meta"]["reembed"] = {"from": old, "started": started}
    settings = client.indices.get_settings(index=old).body[old]["settings"]["index"]
    client.indices.create(index=new, mappings=mapping, settings=index_settings(
        int(settings.get("number_of_shards", 1)), int(settings.get("number_of_replicas", 0))))
    return started


def _chunks(client: Elasticsearch, index: str, query: dict[str, Any], size: int) -> Iterator[list[dict[str, Any]]]:
    batch: list[dict[str, Any]] = []
    for hit in helpers.scan(client, index=index, query={"query": query}, size=max(size, 100), scroll="30m",
                            preserve_order=False):
        batch.append(hit)
        if len(batch) >= size:
            yield batch
            batch = []
    if batch:
        yield batch


def _copy(client: Elasticsearch, old: str, new: str, originals: StoredOriginals, query: dict[str, Any],
          report: ReembedReport, *, chunk: int, catch_up: bool, advance: Advance | None,
          on_missing: OnMissing | None, max_retries: int) -> None:
    """Write the documents of `old` matching `query` into `new`. First pass: those not there yet (or there
    without a vector) are embedded. Catch-up: each is written again with its current fields; those already
    there keep the vector they have, the others are embedded."""

    def pending() -> Iterator[list[Pending]]:
        for hits in _chunks(client, old, query, chunk):
            found = {doc["_id"]: doc.get("_source", {}) for doc in client.mget(
                index=new, ids=[h["_id"] for h in hits], source=[VECTOR_FIELD, "model"])["docs"]
                if doc.get("found")}
            todo = []
            for hit in hits:
                there = found.get(hit["_id"])
                if catch_up and there is not None:
                    todo.append(Pending(hit, there.get(VECTOR_FIELD), there.get("model"), embed=False))
                elif not catch_up and there is not None and there.get("model"):
                    report.kept += 1
                else:
                    todo.append(Pending(hit))
            if advance is not None and len(todo) < len(hits):
                advance(len(hits) - len(todo), kept=len(hits) - len(todo))
            if todo:
                yield todo

    def actions() -> Iterator[list[dict[str, Any]]]:
        for results in originals.vectors(pending()):
            batch = []
            for item, vector, reason in results:
                hit = item.hit
                if catch_up:
                    report.caught_up += 1
                if reason is not None:
                    report.missing[reason] = report.missing.get(reason, 0) + 1
                    logger.warning("Image %s: original %s %s; copied without a vector", hit["_id"],
                                   hit["_source"].get("relative_path"), reason)
                    if on_missing is not None:
                        on_missing(hit, reason)
                elif item.embed:
                    report.embedded += 1
                batch.append({"_op_type": "index", "_index": new, "_id": hit["_id"],
                              "_source": copied_document(hit["_source"], vector, item.model if not item.embed
                                                         else originals.model),
                              "_reason": reason})
            yield batch

    _send(client, actions(), advance=advance, what=f"copying {old} into {new}", max_retries=max_retries)


def _send(client: Elasticsearch, batches: Iterable[list[dict[str, Any]]], *, advance: Advance | None, what: str,
          max_retries: int) -> None:
    """Write each batch of actions in one bulk as soon as it is made (an interruption loses none that was
    embedded before it), retrying 429s with backoff; ReembedFailed at the end when documents were refused."""
    failures: list[str] = []
    failed = 0
    for batch in batches:
        if batch:
            failed += _send_batch(client, batch, advance=advance, failures=failures, max_retries=max_retries)
    if failed:
        raise ReembedFailed(f"{what}: {failed} document(s) could not be written (e.g. {'; '.join(failures)}); "
                            f"nothing was switched. Run the command again to resume")


def _send_batch(client: Elasticsearch, batch: list[dict[str, Any]], *, advance: Advance | None,
                failures: list[str], max_retries: int) -> int:
    reasons = {action["_id"]: action.pop("_reason", None) for action in batch}
    failed = 0
    for ok, info in helpers.streaming_bulk(client, batch, chunk_size=len(batch), max_retries=max_retries,
                                           initial_backoff=1, raise_on_error=False):
        result = next(iter(info.values()))
        reason = reasons.get(result.get("_id"))
        if not ok:
            failed += 1
            if len(failures) < SHOWN_FAILURES:
                error = result.get("error")
                failures.append(f"{result.get('_id')}: {error.get('type') if isinstance(error, dict) else error}")
        if advance is not None:
            advance(1, **({"no_original": 1} if reason else {}))
    return failed


def _count_without_vector(client: Elasticsearch, index: str) -> int:
    return client.count(index=index, query={"bool": {"must_not": {"exists": {"field": VECTOR_FIELD}}}})["count"]


def _repair(client: Elasticsearch, alias: str, index: str, originals: StoredOriginals, *, chunk: int,
            advance: Advance | None, on_missing: OnMissing | None, set_total: Callable[[int], None] | None,
            max_retries: int) -> ReembedReport:
    """The index already holds `originals.model`'s vectors: embed, in place, the documents without one; and
    finish a switch an interrupted run made but did not clean up after (delete the old index)."""
    _, meta = _only_index(client, alias)
    leftover = (meta.get("reembed") or {}).get("from")
    if leftover and leftover != index and client.indices.exists(index=leftover):
        client.indices.delete(index=leftover)
        logger.info("Deleted %s, left behind by an interrupted re-embedding", leftover)
    mapping = client.indices.get_mapping(index=index).body[index]["mappings"]
    dims = int(mapping.get("properties", {}).get(VECTOR_FIELD, {}).get("dims") or meta.get("dims") or 0)
    if dims and originals.dims != dims:
        raise IndexConflict(f"{originals.model} gives {originals.dims}-d vectors but {index} holds {dims}-d ones")
    report = ReembedReport(alias=alias, model=originals.model, dims=dims, index=index, previous=None,
                           outcome="repaired")
    query = {"bool": {"must_not": {"exists": {"field": VECTOR_FIELD}}}}
    todo = client.count(index=index, query=query)["count"]
    report.documents = client.count(index=index)["count"]
    if set_total is not None:
        set_total(todo)

    def pending() -> Iterator[list[Pending]]:
        for hits in _chunks(client, index, query, chunk):
            yield [Pending(hit) for hit in hits]

    def actions() -> Iterator[list[dict[str, Any]]]:
        for results in originals.vectors(pending()):
            batch = []
            for item, vector, reason in results:
                if reason is not None:
                    report.missing[reason] = report.missing.get(reason, 0) + 1
                    logger.warning("Image %s: original %s %s; still without a vector", item.hit["_id"],
                                   item.hit["_source"].get("relative_path"), reason)
                    if on_missing is not None:
                        on_missing(item.hit, reason)
                    if advance is not None:
                        advance(1, no_original=1)
                    continue
                report.embedded += 1
                batch.append({"_op_type": "update", "_index": index, "_id": item.hit["_id"],
                              "doc": {VECTOR_FIELD: vector, "model": originals.model}})
            yield batch

    _send(client, actions(), advance=advance, what=f"embedding documents of {index}", max_retries=max_retries)
    client.indices.refresh(index=index)
    report.without_vector = _count_without_vector(client, index)
    return report
