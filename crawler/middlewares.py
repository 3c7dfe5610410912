"""Downloader middlewares: wait as long as a site asks (Retry-After) before Scrapy retries a 429 or 503; read a
page whose markup declares an encoding it cannot be in the way browsers do; stop a redirect loop or an endless
redirect chain under a reason of its own (pages count it as find/failed/<reason>, images as fetch/failed/<reason>).
"""

from __future__ import annotations

import asyncio
import email.utils
import logging
import time
from typing import TYPE_CHECKING, Any

from scrapy.downloadermiddlewares import redirect
from scrapy.exceptions import IgnoreRequest
from scrapy.http import TextResponse
from scrapy.utils.httpobj import urlparse_cached
from w3lib.encoding import html_body_declared_encoding, http_content_type_encoding, read_bom, resolve_encoding
from w3lib.html import get_base_url, get_meta_refresh
from w3lib.url import canonicalize_url

if TYPE_CHECKING:
    from scrapy import Request
    from scrapy.crawler import Crawler
    from scrapy.http import Response
    from scrapy.settings import BaseSettings

logger = logging.getLogger(__name__)

RETRY_AFTER_STATUS = frozenset({429, 503})


def retry_after_seconds(value: str | None, now: float | None = None) -> float | None:
    """Seconds to wait from a Retry-After header: a number of seconds or an HTTP date; None when absent or
    unreadable."""
    if not value:
        return None
    value = value.strip()
    if value.isdigit():
        return float(value)
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError, IndexError):
        return None
    if when is None:
        return None
    return max(0.0, when.timestamp() - (time.time() if now is None else now))


class RetryAfterMiddleware:
    """Before RetryMiddleware (closer to the downloader) sees a 429 or 503 with Retry-After, wait that long (capped
    by IMGSEARCH_RETRY_AFTER_MAX) and raise the site's download delay to it, so that its other requests slow down
    too. Pages and images alike: images come through the engine as well."""

    def __init__(self, crawler: Crawler, max_wait: float) -> None:
        self.crawler = crawler
        self.max_wait = max_wait

    @classmethod
    def from_crawler(cls, crawler: Crawler) -> RetryAfterMiddleware:
        return cls(crawler, crawler.settings.getfloat("IMGSEARCH_RETRY_AFTER_MAX"))

    async def process_response(self, request: Request, response: Response) -> Response:
        if response.status not in RETRY_AFTER_STATUS:
            return response
        wait = retry_after_seconds(response.headers.get(b"Retry-After", b"").decode("latin-1"))
        if wait is None:
            return response
        wait = min(wait, self.max_wait)
        stats = self.crawler.stats
        stats.inc_value("imgsearch/politeness/retry_after")
        stats.max_value("imgsearch/politeness/retry_after_max_seconds", wait)
        downloader = self.crawler.engine.downloader
        slot_key = downloader.get_slot_key(request)
        slot = downloader.slots.get(slot_key)
        if slot is not None and slot.delay < wait:
            slot.delay = wait
        logger.info("%s answered %d with Retry-After: waiting %.1f s before retrying %s", slot_key, response.status,
                    wait, request.url)
        await asyncio.sleep(wait)
        return response


# Reasons a redirect is not followed (snake_case, as counted).
REDIRECT_LOOP = "redirect_loop"
TOO_MANY_REDIRECTS = "too_many_redirects"


class RedirectNotFollowed(IgnoreRequest):
    """A redirect the crawl does not follow; `reason` is what the page or image failure is counted as."""

    reason = "redirect_not_followed"


class RedirectLoop(RedirectNotFollowed):
    reason = REDIRECT_LOOP


class TooManyRedirects(RedirectNotFollowed):
    reason = TOO_MANY_REDIRECTS


def redirect_loop(chain: list[str], target: str) -> bool:
    """Whether a redirect to `target` leads back to a URL of its chain (the URLs requested so far, the last one
    answering with the redirect). URLs are compared as Scrapy's dupefilter compares them (canonical, without
    fragment): a page's loop would otherwise end, uncounted, in that filter."""
    return _canonical(target) in {_canonical(url) for url in chain}


def _canonical(url: str) -> str:
    try:
        return canonicalize_url(url)
    except ValueError:  # e.g. an invalid port: compared as it is, without fragment
        return url.split("#", 1)[0]


class _CountedRedirects(redirect.BaseRedirectMiddleware):
    """Scrapy's redirect following, with a loop stopped at its first repeat and each stop raised as a
    RedirectNotFollowed that names its reason (Scrapy raises a bare IgnoreRequest at REDIRECT_MAX_TIMES)."""

    def _redirect(self, redirected: Request, request: Request, reason: Any) -> Request:
        chain = [*request.meta.get("redirect_urls", []), request.url]
        if redirect_loop(chain, redirected.url):
            raise RedirectLoop(f"redirect loop: {' -> '.join(chain)} -> {redirected.url}")
        try:
            return super()._redirect(redirected, request, reason)
        except IgnoreRequest:  # raised only when REDIRECT_MAX_TIMES is reached
            raise TooManyRedirects(f"more than {self.max_redirect_times} redirects from {chain[0]}, "
                                   f"the last to {redirected.url}") from None


class RedirectMiddleware(_CountedRedirects, redirect.RedirectMiddleware):
    """Scrapy's 3xx redirects, loops and endless chains counted (see _CountedRedirects)."""


class MetaRefreshMiddleware(_CountedRedirects, redirect.MetaRefreshMiddleware):
    """Scrapy's <meta http-equiv="refresh"> redirects, loops and endless chains counted (see _CountedRedirects).

    Scrapy resolves the refresh URL and the page's <base href> with their queries encoded in the page's
    encoding, and raises (the page then fails as download_error) when one holds a character that encoding
    cannot encode: a byte the charset leaves undefined, or a character reference. Those are read again with
    UTF-8 queries, as crawler.extract resolves URLs."""

    def __init__(self, settings: BaseSettings) -> None:
        super().__init__(settings)
        self.ignore_tags = settings.getlist("METAREFRESH_IGNORE_TAGS")
        self.max_delay = settings.getint("METAREFRESH_MAXDELAY")

    def process_response(self, request: Request, response: Response) -> Request | Response:
        try:
            return super().process_response(request, response)
        except ValueError:  # UnicodeEncodeError, from w3lib's safe_url_string
            pass
        text = response.text[:4096]  # where Scrapy looks for them
        try:
            interval, url = get_meta_refresh(text, get_base_url(text, response.url, "utf-8"), "utf-8",
                                             self.ignore_tags)
            if not url or interval is None or interval >= self.max_delay:
                return response
            redirected = self._redirect_request_using_get(request, response, url)
        except ValueError:  # a URL nothing can make a request of (an invalid host): the page is read as it is
            return response
        if urlparse_cached(redirected).scheme not in ("http", "https"):
            return response
        return self._redirect(redirected, request, "meta refresh")


# Encodings that are not ASCII-compatible: a page cannot declare them in markup that was read as ASCII.
_NOT_ASCII_COMPATIBLE = ("utf-16", "utf-32")


def markup_encoding_override(content_type: str | None, body: bytes, encoding: str) -> str | None:
    """The encoding to read a page in instead of `encoding` (the one Scrapy chose), or None to keep it.

    A <meta charset> or XML declaration is found by reading the bytes as ASCII, so one naming UTF-16 (or UTF-32)
    cannot be true: the HTML standard's encoding sniffing reads a meta-declared UTF-16 as UTF-8, and so does
    this (UTF-32 too, which browsers do not know at all). A BOM or a Content-Type charset decides before the
    markup does, and is kept whatever it says; so is a UTF-16 that Scrapy inferred from the bytes themselves.
    Needed with w3lib < 2.6 (which Scrapy 2.19 allows); 2.6 sniffs as the standard says and this returns None.
    """
    if not encoding.lower().replace("_", "-").startswith(_NOT_ASCII_COMPATIBLE):
        return None
    if read_bom(body)[0] or http_content_type_encoding(content_type):
        return None
    if html_body_declared_encoding(body) != resolve_encoding(encoding):
        return None
    return "utf-8"


class MarkupEncodingMiddleware:
    """Reads a text response whose markup declares an encoding it cannot be in as UTF-8 (see
    markup_encoding_override), before MetaRefreshMiddleware and the spiders read its text: otherwise its images
    and links are lost, decoded into nonsense."""

    def process_response(self, request: Request, response: Response) -> Response:
        if not isinstance(response, TextResponse):
            return response
        content_type = response.headers.get(b"Content-Type", b"").decode("latin-1")
        encoding = markup_encoding_override(content_type, response.body, response.encoding)
        if encoding is None:
            return response
        logger.debug("%s declares %s in its markup: read as %s", response.url, response.encoding, encoding)
        return response.replace(encoding=encoding)
