"""k-NN lookups by image or by text: which indexed images look like this, and where were they found?

An image query is embedded through the same `Embedder` and `load_image` as the crawl. The image with the
same SHA-256, when indexed, is always the first result, labelled `exact`; the others are `semantic` (CLIP
kNN). Each result carries its sources, earliest first.
"""

from __future__ import annotations

import logging
import time
from typing import Any

import elastic_transport
import elasticsearch

from crawler.config import load_settings
from index_setup.client import ClusterError, describe_error, es_client
from index_setup.indices import IndexMissing
from pipelines import imaging
from pipelines.embedding import Embedder
from query.builders import (
    RESULT_FIELDS,
    cosine_from_score,
    domain_filter,
    exact_query,
    knn_query,
    sources_request,
)
from query.inputs import QueryInputError, read_source

logger = logging.getLogger(__name__)

SOURCES_PER_RESULT = 10


class Searcher:
    """Holds the Elasticsearch client and the models, so repeated queries load nothing twice."""

    def __init__(self, settings: Any = None, *, embedder: Embedder | None = None, client: Any = None) -> None:
        self.settings = settings if settings is not None else load_settings()
        self.embedder = embedder or Embedder.from_settings(self.settings)
        self.client = client or es_client(self.settings)
        self.oversample = self.settings.getfloat("IMGSEARCH_QUERY_OVERSAMPLE")

    # -- public ------------------------------------------------------------------------------------------------
    def search_image(self, source: Any, k: int = 10, num_candidates: int = 100, domain: str | None = None,
                     index: str | None = None, *, allow_private: bool = False) -> dict[str, Any]:
        """Images like `source` (a path, an http(s) URL, bytes or a PIL image), exact copy first."""
        self.embedder.load_image_model()  # before the clock starts: took_ms is the query, not the model load
        started = time.perf_counter()
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
        vector = self.embedder.embed_images([loaded.image])[0]
        query = {"type": "image", "sha256": loaded.sha256, "width": loaded.width, "height": loaded.height,
                 "format": loaded.format, "k": k, "num_candidates": num_candidates, "domain": domain}
        if isinstance(source, str):
            query["source"] = source
        return self._search(vector.tolist(), query, index, k, num_candidates, domain, loaded.sha256, started)

    def search_text(self, text: str, k: int = 10, num_candidates: int = 100, domain: str | None = None,
                    index: str | None = None) -> dict[str, Any]:
        """Images matching a text, in any language of the text model."""
        if not text or not text.strip():
            raise QueryInputError("the text query is empty")
        self.embedder.load_text_model()
        started = time.perf_counter()
        vector = self.embedder.embed_texts([text])[0]
        query = {"type": "text", "text": text, "k": k, "num_candidates": num_candidates, "domain": domain}
        return self._search(vector.tolist(), query, index, k, num_candidates, domain, None, started)

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
            found[hit["fields"]["image_id"][0]] = ([h["_source"] for h in inner["hits"]], inner["total"]["value"])
        return found

    def close(self) -> None:
        self.client.close()

    # -- private -----------------------------------------------------------------------------------------------
    def _alias(self, index: str | None) -> str:
        return index or self.settings.get("IMGSEARCH_INDEX")

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
                domain: str | None, sha256: str | None, started: float) -> dict[str, Any]:
        alias = self._alias(index)
        filter = domain_filter(domain)
        results: list[dict[str, Any]] = []
        if sha256 is not None:
            exact = self._call(self.client.search, index=alias, query=exact_query(sha256, filter), size=1,
                               fields=RESULT_FIELDS, source=False)
            results += [self._result(hit, "exact", 1.0) for hit in exact["hits"]["hits"]]
        knn = self._call(self.client.search, index=alias, size=k, fields=RESULT_FIELDS, source=False,
                         knn=knn_query(vector, k, num_candidates, filter, self.oversample))
        seen = {r["image_id"] for r in results}
        for hit in knn["hits"]["hits"]:
            if hit["_id"] not in seen:
                results.append(self._result(hit, "semantic", cosine_from_score(hit["_score"])))
        results = results[:k]
        sources = self.image_sources([r["image_id"] for r in results], index)
        for result in results:
            result["sources"], result["sources_total"] = sources.get(result["image_id"], ([], 0))
        return {"query": query, "took_ms": round((time.perf_counter() - started) * 1000, 1), "results": results}

    @staticmethod
    def _result(hit: dict[str, Any], match: str, score: float) -> dict[str, Any]:
        fields = hit.get("fields", {})

        def one(name: str) -> Any:
            values = fields.get(name)
            return values[0] if values else None

        return {
            "score": score,
            "match": match,
            "image_id": hit["_id"],
            "image_url": one("image_url"),
            "image_name": one("image_name"),
            "relative_path": one("relative_path"),
            "width": one("width"),
            "height": one("height"),
            "format": one("format"),
            "bytes": one("bytes"),
            "first_seen": one("first_seen"),
            "last_seen": one("last_seen"),
            "domains": fields.get("domains", []),
        }


_default: Searcher | None = None


def default_searcher() -> Searcher:
    global _default
    if _default is None:
        _default = Searcher()
    return _default


def search_image(source: Any, k: int = 10, num_candidates: int = 100, domain: str | None = None,
                 index: str | None = None, *, allow_private: bool = False) -> dict[str, Any]:
    """Images like `source` (a path, an http(s) URL, bytes or a PIL image); see Searcher.search_image."""
    return default_searcher().search_image(source, k, num_candidates, domain, index, allow_private=allow_private)


def search_text(text: str, k: int = 10, num_candidates: int = 100, domain: str | None = None,
                index: str | None = None) -> dict[str, Any]:
    """Images matching `text`; see Searcher.search_text."""
    return default_searcher().search_text(text, k, num_candidates, domain, index)
