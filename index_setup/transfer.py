"""Export the three indices behind an alias to NDJSON, and import such a file into an alias of any cluster.

The file is one JSON object a line, written and read as a stream (constant memory, whatever the size):

    {"format": "imgsearch-export", "version": 1, "schema_version": 2, "alias": …, "exported": …,
     "indices": {"images": {"meta": {…the _meta: model, dims, normalized…}, "docs": n, "shards": 1,
                            "replicas": 0}, "sources": {…}, "urls": {…}}}          the header
    {"kind": "images", "id": "<sha256>", "source": {…every field, vector and hashes included…}}
    {"kind": "sources", "id": …, "source": {…}}
    {"kind": "urls", "id": …, "source": {…}}
    {"end": true, "counts": {"images": n, "sources": n, "urls": n}}                 the last line

Documents keep their ids (image id = SHA-256 of the bytes, occurrence id from image URL + page URL), and their
`_source` is written as Elasticsearch returns it, so vectors come back bit for bit and a search gives the same
answers before and after. An import creates the target indices with the product's mappings (`ensure_indices`,
with the file's dims and model), refuses a target whose model or dims differ, and writes each document under its
id: a document already there with that id is replaced, others are left alone, and an interrupted import is
simply run again. A file without its end line is reported as incomplete. Files ending in `.gz` are gzip.
"""

from __future__ import annotations

import datetime as dt
import gzip
import io
import json
import logging
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import IO, Any

from elasticsearch import Elasticsearch, helpers

from index_setup.indices import IndexNames, _existing_mappings, ensure_indices, require_indices
from index_setup.mappings import SCHEMA_VERSION

logger = logging.getLogger(__name__)

FORMAT = "imgsearch-export"
FORMAT_VERSION = 1
KINDS = ("images", "sources", "urls")
# Documents per scroll page and per bulk request: what is held in memory at once (an image document with its
# vector is about 11 kB of JSON, 16 kB parsed), whatever the size of the indices.
CHUNK = 200
# Failed documents named in an ImportFailed message.
SHOWN_FAILURES = 5

Advance = Callable[[int], None]


class TransferError(Exception):
    """A file that is not an imgsearch export, of another schema, or incomplete; or an index that cannot be
    exported or imported as it is."""


class ImportFailed(TransferError):
    """Some documents could not be written; the message names the first few and why."""

    def __init__(self, message: str, counts: dict[str, int], failed: int) -> None:
        super().__init__(message)
        self.counts = counts
        self.failed = failed


# -- pure helpers ----------------------------------------------------------------------------------------------
def header(alias: str, indices: dict[str, dict[str, Any]], now: str) -> dict[str, Any]:
    return {"format": FORMAT, "version": FORMAT_VERSION, "schema_version": SCHEMA_VERSION, "alias": alias,
            "exported": now, "indices": indices}


def document_line(kind: str, hit: dict[str, Any]) -> str:
    return dumps({"kind": kind, "id": hit["_id"], "source": hit["_source"]})


def end_line(counts: dict[str, int]) -> str:
    return dumps({"end": True, "counts": counts})


def dumps(record: dict[str, Any]) -> str:
    # Python writes each float with the fewest digits that read back as the same number: vectors survive.
    return json.dumps(record, ensure_ascii=False, separators=(",", ":"))


def check_header(record: Any) -> dict[str, Any]:
    """The header's facts, or TransferError saying why this is not a file we can import."""
    if not isinstance(record, dict) or record.get("format") != FORMAT:
        raise TransferError("not an imgsearch export (its first line is not an imgsearch-export header)")
    if record.get("version") != FORMAT_VERSION:
        raise TransferError(f"export format version {record.get('version')}; this imgsearch reads version "
                            f"{FORMAT_VERSION}")
    version = record.get("schema_version")
    if version != SCHEMA_VERSION:
        raise TransferError(f"the export holds schema v{version} indices; this imgsearch imports schema "
                            f"v{SCHEMA_VERSION} (import it with the imgsearch that made it and run `imgsearch "
                            f"index upgrade`, then export again)" if isinstance(version, int) and
                            version < SCHEMA_VERSION else f"the export holds schema v{version} indices, newer "
                            f"than this imgsearch (schema v{SCHEMA_VERSION}): upgrade imgsearch")
    indices = record.get("indices")
    if not isinstance(indices, dict) or set(indices) != set(KINDS):
        raise TransferError(f"the export header must describe the indices {', '.join(KINDS)}")
    return record


def image_meta(record: dict[str, Any]) -> tuple[int, str | None]:
    """(dims, model) of the exported image index."""
    meta = record["indices"]["images"].get("meta") or {}
    if not meta.get("dims"):
        raise TransferError("the export header does not say the image vectors' dims")
    return int(meta["dims"]), meta.get("model")


def bulk_action(names: IndexNames, record: Any, line_number: int) -> dict[str, Any]:
    """The bulk index action of one document line."""
    if not isinstance(record, dict) or record.get("kind") not in KINDS or "id" not in record \
            or not isinstance(record.get("source"), dict):
        raise TransferError(f"line {line_number}: not a document of an imgsearch export")
    target = {"images": names.images, "sources": names.sources, "urls": names.urls}[record["kind"]]
    return {"_op_type": "index", "_index": target, "_id": record["id"], "_source": record["source"]}


@contextmanager
def open_text(path: str, mode: str) -> Iterator[IO[str]]:
    """A text stream on `path` ("r" or "w"): gzip for *.gz, stdin/stdout for "-", UTF-8 either way."""
    if path == "-":
        stream = sys.stdin if mode == "r" else sys.stdout
        if isinstance(stream, io.TextIOWrapper):
            stream.reconfigure(encoding="utf-8")
        yield stream
        if mode == "w":
            stream.flush()
        return
    opened = gzip.open(path, mode + "t", encoding="utf-8", newline="\n") if path.endswith(".gz") \
        else open(path, mode, encoding="utf-8", newline="\n")
    with opened as f:
        yield f


# -- export ----------------------------------------------------------------------------------------------------
def describe_indices(client: Elasticsearch, alias: str) -> dict[str, dict[str, Any]]:
    """kind -> {meta, docs, shards, replicas} of each index behind the alias's three names."""
    require_indices(client, alias)
    names = IndexNames.for_alias(alias)
    described = {}
    for kind, name in zip(KINDS, names.all(), strict=True):
        existing = _existing_mappings(client, name) or {}
        if len(existing) != 1:
            raise TransferError(f"alias {name} points at {len(existing)} indices ({', '.join(existing)}); "
                                f"expected one")
        index, body = next(iter(existing.items()))
        settings = client.indices.get_settings(index=index).body[index]["settings"]["index"]
        described[kind] = {"meta": body.get("mappings", {}).get("_meta", {}),
                           "docs": client.count(index=name)["count"],
                           "shards": int(settings.get("number_of_shards", 1)),
                           "replicas": int(settings.get("number_of_replicas", 0))}
    return described


def export_indices(client: Elasticsearch, alias: str, out: IO[str], *,
                   advance: Advance | None = None) -> dict[str, int]:
    """Write the header, every document of the three indices, and the end line to `out`; returns the counts.

    Each index is read with one scroll (a consistent view of it); documents written by a crawl running
    meanwhile may or may not be included, so stop crawls for an exact copy. `advance(n)` is told of every
    `n` documents written.
    """
    indices = describe_indices(client, alias)
    now = dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds").replace("+00:00", "Z")
    out.write(dumps(header(alias, indices, now)) + "\n")
    counts = dict.fromkeys(KINDS, 0)
    for kind, name in zip(KINDS, IndexNames.for_alias(alias).all(), strict=True):
        lines: list[str] = []
        for hit in helpers.scan(client, index=name, size=CHUNK, scroll="10m", preserve_order=False):
            lines.append(document_line(kind, hit))
            if len(lines) >= CHUNK:
                counts[kind] += _write_lines(out, lines, advance)
        counts[kind] += _write_lines(out, lines, advance)
    out.write(end_line(counts) + "\n")
    out.flush()
    return counts


def _write_lines(out: IO[str], lines: list[str], advance: Advance | None) -> int:
    written = len(lines)
    if lines:
        out.write("\n".join(lines) + "\n")
        lines.clear()
        if advance is not None:
            advance(written)
    return written


# -- import ----------------------------------------------------------------------------------------------------
def read_header(stream: IO[str]) -> dict[str, Any]:
    first = stream.readline()
    if not first.strip():
        raise TransferError("the file is empty")
    try:
        record = json.loads(first)
    except ValueError:
        raise TransferError("not an imgsearch export (its first line is not JSON)") from None
    return check_header(record)


def prepare_target(client: Elasticsearch, alias: str, record: dict[str, Any], *, configured_model: str | None = None,
                   shards: int | None = None, replicas: int | None = None) -> dict[str, str]:
    """Create the target indices (the product's mappings, the file's dims and model) where missing, or check
    the existing ones: IndexConflict (ModelMismatch among them) when their model or dims differ from the file's.
    Shards and replicas: as given, else as the exported indices had them."""
    dims, model = image_meta(record)
    images = record["indices"]["images"]
    return ensure_indices(client, alias, dims=dims, model=model,
                          shards=shards if shards is not None else int(images.get("shards") or 1),
                          replicas=replicas if replicas is not None else int(images.get("replicas") or 0))


def import_documents(client: Elasticsearch, alias: str, stream: IO[str], *,
                     advance: Advance | None = None, max_retries: int = 5) -> dict[str, int]:
    """Write every document line of `stream` (after its header) into the indices behind `alias`, in bulk,
    retrying 429s with backoff; returns the counts per kind. Raises TransferError for a malformed or incomplete
    file, ImportFailed when documents were refused."""
    names = IndexNames.for_alias(alias)
    counts = dict.fromkeys(KINDS, 0)
    failures: list[str] = []
    failed = 0
    ended: dict[str, Any] = {}

    def actions() -> Iterator[dict[str, Any]]:
        for number, line in enumerate(stream, 2):
            if not line.strip():
                continue
            if ended:
                raise TransferError(f"line {number}: documents after the end line")
            try:
                record = json.loads(line)
            except ValueError:
                raise TransferError(f"line {number}: not JSON (a damaged or truncated file)") from None
            if isinstance(record, dict) and record.get("end") is True:
                ended.update(record)
                continue
            yield bulk_action(names, record, number)

    # Bulk results name the concrete index written (e.g. photos-sources-v2), not the alias.
    kind_of = {index: kind for kind, name in zip(KINDS, names.all(), strict=True)
               for index in [name, *(_existing_mappings(client, name) or {})]}
    for ok, info in helpers.streaming_bulk(client, actions(), chunk_size=CHUNK, max_retries=max_retries,
                                           initial_backoff=1, raise_on_error=False):
        result = next(iter(info.values()))
        kind = kind_of.get(result.get("_index", ""), "images")
        if ok:
            counts[kind] += 1
        else:
            failed += 1
            if len(failures) < SHOWN_FAILURES:
                failures.append(f"{kind} {result.get('_id')}: {_reason(result.get('error'))}")
        if advance is not None:
            advance(1)
    client.indices.refresh(index=",".join(names.all()))
    if failed:
        raise ImportFailed(f"{failed} document(s) could not be written (e.g. {'; '.join(failures)}); the others "
                           f"were; run the import again to retry", counts, failed)
    if not ended:
        raise TransferError(f"the file ends without its end line: it is incomplete (a copy cut short?); "
                            f"{sum(counts.values())} documents were imported from it")
    expected = ended.get("counts") or {}
    short = {k: (counts[k], expected.get(k)) for k in KINDS if expected.get(k) != counts[k]}
    if short:
        raise TransferError("the file's end line counts other documents than it holds: "
                            + ", ".join(f"{k} {got} read, {want} announced" for k, (got, want) in short.items()))
    return counts


def _reason(error: Any) -> str:
    if isinstance(error, dict):
        return f"{error.get('type')}: {str(error.get('reason'))[:200]}"
    return str(error)[:200]
