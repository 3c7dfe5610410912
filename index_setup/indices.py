"""Create, inspect and delete the image and sources indices behind their aliases."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

import elasticsearch
from elasticsearch import Elasticsearch

from index_setup.mappings import (
    DEFAULT_DIMS,
    concrete_name,
    image_mapping,
    index_settings,
    mapping_differences,
    sources_alias,
    sources_mapping,
)

logger = logging.getLogger(__name__)


class IndexConflict(Exception):
    """An existing index does not match the schema; nothing was changed."""


class IndexMissing(Exception):
    """The indices have not been created."""


@dataclass(frozen=True)
class IndexNames:
    images: str
    sources: str

    @classmethod
    def for_alias(cls, alias: str) -> IndexNames:
        return cls(images=alias, sources=sources_alias(alias))


def _expected(names: IndexNames, dims: int, model: str | None) -> list[tuple[str, dict[str, Any]]]:
    return [(names.images, image_mapping(dims, model)), (names.sources, sources_mapping())]


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


def ensure_indices(client: Elasticsearch, alias: str, *, dims: int = DEFAULT_DIMS, model: str | None = None,
                   shards: int = 1, replicas: int = 0) -> dict[str, str]:
    """Create the two indices where missing; a no-op where they exist and match.

    Returns {alias: "created" | "exists"}. Raises IndexConflict, changing nothing, when an existing index
    conflicts with the schema (other vector dims or similarity, a field of another type, a missing field).
    """
    names = IndexNames.for_alias(alias)
    expected = _expected(names, dims, model)
    problems = [p for name, mapping in expected for p in check_index(client, name, mapping)]
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
    """Raise IndexMissing when either index is missing."""
    names = IndexNames.for_alias(alias)
    missing = [n for n in (names.images, names.sources) if _existing_mappings(client, n) is None]
    if missing:
        raise IndexMissing(f"index {', '.join(missing)} does not exist: create it with "
                           f"`imgsearch index create --index {alias}`")


def index_info(client: Elasticsearch, alias: str) -> list[dict[str, Any]]:
    """One entry per index behind the two aliases: name, alias, documents, size, schema _meta."""
    rows = []
    for name in (IndexNames.for_alias(alias).images, IndexNames.for_alias(alias).sources):
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
                "docs": total.get("docs", {}).get("count", 0),
                "size_bytes": total.get("store", {}).get("size_in_bytes", 0),
                "meta": body.get("mappings", {}).get("_meta", {}),
            })
    return rows


def delete_indices(client: Elasticsearch, alias: str) -> list[str]:
    """Delete the indices behind the two aliases; returns the deleted index names."""
    deleted = []
    for name in (IndexNames.for_alias(alias).images, IndexNames.for_alias(alias).sources):
        existing = _existing_mappings(client, name)
        if existing:
            client.indices.delete(index=",".join(existing))
            deleted += list(existing)
    return deleted
