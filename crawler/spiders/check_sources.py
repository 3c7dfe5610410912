"""`check_sources`: are the pages where indexed images were seen still there, still showing them?

    scrapy crawl check_sources [-a older_than=DAYS]        (what `imgsearch check-sources` runs)

The sources index is read sorted by page URL (one scroll), and each page is requested once for all its sources,
through Scrapy: robots.txt, AutoThrottle, the download delay, retries and timeouts apply as in a crawl. When every
source of a page carries the validators (ETag / Last-Modified) of the page at its last check, the request is
conditional, and a `304 Not Modified` keeps their state (`imgsearch/check/not_modified`).

A page answering 404 or 410 is gone, and so is each source whose image URL the page no longer shows (the same
extraction as the crawl's: `crawler.extract.extract_images`); any other answer or failure (5xx after retries,
403, timeouts, DNS errors, robots.txt) leaves the sources as they were, counted under its reason. Each page gives
one `SourceCheckItem`; `pipelines.source_status` writes what it found: `checked`, and `gone_since` (kept from
the first check that found it gone) with `gone_reason`, or no `gone_since` again for a source that is back.
Nothing is deleted: gone sources stay, as the image's history.

`older_than` (days) leaves out the sources checked, or seen by a crawl while live, more recently than that;
0 (the default) checks every source.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterator
from typing import Any
from urllib.parse import urlsplit

import scrapy
from scrapy.http import Response, TextResponse
from scrapy.spidermiddlewares.httperror import HttpError
from twisted.python.failure import Failure

from crawler.extract import extract_images
from crawler.items import SourceCheckItem

GONE_STATUSES = (404, 410)
NOT_MODIFIED = 304
# What the spider needs of each source document.
SOURCE_FIELDS = ["image_url", "page_url", "gone_since", "page_etag", "page_last_modified"]
# Source documents per scroll page.
SCROLL_SIZE = 500


def sources_query(older_than_days: float, now: dt.datetime) -> dict[str, Any]:
    """The sources to check: all of them, or (older_than_days > 0) those neither checked nor seen live by a
    crawl within that many days. A gone source seen again by a crawl is checked whatever its last_seen."""
    if older_than_days <= 0:
        return {"match_all": {}}
    cutoff = (now - dt.timedelta(days=older_than_days)).astimezone(dt.timezone.utc).isoformat(timespec="seconds")
    return {"bool": {"must_not": [
        {"range": {"checked": {"gte": cutoff}}},
        {"bool": {"filter": [{"range": {"last_seen": {"gte": cutoff}}}],
                  "must_not": [{"exists": {"field": "gone_since"}}]}},
    ]}}


def conditional_headers(sources: list[dict[str, Any]]) -> dict[str, str]:
    """If-None-Match / If-Modified-Since when every source of the page holds the same validators (all checked
    against the same version of the page); none otherwise, so that a source not yet checked is checked."""
    validators = {(s.get("page_etag"), s.get("page_last_modified")) for s in sources}
    if len(validators) != 1:
        return {}
    etag, last_modified = validators.pop()
    headers = {}
    if etag:
        headers["If-None-Match"] = etag
    if last_modified:
        headers["If-Modified-Since"] = last_modified
    return headers


def shown_images(response: Response) -> set[str]:
    """The image URLs a page shows (an image answered as the page shows itself)."""
    shown = {response.url}
    if isinstance(response, TextResponse):
        content_type = response.headers.get(b"Content-Type", b"").decode("latin-1").lower()
        if not content_type.startswith("image/"):
            shown.update(found.image_url for found in extract_images(response))
    return shown


def is_live(source: dict[str, Any], page_url: str, shown: set[str]) -> bool:
    """Whether a page that answered shows the source's image (a direct image URL is its own page)."""
    return source["image_url"] in shown or source["image_url"] == page_url


def _header(response: Response, name: bytes) -> str | None:
    value = response.headers.get(name)
    return value.decode("latin-1")[:1024] if value else None


class CheckSourcesSpider(scrapy.Spider):
    """scrapy crawl check_sources [-a older_than=DAYS] [-a now=ISO time the selection is made at]"""

    name = "check_sources"

    @classmethod
    def update_settings(cls, settings: Any) -> None:
        """Only the status writer as pipeline: no image is fetched, embedded or indexed (no model loaded). The
        crawl's progress extension reports images, so it is off; `imgsearch check-sources` reports sources."""
        super().update_settings(settings)
        settings.set("ITEM_PIPELINES", {"pipelines.source_status.SourceStatusPipeline": 100}, priority="spider")
        extensions = settings.getdict("EXTENSIONS")
        extensions["crawler.progress.Progress"] = None
        settings.set("EXTENSIONS", extensions, priority="spider")

    def __init__(self, older_than: Any = 0, now: str | None = None, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.older_than = float(older_than or 0)
        if self.older_than < 0:
            raise ValueError(f"older_than must be >= 0 days, got {older_than}")
        self.now = dt.datetime.fromisoformat(now.replace("Z", "+00:00")) if now else dt.datetime.now(dt.timezone.utc)

    async def start(self) -> Any:
        from elasticsearch import helpers

        from index_setup.client import async_es_client
        from index_setup.mappings import sources_alias

        client = async_es_client(self.settings)
        index = sources_alias(self.settings.get("IMGSEARCH_INDEX"))
        query = {"query": sources_query(self.older_than, self.now), "sort": [{"page_url": "asc"}],
                 "_source": SOURCE_FIELDS}
        page_url, group = None, []
        try:
            async for hit in helpers.async_scan(client, index=index, query=query, preserve_order=True,
                                                size=SCROLL_SIZE, scroll="30m"):
                source = {"id": hit["_id"], **hit["_source"]}
                if source.get("page_url") != page_url and group:
                    yield self.check(page_url, group)
                    group = []
                page_url = source.get("page_url")
                group.append(source)
            if group:
                yield self.check(page_url, group)
        finally:
            await client.close()

    def check(self, page_url: str | None, sources: list[dict[str, Any]]) -> scrapy.Request | SourceCheckItem:
        """The request that checks a page for all its sources (an item saying why not, for a bad URL)."""
        self.crawler.stats.inc_value("imgsearch/check/pages")
        if not page_url or urlsplit(page_url).scheme not in ("http", "https"):
            self.crawler.stats.inc_value("imgsearch/check/skipped/not_http")
            return self._unchecked(page_url or "", sources, "skipped", "not_http")
        headers = conditional_headers(sources)
        if headers:
            self.crawler.stats.inc_value("imgsearch/check/conditional")
        return scrapy.Request(page_url, callback=self.parse_page, errback=self.page_failed, headers=headers,
                              dont_filter=True, meta={"sources": sources,
                                                      "handle_httpstatus_list": [NOT_MODIFIED, *GONE_STATUSES]})

    def parse_page(self, response: Response) -> Iterator[SourceCheckItem]:
        """What the page's answer says of each of its sources."""
        sources = response.meta["sources"]
        page_url = response.request.url if response.request is not None else response.url
        if response.status == NOT_MODIFIED:
            self.crawler.stats.inc_value("imgsearch/check/not_modified")
            yield SourceCheckItem(page_url=page_url, outcome="not_modified", reason=None,
                                  sources=[{**s, "live": None} for s in sources])
            return
        if response.status in GONE_STATUSES:
            reason = f"http_{response.status}"
            self.crawler.stats.inc_value(f"imgsearch/check/page_gone/{reason}")
            verdicts = [{**s, "live": False} for s in sources]
            yield SourceCheckItem(page_url=page_url, outcome="gone", reason=reason, sources=verdicts,
                                  page_etag=None, page_last_modified=None)
            return
        shown = shown_images(response)
        verdicts = [{**s, "live": is_live(s, s.get("page_url") or page_url, shown)} for s in sources]
        yield SourceCheckItem(page_url=page_url, outcome="checked", reason=None, sources=verdicts,
                              page_etag=_header(response, b"ETag"),
                              page_last_modified=_header(response, b"Last-Modified"))

    def page_failed(self, failure: Failure) -> Iterator[SourceCheckItem]:
        """A page that could not be checked: its sources are left as they are, the reason counted."""
        from pipelines.fetch import download_failure_reason

        reason = download_failure_reason(failure.value)
        if isinstance(failure.value, HttpError):
            reason = f"http_{failure.value.response.status}"
        outcome = "skipped" if reason == "robots_disallowed" else "failed"
        self.crawler.stats.inc_value(f"imgsearch/check/{outcome}/{reason}")
        self.logger.warning("Source page %s %s (%s): %s", outcome, reason, failure.request.url,
                            failure.getErrorMessage())
        yield self._unchecked(failure.request.url, failure.request.meta["sources"], outcome, reason)

    @staticmethod
    def _unchecked(page_url: str, sources: list[dict[str, Any]], outcome: str, reason: str) -> SourceCheckItem:
        return SourceCheckItem(page_url=page_url, outcome=outcome, reason=reason,
                               sources=[{**s, "live": None} for s in sources])
