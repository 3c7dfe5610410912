"""Pure builders of the two indices' settings and mappings.

The image index holds one document per unique image (id = SHA-256 of its bytes) with its CLIP vector and its
perceptual hashes; the sources index holds one document per occurrence of an image on a page; the urls index
one document per image URL fetched (what it held, when it was last fetched, its HTTP validators), so that a
re-crawl downloads only what may have changed. Keyword fields are what is matched,
sorted and aggregated exactly (URLs, ids, hashes, formats, domains); titles and alt texts are text with a
keyword sub-field.
"""

from __future__ import annotations

from typing import Any

# Bumped whenever a mapping changes; stored in each index's _meta so an older index can be recognised, and
# `imgsearch index upgrade` copies it into the current schema. 2: perceptual hashes, the urls index.
SCHEMA_VERSION = 2
PHASH_BITS = 64

_KEYWORD = {"type": "keyword"}
_DATE = {"type": "date"}
_TEXT_WITH_KEYWORD = {"type": "text", "fields": {"keyword": {"type": "keyword", "ignore_above": 1024}}}


def sources_alias(image_alias: str) -> str:
    return f"{image_alias}-sources"


def urls_alias(image_alias: str) -> str:
    return f"{image_alias}-urls"


def concrete_name(alias: str, schema_version: int = SCHEMA_VERSION) -> str:
    """The real index behind an alias; a schema upgrade creates the next one and moves the alias."""
    return f"{alias}-v{schema_version}"


def index_settings(shards: int = 1, replicas: int = 0) -> dict[str, Any]:
    return {"number_of_shards": shards, "number_of_replicas": replicas}


def image_mapping(dims: int, model: str | None = None) -> dict[str, Any]:
    return {
        "dynamic": "strict",
        "_meta": {"schema_version": SCHEMA_VERSION, "kind": "images", "model": model, "dims": dims,
                  "normalized": "l2"},
        "properties": {
            "image_embedding": {
                "type": "dense_vector",
                "dims": dims,
                "index": True,
                "similarity": "cosine",
                # Set explicitly: the default index_options differ between 8.x releases.
                "index_options": {"type": "int8_hnsw"},
            },
            "image_id": _KEYWORD,
            "image_name": _KEYWORD,
            "relative_path": _KEYWORD,
            "thumbnail_path": _KEYWORD,  # a small JPEG beside the untouched original, for result pages
            "image_url": _KEYWORD,
            "sha256": _KEYWORD,
            "width": {"type": "integer"},
            "height": {"type": "integer"},
            "format": _KEYWORD,
            "bytes": {"type": "long"},
            "first_seen": _DATE,
            "last_seen": _DATE,
            "domains": _KEYWORD,
            "model": _KEYWORD,
            # Near-duplicate channel (pipelines.phash): the whole image's pHash as hex, and the whole image's
            # and its crops' hashes as bit vectors, which kNN compares by Hamming distance.
            "phash": _KEYWORD,
            "phash_crops": {
                "type": "nested",
                "properties": {
                    "crop": _KEYWORD,
                    "hash": {"type": "dense_vector", "element_type": "bit", "dims": PHASH_BITS, "index": True,
                             "similarity": "l2_norm"},
                },
            },
        },
    }


# Added to the sources mapping (below); `imgsearch check-sources` also adds them to a sources index made before.
SOURCE_STATUS_FIELDS: dict[str, Any] = {
    "checked": _DATE,
    "gone_since": _DATE,
    "gone_reason": _KEYWORD,
    "page_etag": {"type": "keyword", "index": False},
    "page_last_modified": {"type": "keyword", "index": False},
}


def sources_mapping() -> dict[str, Any]:
    return {
        "dynamic": "strict",
        "_meta": {"schema_version": SCHEMA_VERSION, "kind": "sources"},
        "properties": {
            "image_id": _KEYWORD,
            "image_url": _KEYWORD,
            "page_url": _KEYWORD,
            "page_title": _TEXT_WITH_KEYWORD,
            "alt_text": _TEXT_WITH_KEYWORD,
            "domain": _KEYWORD,
            "first_seen": _DATE,
            "last_seen": _DATE,
            # Dead links (`imgsearch check-sources`): when the page was last re-checked; since when it has been
            # gone (404/410, or no longer showing the image; absent while it shows it) and why; the page's HTTP
            # validators at that check, for the next check's conditional request. Gone sources are kept.
            **SOURCE_STATUS_FIELDS,
        },
    }


def urls_mapping() -> dict[str, Any]:
    return {
        "dynamic": "strict",
        "_meta": {"schema_version": SCHEMA_VERSION, "kind": "urls"},
        "properties": {
            "image_url": _KEYWORD,
            "image_id": _KEYWORD,
            "fetched": _DATE,  # last download, or last 304 answer to a conditional request
            "etag": {"type": "keyword", "index": False},
            "last_modified": {"type": "keyword", "index": False},
        },
    }


def mapping_differences(expected: dict[str, Any], actual: dict[str, Any], prefix: str = "") -> list[str]:
    """What in `actual` conflicts with `expected`: missing fields, other types, other vector parameters.

    Fields that only `actual` has are not conflicts (a user may add their own).
    """
    problems = []
    actual_props = actual.get("properties", {})
    for name, want in expected.get("properties", {}).items():
        path = f"{prefix}{name}"
        have = actual_props.get(name)
        if have is None:
            problems.append(f"{path}: missing")
            continue
        want_type, have_type = want.get("type", "object"), have.get("type", "object")
        if want_type != have_type:
            problems.append(f"{path}: type {have_type}, expected {want_type}")
            continue
        if want_type == "dense_vector":
            for key in ("dims", "similarity", "element_type"):
                if key in want and have.get(key, "float" if key == "element_type" else None) != want[key]:
                    problems.append(f"{path}: {key} {have.get(key)}, expected {want[key]}")
        if "properties" in want:
            problems += mapping_differences(want, have, prefix=f"{path}.")
    return problems
