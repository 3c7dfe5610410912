"""Create, inspect, upgrade and delete the image, sources and urls indices behind their aliases."""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import elasticsearch
from elasticsearch import Elasticsearch, helpers

from index_setup.mappings import (
    SCHEMA_VERSION,
    concrete_name,
    image_mapping,
    index_settings,
    mapping_differences,
    sources_alias,
    sources_mapping,
    urls_alias,
    urls_mapping,
)

logger = logging.getLogger(__name__)


class IndexConflict(Exception):
    """An existing index does not match the schema; nothing was changed."""


class IndexMissing(Exception):
    """The indices have not been created."""


class ModelMismatch(IndexConflict):
    """The index holds vectors of another model than the one configured."""


def model_mismatch_message(alias: str, stored: str, configured: str) -> str:
    return (f"index {alias} holds vectors of the image model {stored}, but IMGSEARCH_IMAGE_MODEL is {configured}: "
            f"vectors of two models cannot be compared. Use IMGSEARCH_IMAGE_MODEL={stored}, another index "
            f"(--index), or re-embed this one: `imgsearch reembed --model {configured} --index {alias}`")


def stored_model(client: Elasticsearch, alias: str) -> str | None:
    """The image model recorded in the image index's _meta (None: no index, or none recorded)."""
    for body in (_existing_mappings(client, alias) or {}).values():
        model = body.get("mappings", {}).get("_meta", {}).get("model")
        if model:
            return str(model)
    return None


class IndexOutdated(IndexConflict):
    """The indices were made by an older schema: `imgsearch index upgrade` copies them into the current one."""


@dataclass(frozen=True)
class IndexNames:
    images: str
    sources: str
    urls: str

    @classmethod
    def for_alias(cls, alias: str) -> IndexNames:
        return cls(images=alias, sources=sources_alias(alias), urls=urls_alias(alias))

    def all(self) -> tuple[str, str, str]:
        return self.images, self.sources, self.urls


def _expected(names: IndexNames, dims: int, model: str | None) -> list[tuple[str, dict[str, Any]]]:
    return [(names.images, image_mapping(dims, model)), (names.sources, sources_mapping()),
            (names.urls, urls_mapping())]


def schema_versions(client: Elasticsearch, alias: str) -> dict[str, int]:
    """Concrete index -> the schema version in its _meta, for each index behind the image and sources aliases."""
    names = IndexNames.for_alias(alias)
    versions = {}
    for name in (names.images, names.sources):
        for index, body in (_existing_mappings(client, name) or {}).items():
            versions[index] = int(body.get("mappings", {}).get("_meta", {}).get("schema_version") or 1)
    return versions


def outdated_message(alias: str, versions: dict[str, int]) -> str:
    old = ", ".join(f"{index} (schema v{v})" for index, v in sorted(versions.items()) if v < SCHEMA_VERSION)
    return (f"{old}: made by an older imgsearch; this one writes schema v{SCHEMA_VERSION} (perceptual hashes for "
            f"near-duplicate search, a urls index for cheap re-crawls). Nothing was changed. Run `imgsearch index "
            f"upgrade --index {alias}`: it copies the documents into new indices and then moves the aliases, so "
            f"searches keep working on the old ones until the switch.")


def _existing_mappings(client: Elasticsearch, name: str) -> dict[str, Any] | None:
    """Mappings of the index (or of each index behind the alias) called `name`, None when there is none."""
    try:
        return dict(client.indices.get_mapping(index=name).body)
    except elasticsearch.NotFoundError:
        return None


def check_index(client: Elasticsearch, name: str, expected: dict[str, Any]) -> list[str]:
    """Differences between each index behind `name` and the expected mapping, prefixed by the index."""
    existing = _existing_mappings(client, name) or {}
    return [f"{index}: {problem}" for index, body in existing.items()
            for problem in mapping_differences(expected, body.get("mappings", {}))]


def stored_dims(client: Elasticsearch, alias: str) -> int | None:
    """The vector dims recorded in the image index's _meta (None: no index, or none recorded)."""
    for body in (_existing_mappings(client, alias) or {}).values():
        dims = body.get("mappings", {}).get("_meta", {}).get("dims")
        if dims:
            return int(dims)
    return None


def _add_missing_fields(client: Elasticsearch, expected: list[tuple[str, dict[str, Any]]],
                        problems: list[str]) -> list[str]:
    """Fields of the current schema that an index of the same schema version lacks (added to it while that
    version was new) are added in place, which changes no stored document; returns the problems left."""
    missing = [p.split(": ") for p in problems if p.endswith(": missing") and p.count(": ") == 2]
    if len(missing) != len(problems) or any("." in field for _, field, _ in missing):
        return problems
    for name, mapping in expected:
        for index in _existing_mappings(client, name) or {}:
            fields = [field for idx, field, _ in missing if idx == index]
            if fields:
                client.indices.put_mapping(index=index, properties={f: mapping["properties"][f] for f in fields})
                logger.info("Added the fields %s to %s", ", ".join(fields), index)
    return []


def ensure_indices(client: Elasticsearch, alias: str, *, dims: int | Callable[[], int] | None = None,
                   model: str | None = None, shards: int = 1, replicas: int = 0) -> dict[str, str]:
    """Create the indices where missing; a no-op where they exist and match.

    `dims`: the size of the model's vectors, or a function giving it, called only when no image index records
    one (it may load the model); None: the existing index's (after a reembed to another model). Returns
    {alias: "created" | "exists"}. Raises IndexConflict, changing nothing, when an existing index conflicts
    with the schema (other vector dims or similarity, a field of another type), IndexOutdated when it is of
    an older schema, ModelMismatch when its vectors come from another model.
    """
    names = IndexNames.for_alias(alias)
    versions = schema_versions(client, alias)
    if any(v < SCHEMA_VERSION for v in versions.values()):
        raise IndexOutdated(outdated_message(alias, versions))
    stored = stored_model(client, names.images)
    if model and stored and stored != model:
        raise ModelMismatch(model_mismatch_message(alias, stored, model))
    existing_dims = stored_dims(client, names.images)
    if callable(dims):
        dims = existing_dims or dims()
    dims = dims or existing_dims
    if not dims:
        raise ValueError(f"no image index behind {alias} records its vector dims: they are needed to create it")
    expected = _expected(names, dims, model)
    problems = _add_missing_fields(client, expected,
                                   [p for name, mapping in expected for p in check_index(client, name, mapping)])
    if problems:
        raise IndexConflict(
            "existing index does not match the imgsearch schema, nothing was changed:\n  "
            + "\n  ".join(problems)
            + "\nUse another index name (--index / IMGSEARCH_INDEX), or remove it with `imgsearch index delete`.")
    outcome = {}
    for name, mapping in expected:
        if _existing_mappings(client, name) is not None:
            outcome[name] = "exists"
            continue
        try:
            client.indices.create(index=concrete_name(name), settings=index_settings(shards, replicas),
                                  mappings=mapping, aliases={name: {"is_write_index": True}})
            outcome[name] = "created"
            logger.info("Created index %s (alias %s)", concrete_name(name), name)
        except elasticsearch.BadRequestError as exc:
            if exc.error != "resource_already_exists_exception":
                raise
            # Another process created it first, or the concrete index exists without its alias.
            if _existing_mappings(client, name) is None:
                raise IndexConflict(f"index {concrete_name(name)} exists but the alias {name} does not point "
                                    f"at it; add the alias or delete the index") from exc
            outcome[name] = "exists"
    return outcome


def require_indices(client: Elasticsearch, alias: str) -> None:
    """Raise IndexMissing when an index is missing, IndexOutdated when it needs `imgsearch index upgrade`."""
    names = IndexNames.for_alias(alias)
    versions = schema_versions(client, alias)
    if any(v < SCHEMA_VERSION for v in versions.values()):
        raise IndexOutdated(outdated_message(alias, versions))
    missing = [n for n in names.all() if _existing_mappings(client, n) is None]
    if missing:
        raise IndexMissing(f"index {', '.join(missing)} does not exist: create it with "
                           f"`imgsearch index create --index {alias}`")


def index_info(client: Elasticsearch, alias: str) -> list[dict[str, Any]]:
    """One entry per index behind the three aliases: name, alias, documents, size, schema _meta."""
    rows = []
    for name in IndexNames.for_alias(alias).all():
        existing = _existing_mappings(client, name)
        if existing is None:
            rows.append({"alias": name, "index": None})
            continue
        stats = client.indices.stats(index=name, metric="docs,store").body["indices"]
        for index, body in existing.items():
            total = stats.get(index, {}).get("primaries", {})
            rows.append({
                "alias": name,
                "index": index,
                # _count, not the index stats: those count each image's nested crop hashes as documents too.
                "docs": client.count(index=index)["count"],
                "size_bytes": total.get("store", {}).get("size_in_bytes", 0),
                "meta": body.get("mappings", {}).get("_meta", {}),
            })
    return rows


def delete_indices(client: Elasticsearch, alias: str) -> list[str]:
    """Delete the indices behind the three aliases; returns the deleted index names."""
    deleted = []
    for name in IndexNames.for_alias(alias).all():
        existing = _existing_mappings(client, name)
        if existing:
            client.indices.delete(index=",".join(existing))
            deleted += list(existing)
    return deleted


# -- schema upgrade --------------------------------------------------------------------------------------------
def _copy_actions(client: Elasticsearch, old: str, new: str,
                  transform: Callable[[dict[str, Any]], dict[str, Any]] | None) -> Iterator[dict[str, Any]]:
    for hit in helpers.scan(client, index=old, size=500, scroll="10m", preserve_order=False):
        source = hit["_source"]
        yield {"_op_type": "create", "_index": new, "_id": hit["_id"],
               "_source": transform(source) if transform else source}


def _copy(client: Elasticsearch, old: str, new: str,
          transform: Callable[[dict[str, Any]], dict[str, Any]] | None) -> int:
    copied = 0
    for ok, info in helpers.streaming_bulk(client, _copy_actions(client, old, new, transform), chunk_size=500,
                                           max_retries=5, raise_on_error=False):
        result = next(iter(info.values()))
        if ok or result.get("status") == 409:  # 409: copied by an earlier, interrupted upgrade
            copied += 1
        else:
            raise IndexConflict(f"copying {old} into {new} failed for document {result.get('_id')}: "
                                f"{result.get('error')}")
    return copied


def upgrade_indices(client: Elasticsearch, alias: str, *, shards: int = 1, replicas: int = 0,
                    transform_image: Callable[[dict[str, Any]], dict[str, Any]] | None = None,
                    progress: Callable[[str], None] = logger.info) -> dict[str, str]:
    """Bring the indices behind `alias` to the current schema without losing a document or a search.

    For each index of an older schema: block writes to it (a crawl running meanwhile gets a refusal it
    dead-letters, for `imgsearch replay` afterwards), create the new concrete index, copy every document with
    scan + bulk (`transform_image` fills in the image documents' new fields), check the counts, then move the
    alias in one atomic call and delete the old index. Searches use the old index until that call. A copy that
    fails leaves the alias on the old index, writable again, and removes the partial new one. A copy keeps its
    old index's shards and replicas; the urls index, new, gets `shards` and `replicas`. Returns
    {alias: "upgraded" | "current" | "created"}.
    """
    names = IndexNames.for_alias(alias)
    require_existing = [n for n in (names.images, names.sources) if _existing_mappings(client, n) is None]
    if require_existing:
        raise IndexMissing(f"index {', '.join(require_existing)} does not exist: nothing to upgrade; "
                           f"`imgsearch index create --index {alias}` makes current ones")
    outcome = {}
    for name in (names.images, names.sources):
        existing = _existing_mappings(client, name) or {}
        if len(existing) != 1:
            raise IndexConflict(f"alias {name} points at {len(existing)} indices ({', '.join(existing)}); "
                                f"expected one")
        old, body = next(iter(existing.items()))
        meta = body.get("mappings", {}).get("_meta", {})
        if int(meta.get("schema_version") or 1) >= SCHEMA_VERSION:
            outcome[name] = "current"
            continue
        if name == names.images:
            dims = meta.get("dims") or body["mappings"]["properties"]["image_embedding"]["dims"]
            mapping = image_mapping(int(dims), meta.get("model"))
            transform = transform_image
        else:
            mapping, transform = sources_mapping(), None
        new = concrete_name(name)
        old_settings = client.indices.get_settings(index=old).body[old]["settings"]["index"]
        settings = index_settings(int(old_settings.get("number_of_shards", 1)),
                                  int(old_settings.get("number_of_replicas", 0)))
        if client.indices.exists(index=new):
            client.indices.delete(index=new)  # a partial copy of an interrupted upgrade
        client.indices.put_settings(index=old, settings={"index.blocks.write": True})
        try:
            client.indices.create(index=new, settings=settings, mappings=mapping)
            expected = client.count(index=old)["count"]
            progress(f"copying {expected} documents from {old} into {new}")
            copied = _copy(client, old, new, transform)
            client.indices.refresh(index=new)
            stored = client.count(index=new)["count"]
            if copied != expected or stored != expected:
                raise IndexConflict(f"{new} holds {stored} documents after copying {copied}, {old} has {expected}")
        except BaseException:
            client.indices.put_settings(index=old, settings={"index.blocks.write": False})
            client.indices.delete(index=new, ignore_unavailable=True)
            raise
        client.indices.update_aliases(actions=[
            {"remove": {"index": old, "alias": name}},
            {"add": {"index": new, "alias": name, "is_write_index": True}},
        ])
        client.indices.delete(index=old)
        progress(f"alias {name} now points at {new}; {old} deleted")
        outcome[name] = "upgraded"
    if _existing_mappings(client, names.urls) is None:
        client.indices.create(index=concrete_name(names.urls), settings=index_settings(shards, replicas),
                              mappings=urls_mapping(),
                              aliases={names.urls: {"is_write_index": True}})
        outcome[names.urls] = "created"
    else:
        outcome[names.urls] = "current"
    return outcome
