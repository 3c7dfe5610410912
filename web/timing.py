"""Where a request's time goes: embedding, Elasticsearch, the rest, without touching the query package.

The Searcher takes its embedder and its Elasticsearch client as arguments; `TimedEmbedder` and `TimedClient`
wrap them and add the wall time of each call to the `Timings` of the request being answered (a context
variable, set by `timed` in the worker thread that runs the query). The page and the API send the figures as
a standard `Server-Timing` header (browsers' developer tools show it; bench/serve.py reads it).
"""

from __future__ import annotations

import contextvars
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, TypeVar

T = TypeVar("T")


@dataclass
class Timings:
    """Milliseconds spent, in one request, in the model (including waiting for it) and in Elasticsearch."""

    embed_ms: float = 0.0
    es_ms: float = 0.0
    total_ms: float = 0.0

    def header(self) -> str:
        """The Server-Timing header value; `search` is the whole query (decoding and merging included)."""
        return (f"embed;dur={self.embed_ms:.1f}, es;dur={self.es_ms:.1f}, "
                f"search;dur={self.total_ms:.1f}")


_current: contextvars.ContextVar[Timings | None] = contextvars.ContextVar("imgsearch_timings", default=None)


def timed(func: Callable[..., T], *args: Any, **kwargs: Any) -> tuple[T, Timings]:
    """Run func (blocking, in the calling thread) and return its result with the time it spent where."""
    timings = Timings()
    token = _current.set(timings)
    started = time.perf_counter()
    try:
        return func(*args, **kwargs), timings
    finally:
        timings.total_ms = (time.perf_counter() - started) * 1000
        _current.reset(token)


def _add(field: str, started: float) -> None:
    timings = _current.get()
    if timings is not None:
        setattr(timings, field, getattr(timings, field) + (time.perf_counter() - started) * 1000)


class TimedEmbedder:
    """An Embedder whose calls count as embedding time: embed_images / embed_texts, and load_image_model /
    load_text_model, which the Searcher calls before each query (at once when loaded, but they wait for the
    model's lock while another query is in the model)."""

    def __init__(self, embedder: Any) -> None:
        self.wrapped = embedder

    def __getattr__(self, name: str) -> Any:
        return getattr(self.wrapped, name)

    def load_image_model(self) -> Any:
        started = time.perf_counter()
        try:
            return self.wrapped.load_image_model()
        finally:
            _add("embed_ms", started)

    def load_text_model(self) -> Any:
        started = time.perf_counter()
        try:
            return self.wrapped.load_text_model()
        finally:
            _add("embed_ms", started)

    def embed_images(self, images: Any) -> Any:
        started = time.perf_counter()
        try:
            return self.wrapped.embed_images(images)
        finally:
            _add("embed_ms", started)

    def embed_texts(self, texts: Any) -> Any:
        started = time.perf_counter()
        try:
            return self.wrapped.embed_texts(texts)
        finally:
            _add("embed_ms", started)


class TimedClient:
    """An Elasticsearch client (or one of its namespaces, such as `indices`) whose API calls count as
    Elasticsearch time."""

    def __init__(self, client: Any) -> None:
        self.wrapped = client

    def __getattr__(self, name: str) -> Any:
        value = getattr(self.wrapped, name)
        if name.startswith("_"):
            return value
        if not callable(value):  # a namespace (client.indices) is a client too
            return TimedClient(value) if _is_client(value) else value

        def call(*args: Any, **kwargs: Any) -> Any:
            started = time.perf_counter()
            try:
                result = value(*args, **kwargs)
            finally:
                _add("es_ms", started)
            return TimedClient(result) if _is_client(result) else result  # client.options(...)

        return call


def _is_client(value: Any) -> bool:
    """An Elasticsearch client or one of its namespaces (they all send requests through perform_request)."""
    return hasattr(value, "perform_request") and not isinstance(value, type)
