"""Every failure a request can meet, as an HTTP status, a stable `kind` and one plain sentence.

The query package raises its own exceptions (QueryInputError, IndexMissing, ClusterError, ModelUnavailable);
`classify` maps them, so the page and the API say the same thing the CLI says, never a stack trace, and never a
credential (the messages come from index_setup.client.describe_error, which redacts them, and anything
unexpected is redacted again before it is logged).
"""

from __future__ import annotations

import logging
import traceback
from dataclasses import dataclass
from typing import Any

import elastic_transport
from starlette.exceptions import HTTPException

from index_setup.client import ClusterError, redact
from index_setup.indices import IndexConflict, IndexMissing
from pipelines import imaging
from pipelines.embedding import ModelUnavailable
from query.address_guard import AddressRefused
from query.inputs import QueryInputError

logger = logging.getLogger(__name__)

# kind -> the heading the page shows above the message.
HEADINGS = {
    "bad_request": "That request cannot be answered",
    "not_an_image": "That is not an image we can read",
    "too_large": "That image is too large",
    "url_refused": "That URL is refused",
    "bad_url": "That URL cannot be used",
    "url_fetch_failed": "That URL could not be fetched",
    "not_found": "Not found",
    "unauthorized": "A token is required",
    "index_missing": "The index does not exist",
    "index_conflict": "The index cannot be searched with this configuration",
    "elasticsearch_unavailable": "Elasticsearch is unreachable",
    "elasticsearch_error": "Elasticsearch refused the search",
    "model_unavailable": "The model cannot be used",
    "internal_error": "Something went wrong",
}

# kind -> what the page adds under the message, where there is something to do about it.
HINTS = {
    "not_an_image": "Give a JPEG, PNG, GIF, WebP, BMP, TIFF, AVIF or HEIC file; its content decides, not its name.",
    "url_refused": "Only images on public addresses are fetched; download it and upload the file instead.",
    "too_large": "Upload a smaller copy: a thumbnail finds its original too.",
}
STATUS_KINDS = {401: "unauthorized", 404: "not_found", 413: "too_large"}


@dataclass
class ServeError(Exception):
    """A failure to report: `status` for HTTP, `kind` for programs, `message` for people."""

    status: int
    kind: str
    message: str

    def __str__(self) -> str:
        return self.message

    @property
    def heading(self) -> str:
        return HEADINGS.get(self.kind, HEADINGS["internal_error"])

    @property
    def hint(self) -> str | None:
        return HINTS.get(self.kind)

    def body(self) -> dict[str, Any]:
        """The JSON error body of the API."""
        return {"error": self.message, "kind": self.kind}


def _causes(exc: BaseException) -> list[BaseException]:
    chain, seen = [], set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        chain.append(exc)
        exc = exc.__cause__ or (None if exc.__suppress_context__ else exc.__context__)
    return chain


def classify(exc: BaseException, settings: Any) -> ServeError:
    """The ServeError for an exception raised while answering; unexpected ones are logged (redacted)."""
    if isinstance(exc, ServeError):
        return exc
    if isinstance(exc, HTTPException):  # the framework's own: 404, 405, 413 from the upload cap, a bad form
        return ServeError(exc.status_code, STATUS_KINDS.get(exc.status_code, "bad_request"), str(exc.detail))
    message = redact(str(exc), settings)
    if isinstance(exc, QueryInputError):
        return _input_error(exc, message)
    if isinstance(exc, IndexMissing):
        return ServeError(503, "index_missing", message)
    if isinstance(exc, IndexConflict):  # another model's vectors, or an index that needs an upgrade
        return ServeError(503, "index_conflict", message)
    if isinstance(exc, ModelUnavailable):
        return ServeError(503, "model_unavailable", message)
    if isinstance(exc, ClusterError):
        down = (elastic_transport.ConnectionError, elastic_transport.ConnectionTimeout)
        if any(isinstance(cause, down) for cause in _causes(exc)):
            return ServeError(503, "elasticsearch_unavailable", message)
        return ServeError(502, "elasticsearch_error", message)
    logger.error("Unexpected %s while answering a request: %s", type(exc).__name__, message)
    if logger.isEnabledFor(logging.DEBUG):
        logger.debug("%s", redact("".join(traceback.format_exception(exc)), settings))
    return ServeError(500, "internal_error", "an unexpected error occurred; the server log has its type")


def _input_error(exc: QueryInputError, message: str) -> ServeError:
    causes = _causes(exc)
    for cause in causes:
        if isinstance(cause, imaging.ImageRejected):
            if cause.reason in (imaging.TOO_LARGE, imaging.TOO_MANY_PIXELS):
                return ServeError(413, "too_large", message)
            return ServeError(415, "not_an_image", message)
        if isinstance(cause, AddressRefused):
            return ServeError(400, "url_refused", message)
    if any(isinstance(cause, ValueError) for cause in causes[1:]):  # check_url: not http(s), cannot resolve
        return ServeError(400, "bad_url", message)
    if "too large" in message:  # fetch_url's byte cap, or a declared Content-Length over it
        return ServeError(413, "too_large", message)
    if "is not an image" in message:  # fetch_url: a Content-Type that is no image
        return ServeError(415, "not_an_image", message)
    if message.startswith("cannot fetch"):
        return ServeError(400, "url_fetch_failed", message)
    return ServeError(400, "bad_request", message)
