"""Pure builders of the Elasticsearch requests the query side sends."""

from __future__ import annotations

from typing import Any

VECTOR_FIELD = "image_embedding"
HASH_FIELD = "phash_crops.hash"
RESULT_FIELDS = ["image_id", "image_url", "image_name", "relative_path", "width", "height", "format", "bytes",
                 "first_seen", "last_seen", "domains"]


def domain_filter(domain: str | None) -> dict[str, Any] | None:
    """Images seen on a domain (or any of several, comma-separated)."""
    if not domain:
        return None
    domains = [d.strip().lower() for d in domain.split(",") if d.strip()]
    return {"terms": {"domains": domains}}


def knn_query(vector: list[float], k: int, num_candidates: int, filter: dict[str, Any] | None = None,
              oversample: float | None = None) -> dict[str, Any]:
    """The kNN clause: `filter` is applied inside the search (a pre-filter), so k results come back whenever k
    images match it. `oversample` re-ranks oversample*k candidates with the full-precision vectors, which the
    int8-quantised index needs for exact enough ordering."""
    clause: dict[str, Any] = {
        "field": VECTOR_FIELD,
        "query_vector": vector,
        "k": k,
        "num_candidates": min(10_000, max(num_candidates, k)),
    }
    if filter:
        clause["filter"] = filter
    if oversample:
        clause["rescore_vector"] = {"oversample": oversample}
    return clause


def near_query(hash_hex: str, k: int, max_bits: int, filter: dict[str, Any] | None = None) -> dict[str, Any]:
    """The near-duplicate kNN clause: images with any stored hash (whole or a crop) at most `max_bits` from the
    query image's hash. Exact over the candidates it visits: a bit vector is compared by Hamming distance, and
    `similarity` bounds that distance. The inner hit names the closest crop."""
    clause: dict[str, Any] = {
        "field": HASH_FIELD,
        "query_vector": hash_hex,
        "k": k,
        "num_candidates": min(10_000, max(100, 2 * k)),
        "similarity": max_bits,
        "inner_hits": {"size": 1, "_source": False, "fields": ["phash_crops.crop"]},
    }
    if filter:
        clause["filter"] = filter
    return clause


def exact_query(sha256: str, filter: dict[str, Any] | None = None) -> dict[str, Any]:
    clauses: list[dict[str, Any]] = [{"term": {"sha256": sha256}}]
    if filter:
        clauses.append(filter)
    return {"bool": {"filter": clauses}}


def all_sources_request(image_ids: list[str], size: int) -> dict[str, Any]:
    """Every occurrence of several images, earliest first (the source finder's answer)."""
    return {
        "query": {"terms": {"image_id": image_ids}},
        "sort": [{"first_seen": "asc"}, {"page_url": "asc"}],
        "size": size,
        "track_total_hits": True,
        "_source": ["image_id", "image_url", "page_url", "page_title", "alt_text", "domain", "first_seen",
                    "last_seen"],
    }


def sources_request(image_ids: list[str], per_image: int) -> dict[str, Any]:
    """The occurrences of several images in one request: collapsed by image, earliest first."""
    return {
        "query": {"terms": {"image_id": image_ids}},
        "collapse": {
            "field": "image_id",
            "inner_hits": {"name": "sources", "size": per_image,
                           "sort": [{"first_seen": "asc"}, {"page_url": "asc"}],
                           "_source": ["page_url", "page_title", "alt_text", "first_seen", "last_seen"]},
        },
        "size": len(image_ids),
        "_source": False,
    }


def cosine_from_score(score: float) -> float:
    """Elasticsearch reports cosine similarity as (1 + cos) / 2; users read cos."""
    return round(2.0 * score - 1.0, 6)
