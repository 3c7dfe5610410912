"""k-NN lookups by image or by text: which indexed images look like this, and where were they found?

An image query is decoded by the same `load_image`, hashed by the same `pipelines.phash` and embedded by the
same `Embedder` as the crawl, and runs three channels in one request (msearch): `exact` (the same SHA-256),
`near` (a perceptual hash within IMGSEARCH_QUERY_NEAR_BITS of any stored hash of an image, whole or cropped:
resized, recompressed, grey or cropped copies) and `semantic` (CLIP kNN). Results are merged in that order,
each image once, each labelled with its channel, each with its sources, earliest first.

`find_sources` answers the source finder's question, "where does this image or a copy of it appear, and where
first?": the exact and near channels only (no model needed), and every occurrence of what they find, oldest first.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import elastic_transport
import elasticsearch

from crawler.config import load_settings
from index_setup.client import ClusterError, describe_error, es_client
from index_setup.indices import IndexMissing, ModelMismatch, model_mismatch_message
from index_setup.mappings import sources_alias
from pipelines import imaging, phash
from pipelines.embedding import Embedder
from query.builders import (
    RESULT_FIELDS,
    SORTS,
    Filters,
    all_sources_request,
    cosine_from_score,
    exact_query,
    knn_query,
    near_query,
    sources_request,
)
from query.inputs import QueryInputError, read_source

logger = logging.getLogger(__name__)

SOURCES_PER_RESULT = 10
MAX_SOURCES = 100
# How long a searcher trusts what it read of an index's mapping: a reembed or an upgrade run meanwhile is seen
# within this even when no hit shows it, for one mapping read per index per interval.
FACTS_SECONDS = 5.0


@dataclass(frozen=True)
class IndexFacts:
    """What a search needs to know of the index behind an alias, read from its mapping at `read_at`."""

    indices: frozenset[str]  # the concrete indices behind the alias
    model: str | None
    has_hashes: bool
    read_at: float

    @classmethod
    def from_mappings(cls, mappings: dict[str, Any], read_at: float) -> IndexFacts:
        bodies = [body.get("mappings", {}) for body in mappings.values()]
        models = (body.get("_meta", {}).get("model") for body in bodies)
        return cls(indices=frozenset(mappings), model=next((m for m in models if m), None),
                   has_hashes=all("phash_crops" in body.get("properties", {}) for body in bodies),
                   read_at=read_at)


class Searcher:
    """Holds the Elasticsearch client and the models, so repeated queries load nothing twice.

    What it knows of an index (its model, whether it has crop hashes, the index behind the alias) is read again
    FACTS_SECONDS after it was read, by `clock` (in seconds), and at once when a hit comes from another index.
    """

    def __init__(self, settings: Any = None, *, embedder: Embedder | None = None, client: Any = None,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.settings = settings if settings is not None else load_settings()
        self.embedder = embedder or Embedder.from_settings(self.settings)
        self.client = client or es_client(self.settings)
        self.oversample = self.settings.getfloat("IMGSEARCH_QUERY_OVERSAMPLE")
        self.near_bits = self.settings.getint("IMGSEARCH_QUERY_NEAR_BITS")
        self._clock = clock
        self._facts: dict[str, IndexFacts] = {}

    # -- public ------------------------------------------------------------------------------------------------
    def search_image(self, source: Any, k: int = 10, num_candidates: int = 100, domain: str | None = None,
                     index: str | None = None, *, allow_private: bool = False, sort: str = "score",
                     **filters: Any) -> dict[str, Any]:
        """Images like `source` (a path, an http(s) URL, bytes or a PIL image): the exact copy first, then
        near duplicates (closest first), then semantic neighbours.

        `filters` (see query.builders.Filters): domains, since, until, min_width, min_height, formats,
        min_score. sort="first_seen" orders what matches by age, the oldest first ("who had it first?").
        """
        checked = self._filters(domain, filters, sort)
        self.embedder.load_image_model()  # before the clock starts: took_ms is the query, not the model load
        started = time.perf_counter()
        loaded, query_hash = self._read_image(source, allow_private)
        vector = self.embedder.embed_images([loaded.image])[0]
        query = self._image_query(source, loaded, query_hash)
        query.update({"k": k, "num_candidates": num_candidates, "sort": sort, **checked.echo()})
        return self._search(vector.tolist(), query, index, k, num_candidates, checked, sort, started,
                            sha256=loaded.sha256, hash_hex=query_hash.hex)

    def find_sources(self, source: Any = None, index: str | None = None, limit: int = MAX_SOURCES, *,
                     allow_private: bool = False, image_id: str | None = None) -> dict[str, Any]:
        """Where `source` (or the indexed image `image_id`, its hashes standing for the image) or a copy of it
        (exact or near) appears: its occurrences, oldest first_seen first.

        Returns {"query", "took_ms", "oldest" (the oldest occurrence, or None), "sources" (up to `limit`, each
        with the match, distance_bits and image_id of the image found there), "sources_total", "images"}.
        """
        started = time.perf_counter()
        alias = self._alias(index)
        if image_id is not None:
            query = self._indexed_image_query(alias, image_id)
        else:
            loaded, query_hash = self._read_image(source, allow_private)
            query = self._image_query(source, loaded, query_hash)

        def channels(notes: list[str]) -> list[tuple[str, dict[str, Any]]]:
            found = [("exact", {"query": exact_query(query["sha256"]), "size": 1})]
            if not notes and query.get("phash"):
                found.append(("near", {"knn": near_query(query["phash"], limit, self.near_bits), "size": limit}))
            return found

        notes, found = self._run(alias, channels, vectors=False)
        images = _unique([self._result(hit, match) for match, hits in found for hit in hits])
        sources: list[dict[str, Any]] = []
        total = 0
        if images:
            response = self._call(self.client.search, index=sources_alias(alias),
                                  **all_sources_request([i["image_id"] for i in images], limit))
            by_id = {i["image_id"]: i for i in images}
            total = response["hits"]["total"]["value"]
            for hit in response["hits"]["hits"]:
                found = by_id[hit["_source"]["image_id"]]
                sources.append({**_with_gone(hit["_source"]), "match": found["match"],
                                "distance_bits": found.get("distance_bits")})
        answer = {"query": query, "took_ms": round((time.perf_counter() - started) * 1000, 1),
                  "oldest": sources[0] if sources else None, "sources": sources, "sources_total": total,
                  "images": images}
        if notes:
            answer["notes"] = notes
        return answer

    def search_text(self, text: str, k: int = 10, num_candidates: int = 100, domain: str | None = None,
                    index: str | None = None, *, sort: str = "score", **filters: Any) -> dict[str, Any]:
        """Images matching a text, in any language of the text model; `filters` and `sort` as search_image."""
        if not text or not text.strip():
            raise QueryInputError("the text query is empty")
        checked = self._filters(domain, filters, sort)
        self.embedder.load_text_model()
        started = time.perf_counter()
        vector = self.embedder.embed_texts([text])[0]
        query = {"type": "text", "text": text, "k": k, "num_candidates": num_candidates, "sort": sort,
                 **checked.echo()}
        return self._search(vector.tolist(), query, index, k, num_candidates, checked, sort, started)

    def image_sources(self, image_ids: list[str], index: str | None = None,
                      per_image: int = SOURCES_PER_RESULT) -> dict[str, tuple[list[dict[str, Any]], int]]:
        """image_id -> (its earliest sources, how many it has in all)."""
        if not image_ids:
            return {}
        alias = self._alias(index)
        response = self._call(self.client.search, index=f"{alias}-sources", **sources_request(image_ids, per_image))
        found = {}
        for hit in response["hits"]["hits"]:
            inner = hit["inner_hits"]["sources"]["hits"]
            found[hit["fields"]["image_id"][0]] = ([_with_gone(h["_source"]) for h in inner["hits"]],
                                                   inner["total"]["value"])
        return found

    def close(self) -> None:
        self.client.close()

    # -- private -----------------------------------------------------------------------------------------------
    def _alias(self, index: str | None) -> str:
        return index or self.settings.get("IMGSEARCH_INDEX")

    @staticmethod
    def _filters(domain: str | None, filters: dict[str, Any], sort: str) -> Filters:
        if sort not in SORTS:
            raise QueryInputError(f"sort must be one of {', '.join(SORTS)}, got {sort!r}")
        try:
            return Filters.build(domain=domain, **filters)
        except TypeError as exc:  # an unknown keyword
            raise QueryInputError(f"unknown filter: {exc}") from None
        except ValueError as exc:
            raise QueryInputError(str(exc)) from None

    def _read_image(self, source: Any, allow_private: bool) -> tuple[imaging.LoadedImage, phash.PerceptualHash]:
        data = read_source(source, allow_private=allow_private,
                           max_bytes=self.settings.getint("IMGSEARCH_FETCH_MAX_BYTES"))
        try:
            # The same checks and shrinking as the crawl, but any size: a thumbnail is a fair query.
            loaded = imaging.load_image(data, max_bytes=self.settings.getint("IMGSEARCH_FETCH_MAX_BYTES"),
                                        max_pixels=self.settings.getint("IMGSEARCH_FETCH_MAX_PIXELS"),
                                        min_width=1, min_height=1)
        except imaging.ImageRejected as exc:
            raise QueryInputError(f"the query is not a usable image ({exc.reason}: {exc.detail})"
                                  if exc.detail else f"the query is not a usable image ({exc.reason})") from exc
        return loaded, phash.query_hash(loaded.image)

    @staticmethod
    def _image_query(source: Any, loaded: imaging.LoadedImage, query_hash: phash.PerceptualHash) -> dict[str, Any]:
        query = {"type": "image", "sha256": loaded.sha256, "phash": query_hash.hex, "width": loaded.width,
                 "height": loaded.height, "format": loaded.format}
        if isinstance(source, str):
            query["source"] = source
        return query

    def _indexed_image_query(self, alias: str, image_id: str) -> dict[str, Any]:
        """The query record of an image already in the index: its id, bytes' SHA-256 and whole-image hash."""
        fields = ["sha256", "phash", "width", "height", "format"]
        hits = self._call(self.client.search, index=alias, query={"ids": {"values": [image_id]}}, size=1,
                          fields=fields, source=False)["hits"]["hits"]
        if not hits:
            raise QueryInputError(f"no image {image_id} in the index {alias}")
        found = {name: values[0] for name, values in hits[0].get("fields", {}).items() if values}
        return {"type": "image", "image_id": image_id, "sha256": found.get("sha256", image_id),
                "phash": found.get("phash"), "width": found.get("width"), "height": found.get("height"),
                "format": found.get("format")}

    def _index_facts(self, alias: str, *, again: bool = False) -> IndexFacts:
        """What is known of the index behind `alias`, read from its mapping when unknown, older than
        FACTS_SECONDS, or `again`."""
        facts = self._facts.get(alias)
        now = self._clock()
        if again or facts is None or now - facts.read_at >= FACTS_SECONDS:
            facts = IndexFacts.from_mappings(self._call(self.client.indices.get_mapping, index=alias).body, now)
            self._facts[alias] = facts
        return facts

    def _check_model(self, alias: str, facts: IndexFacts) -> None:
        """Refuse an index whose vectors come from another model than ours."""
        if facts.model and facts.model != self.embedder.image_model_name:
            # Forgotten: the first query after a reembed to our model reads the mapping again and is answered.
            self._facts.pop(alias, None)
            raise ModelMismatch(model_mismatch_message(alias, facts.model, self.embedder.image_model_name))

    @staticmethod
    def _notes(alias: str, facts: IndexFacts) -> list[str]:
        """Why a channel is left out: an index made before perceptual hashes has no near-duplicate channel."""
        if facts.has_hashes:
            return []
        return [f"index {alias} predates perceptual hashes: no near-duplicate matches until `imgsearch index "
                f"upgrade --index {alias}`"]

    def _run(self, alias: str, channels: Callable[[list[str]], list[tuple[str, dict[str, Any]]]], *,
             vectors: bool) -> tuple[list[str], list[tuple[str, list[dict[str, Any]]]]]:
        """(notes, [(match, hits)]) of the searches `channels(notes)` gives, in one round trip; `vectors`: they
        send vectors of our model. A hit from an index not behind the alias when its facts were read means a
        reembed or an upgrade has moved the alias since: the facts are read again and the searches made again."""
        for again in (False, True):
            facts = self._index_facts(alias, again=again)
            if vectors:
                self._check_model(alias, facts)
            notes = self._notes(alias, facts)
            planned = channels(notes)
            searches = [{**body, "fields": RESULT_FIELDS, "_source": False} for _, body in planned]
            found = [(match, response["hits"]["hits"])
                     for (match, _), response in zip(planned, self._msearch(alias, searches), strict=True)]
            if all(hit["_index"] in facts.indices for _, hits in found for hit in hits):
                break
        return notes, found

    def _msearch(self, alias: str, searches: list[dict[str, Any]]) -> list[dict[str, Any]]:
        """Several searches of one index in one round trip; an error in any is raised as the one call would."""
        body: list[dict[str, Any]] = []
        for search in searches:
            body += [{}, search]
        responses = self._call(self.client.msearch, index=alias, searches=body)["responses"]
        for response in responses:
            error = response.get("error")
            if not error:
                continue
            self._facts.pop(alias, None)  # a refusal may come of what was read of an index since replaced
            kind, reason = (error.get("type"), error.get("reason")) if isinstance(error, dict) else (None, error)
            if kind == "index_not_found_exception":
                raise IndexMissing(f"index {alias} does not exist: create it with `imgsearch index create "
                                   f"--index {alias}` and crawl into it")
            detail = json_reason(error)
            if "dimension" in detail.lower() or "dims" in detail.lower():
                self._check_model(alias, self._index_facts(alias))  # re-embedded with another model since?
                raise ClusterError(f"the index holds vectors of other dimensions than the model gives "
                                   f"({self.embedder.image_model_name}): {reason}")
            raise ClusterError(f"Elasticsearch refused the search ({response.get('status')} {kind}): {detail}")
        return responses

    def _call(self, method: Any, **kwargs: Any) -> Any:
        try:
            return method(**kwargs)
        except elasticsearch.BadRequestError as exc:
            if "dimension" in str(exc).lower() or "dims" in str(exc).lower():
                raise ClusterError(f"the index holds vectors of other dimensions than the model gives "
                                   f"({self.embedder.image_model_name}): {exc.message}") from exc
            raise ClusterError(describe_error(exc, self.settings)) from exc
        except elasticsearch.NotFoundError as exc:
            if exc.error == "index_not_found_exception":
                missing = kwargs.get("index", "")
                raise IndexMissing(f"index {missing} does not exist: create it with `imgsearch index create "
                                   f"--index {str(missing).removesuffix('-sources')}` and crawl into it") from exc
            raise ClusterError(describe_error(exc, self.settings)) from exc
        except (elastic_transport.TransportError, elasticsearch.ApiError) as exc:
            raise ClusterError(describe_error(exc, self.settings)) from exc

    def _search(self, vector: list[float], query: dict[str, Any], index: str | None, k: int, num_candidates: int,
                filters: Filters, sort: str, started: float, *, sha256: str | None = None,
                hash_hex: str | None = None) -> dict[str, Any]:
        alias = self._alias(index)
        filter = filters.clause()
        exact = [("exact", {"query": exact_query(sha256, filter), "size": 1})] if sha256 is not None else []
        near_bits = self.near_bits
        if filters.min_score is not None:  # a near duplicate scores (64 - bits) / 64
            near_bits = min(near_bits, int(phash.HASH_BITS * (1.0 - filters.min_score)))
        semantic = ("semantic", {"knn": knn_query(vector, k, num_candidates, filter, self.oversample,
                                                  filters.min_score), "size": k})

        def channels(notes: list[str]) -> list[tuple[str, dict[str, Any]]]:
            planned = list(exact)
            if hash_hex is not None and near_bits >= 0 and not notes:
                planned.append(("near", {"knn": near_query(hash_hex, k, near_bits, filter), "size": k}))
            return [*planned, semantic]

        notes, found = self._run(alias, channels, vectors=True)
        if hash_hex is None:
            notes = []  # a text query has no near-duplicate channel to miss
        results = _unique([self._result(hit, match) for match, hits in found for hit in hits])[:k]
        if filters.min_score is not None:  # the rescored cosine can fall just under the threshold kNN applied
            results = [r for r in results if r["score"] >= filters.min_score]
        if sort == "first_seen":
            results.sort(key=lambda r: r.get("first_seen") or "")
        sources = self.image_sources([r["image_id"] for r in results], index)
        for result in results:
            result["sources"], result["sources_total"] = sources.get(result["image_id"], ([], 0))
        answer = {"query": query, "took_ms": round((time.perf_counter() - started) * 1000, 1), "results": results}
        if notes:
            answer["notes"] = notes
        return answer

    @staticmethod
    def _result(hit: dict[str, Any], match: str) -> dict[str, Any]:
        """One result; `score` is 1.0 for an exact copy, (64 - distance_bits) / 64 for a near duplicate, the
        cosine similarity of the CLIP vectors for a semantic neighbour."""
        fields = hit.get("fields", {})

        def one(name: str) -> Any:
            values = fields.get(name)
            return values[0] if values else None

        extra: dict[str, Any] = {}
        if match == "exact":
            score = 1.0
        elif match == "near":
            score = round(hit["_score"], 6)
            extra["distance_bits"] = phash.hamming_from_score(hit["_score"])
            extra["matched_crop"] = _matched_crop(hit)
        else:
            score = cosine_from_score(hit["_score"])
        return {
            "score": score,
            "match": match,
            **extra,
            "image_id": hit["_id"],
            "image_url": one("image_url"),
            "image_name": one("image_name"),
            "relative_path": one("relative_path"),
            "thumbnail_path": one("thumbnail_path"),
            "width": one("width"),
            "height": one("height"),
            "format": one("format"),
            "bytes": one("bytes"),
            "first_seen": one("first_seen"),
            "last_seen": one("last_seen"),
            "domains": fields.get("domains", []),
        }


def _with_gone(source: dict[str, Any]) -> dict[str, Any]:
    """`gone`: whether check-sources found the page no longer shows the image (a page back again has
    gone_since null)."""
    return {**source, "gone": bool(source.get("gone_since"))}


def _unique(results: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Each image once, where it first appears (the channels come best first: exact, near, semantic)."""
    seen: set[str] = set()
    unique = []
    for result in results:
        if result["image_id"] not in seen:
            seen.add(result["image_id"])
            unique.append(result)
    return unique


def _matched_crop(hit: dict[str, Any]) -> str | None:
    """Which stored hash (the whole image, or which crop) the near-duplicate channel matched."""
    try:
        inner = hit["inner_hits"]["phash_crops"]["hits"]["hits"][0]
        return inner["fields"]["phash_crops"][0]["crop"][0]
    except (KeyError, IndexError, TypeError):
        return None


def json_reason(error: Any) -> str:
    if isinstance(error, dict):
        causes = error.get("root_cause") or []
        reason = error.get("reason") or ""
        if causes and isinstance(causes[0], dict) and causes[0].get("reason") not in (None, reason):
            reason = f"{reason} ({causes[0]['reason']})"
        return str(reason)[:500]
    return str(error)[:500]


_default: Searcher | None = None


def default_searcher() -> Searcher:
    global _default
    if _default is None:
        _default = Searcher()
    return _default


def search_image(source: Any, k: int = 10, num_candidates: int = 100, domain: str | None = None,
                 index: str | None = None, *, allow_private: bool = False, sort: str = "score",
                 **filters: Any) -> dict[str, Any]:
    """Images like `source` (a path, an http(s) URL, bytes or a PIL image); see Searcher.search_image."""
    return default_searcher().search_image(source, k, num_candidates, domain, index, allow_private=allow_private,
                                           sort=sort, **filters)


def find_sources(source: Any, index: str | None = None, limit: int = MAX_SOURCES, *,
                 allow_private: bool = False) -> dict[str, Any]:
    """Where `source` or a copy of it appears, oldest first; see Searcher.find_sources."""
    return default_searcher().find_sources(source, index, limit, allow_private=allow_private)


def search_text(text: str, k: int = 10, num_candidates: int = 100, domain: str | None = None,
                index: str | None = None, *, sort: str = "score", **filters: Any) -> dict[str, Any]:
    """Images matching `text`; see Searcher.search_text."""
    return default_searcher().search_text(text, k, num_candidates, domain, index, sort=sort, **filters)
