"""The JSON API's request and response shapes, for validation and for the OpenAPI page (/docs).

Responses are the query package's own dicts, sent as they are (so `POST /api/search` answers exactly what
`imgsearch search --json` prints); the response models here document them and allow extra keys, as the
query side may add some.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

MAX_NUM_CANDIDATES = 10_000


class SearchRequest(BaseModel):
    """A query: exactly one of `image` (multipart only), `image_url` or `text`, and how to search."""

    model_config = ConfigDict(extra="forbid")

    image_url: str | None = Field(None, description="an http(s) URL of the query image; loopback, private and "
                                                    "link-local addresses are refused")
    text: str | None = Field(None, description="a text, in any language of the text model")
    k: int | None = Field(None, ge=1, description="results wanted (default IMGSEARCH_SERVE_DEFAULT_K, at most "
                                                  "IMGSEARCH_SERVE_MAX_K)")
    num_candidates: int = Field(100, ge=1, le=MAX_NUM_CANDIDATES, description="kNN candidates per shard")
    domain: str | list[str] | None = Field(None, description="only images seen on these domains "
                                                             "(a list, or comma-separated)")
    since: str | None = Field(None, description="only images first seen on or after this ISO date/time")
    until: str | None = Field(None, description="only images first seen on or before this ISO date/time")
    min_width: int | None = Field(None, ge=0, description="only images at least this wide (pixels)")
    min_height: int | None = Field(None, ge=0, description="only images at least this tall (pixels)")
    format: str | list[str] | None = Field(None, description="only images in these formats (jpeg, png, ...)")
    min_score: float | None = Field(None, ge=-1, le=1, description="only results scoring at least this")
    sort: Literal["score", "first_seen"] = Field("score", description="best first, or oldest first_seen first")

    def filters(self) -> dict[str, Any]:
        """The query package's filter keywords."""
        return {"domains": self.domain, "since": self.since or None, "until": self.until or None,
                "min_width": self.min_width, "min_height": self.min_height, "formats": self.format,
                "min_score": self.min_score}


def validation_message(exc: ValidationError) -> str:
    """The first problem, in one line: `k: Input should be greater than or equal to 1`."""
    problems = []
    for error in exc.errors()[:3]:
        where = ".".join(str(part) for part in error.get("loc", ()) if part != "body")
        problems.append(f"{where}: {error.get('msg')}" if where else str(error.get("msg")))
    return "; ".join(problems) or "invalid request"


def search_request_body() -> dict[str, Any]:
    """OpenAPI requestBody of POST /api/search: JSON, or a multipart form with the image file."""
    schema = SearchRequest.model_json_schema()
    form = {**schema, "title": "SearchForm",
            "properties": {"image": {"type": "string", "format": "binary",
                                     "description": "the query image file (its content is sniffed, its name and "
                                                    "type are not trusted)"},
                           **schema["properties"]}}
    return {"required": True, "content": {"application/json": {"schema": schema},
                                          "multipart/form-data": {"schema": form}}}


class Source(BaseModel):
    model_config = ConfigDict(extra="allow")

    page_url: str
    page_title: str | None = None
    alt_text: str | None = None
    first_seen: str | None = None
    last_seen: str | None = None


class ImageInfo(BaseModel):
    model_config = ConfigDict(extra="allow")

    image_id: str = Field(description="SHA-256 of the image's bytes")
    image_url: str | None = Field(None, description="the first URL it was fetched from")
    image_name: str | None = None
    relative_path: str | None = Field(None, description="where the original is kept in FILES_STORE")
    width: int | None = None
    height: int | None = None
    format: str | None = None
    bytes: int | None = None
    first_seen: str | None = None
    last_seen: str | None = None
    domains: list[str] = []


class Result(ImageInfo):
    score: float = Field(description="1.0 exact; (64 - distance_bits) / 64 near; cosine similarity semantic")
    match: Literal["exact", "near", "semantic"]
    distance_bits: int | None = Field(None, description="near results: Hamming distance of the perceptual hashes")
    matched_crop: str | None = Field(None, description="near results: the stored hash that matched")
    sources: list[Source] = Field(description="the pages it was seen on, earliest first (up to 10)")
    sources_total: int


class SearchResponse(BaseModel):
    model_config = ConfigDict(extra="allow")

    query: dict[str, Any]
    took_ms: float
    results: list[Result]
    notes: list[str] | None = None


class ImageDetail(BaseModel):
    image: ImageInfo
    sources: list[Source] = Field(description="every page it was seen on, earliest first (up to "
                                              "IMGSEARCH_SERVE_MAX_SOURCES)")
    sources_total: int


class Health(BaseModel):
    model_config = ConfigDict(extra="allow")

    status: Literal["ok", "unavailable"]
    elasticsearch: dict[str, Any]
    index: dict[str, Any]
    models: dict[str, Any]


class ErrorBody(BaseModel):
    error: str = Field(description="what went wrong, in one sentence")
    kind: str = Field(description="not_an_image, too_large, url_refused, bad_request, index_missing, "
                                  "elasticsearch_unavailable, unauthorized, ...")
