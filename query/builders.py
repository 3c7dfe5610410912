"""Pure builders of the Elasticsearch requests the query side sends."""

from __future__ import annotations

import datetime as dt
from dataclasses import asdict, dataclass
from typing import Any

VECTOR_FIELD = "image_embedding"
HASH_FIELD = "phash_crops.hash"
RESULT_FIELDS = ["image_id", "image_url", "image_name", "relative_path", "thumbnail_path", "width", "height",
                 "format", "bytes", "first_seen", "last_seen", "domains"]


SORTS = ("score", "first_seen")


@dataclass(frozen=True)
class Filters:
    """What a result must be: seen on one of `domains`, first seen within [since, until], at least
    min_width x min_height, in one of `formats`, scoring at least `min_score`. Every one but min_score is a
    filter inside the kNN search (a pre-filter), so k results come back whenever k images match; min_score is
    a threshold, and only what reaches it is returned."""

    domains: tuple[str, ...] = ()
    since: str | None = None
    until: str | None = None
    min_width: int | None = None
    min_height: int | None = None
    formats: tuple[str, ...] = ()
    min_score: float | None = None

    @classmethod
    def build(cls, *, domain: str | list[str] | None = None, domains: list[str] | None = None,
              since: str | dt.date | None = None, until: str | dt.date | None = None, min_width: int | None = None,
              min_height: int | None = None, formats: list[str] | str | None = None,
              min_score: float | None = None) -> Filters:
        """Checked and normalised filters; ValueError names the first bad one. `domain` (a name, or several
        comma-separated) and `domains` add up."""
        names: list[str] = []
        for value in (domain, domains, formats):
            if isinstance(value, str):
                value = [value]
            names.append(",".join(value or []))
        all_domains = tuple(sorted({d.strip().lower() for d in (names[0] + "," + names[1]).split(",") if d.strip()}))
        all_formats = tuple(sorted({_format_name(f) for f in names[2].split(",") if f.strip()}))
        for name, value in (("min_width", min_width), ("min_height", min_height)):
            if value is not None and (int(value) != value or value < 0):
                raise ValueError(f"{name} must be a whole number >= 0, got {value!r}")
        if min_score is not None and not -1.0 <= float(min_score) <= 1.0:
            raise ValueError(f"min_score must be between -1 and 1, got {min_score!r}")
        start, end = _date(since, "since"), _date(until, "until")
        if start and end and start > end:
            raise ValueError(f"since ({start}) is after until ({end})")
        return cls(domains=all_domains, since=start, until=end,
                   min_width=int(min_width) if min_width is not None else None,
                   min_height=int(min_height) if min_height is not None else None, formats=all_formats,
                   min_score=float(min_score) if min_score is not None else None)

    def clause(self) -> dict[str, Any] | None:
        """The Elasticsearch filter for all but min_score; None when there is nothing to filter."""
        clauses: list[dict[str, Any]] = []
        if self.domains:
            clauses.append({"terms": {"domains": list(self.domains)}})
        if self.since or self.until:
            bounds = {k: v for k, v in (("gte", self.since), ("lte", self.until)) if v}
            clauses.append({"range": {"first_seen": bounds}})
        if self.min_width:
            clauses.append({"range": {"width": {"gte": self.min_width}}})
        if self.min_height:
            clauses.append({"range": {"height": {"gte": self.min_height}}})
        if self.formats:
            clauses.append({"terms": {"format": list(self.formats)}})
        if not clauses:
            return None
        return clauses[0] if len(clauses) == 1 else {"bool": {"filter": clauses}}

    def echo(self) -> dict[str, Any]:
        """The filters as the response's query shows them (only those set)."""
        return {k: list(v) if isinstance(v, tuple) else v for k, v in asdict(self).items() if v not in (None, ())}


def _format_name(name: str) -> str:
    name = name.strip().lower().lstrip(".")
    return {"jpg": "jpeg", "tif": "tiff", "heif": "heic"}.get(name, name)


def _date(value: str | dt.date | None, name: str) -> str | None:
    """An ISO date or date-time; a date alone means its whole day for `until`."""
    if value is None or value == "":
        return None
    if isinstance(value, dt.date):
        value = value.isoformat()
    try:
        parsed = dt.datetime.fromisoformat(str(value).replace("Z", "+00:00"))
    except ValueError:
        raise ValueError(f"{name} must be an ISO date or date-time (2026-01-31, 2026-01-31T12:00:00Z), "
                         f"got {value!r}") from None
    if parsed.tzinfo is None:
        parsed = parsed.replace(tzinfo=dt.timezone.utc)
    if name == "until" and len(str(value)) == 10:  # a bare date: up to the end of that day
        parsed += dt.timedelta(days=1, milliseconds=-1)
    return parsed.astimezone(dt.timezone.utc).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def knn_query(vector: list[float], k: int, num_candidates: int, filter: dict[str, Any] | None = None,
              oversample: float | None = None, min_cosine: float | None = None) -> dict[str, Any]:
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
    if min_cosine is not None:
        clause["similarity"] = min_cosine  # for cosine vectors, kNN `similarity` is the cosine itself
    return clause


# Hashes each segment's graph search visits for the near-duplicate channel. bench/index_cost.py (20,000 images x
# 20 crop hashes, 11 segments): a 4-bit-edited crop hash finds its image 0.997 of the time with 100, 1.000 with 200
# (p50 5.1 -> 5.6 ms); 64-bit Hamming distances tie often, which makes a graph walk end early.
NEAR_CANDIDATES = 200


def near_query(hash_hex: str, k: int, max_bits: int, filter: dict[str, Any] | None = None) -> dict[str, Any]:
    """The near-duplicate kNN clause: images with any stored hash (whole or a crop) at most `max_bits` from the
    query image's hash. Exact over the candidates it visits: a bit vector is compared by Hamming distance, and
    `similarity` bounds that distance. The inner hit names the closest crop."""
    clause: dict[str, Any] = {
        "field": HASH_FIELD,
        "query_vector": hash_hex,
        "k": k,
        "num_candidates": min(10_000, max(NEAR_CANDIDATES, 2 * k)),
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


# Set by `imgsearch check-sources` on an occurrence whose page no longer shows the image (kept: history).
SOURCE_STATUS = ["gone_since", "gone_reason", "checked"]
# Live sources (no gone_since) first, gone ones after; unmapped_type: indices made before the field.
LIVE_FIRST = {"gone_since": {"order": "asc", "missing": "_first", "unmapped_type": "date"}}


def all_sources_request(image_ids: list[str], size: int) -> dict[str, Any]:
    """Every occurrence of several images, earliest first, gone ones included (the source finder's answer: who
    had it first, even if the page is gone now)."""
    return {
        "query": {"terms": {"image_id": image_ids}},
        "sort": [{"first_seen": "asc"}, {"page_url": "asc"}],
        "size": size,
        "track_total_hits": True,
        "_source": ["image_id", "image_url", "page_url", "page_title", "alt_text", "domain", "first_seen",
                    "last_seen", *SOURCE_STATUS],
    }


def sources_request(image_ids: list[str], per_image: int) -> dict[str, Any]:
    """The occurrences of several images in one request: collapsed by image, live pages first, then earliest."""
    return {
        "query": {"terms": {"image_id": image_ids}},
        "collapse": {
            "field": "image_id",
            "inner_hits": {"name": "sources", "size": per_image,
                           "sort": [LIVE_FIRST, {"first_seen": "asc"}, {"page_url": "asc"}],
                           "_source": ["page_url", "page_title", "alt_text", "first_seen", "last_seen",
                                       *SOURCE_STATUS]},
        },
        "size": len(image_ids),
        "_source": False,
    }


def cosine_from_score(score: float) -> float:
    """Elasticsearch reports cosine similarity as (1 + cos) / 2; users read cos."""
    return round(2.0 * score - 1.0, 6)
