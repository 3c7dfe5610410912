"""Source status stage: write what the `check_sources` spider found of each source (occurrence) of a page.

A pure builder (`status_update`) makes each source's partial document: `checked` always; for a page that
answered, its validators, and either `gone_since` (when it first went, kept from an earlier check) with
`gone_reason`, or `gone_since`/`gone_reason` cleared for a source the page shows (again). A page answering
304 keeps its sources' state and only moves `checked`; a page that could not be checked changes nothing.
Updates are partial (`doc`), so a crawl writing `last_seen` meanwhile loses nothing; they go out in bulk with
the index stage's sender (retries with backoff on 429, 5xx and connection errors).

Stats: `imgsearch/check/sources/<live|gone|still_gone|back|not_modified|unchecked>`, and
`imgsearch/check/write_failed/<reason>` for updates that still failed (one WARNING line each; the next check
writes them again).
"""

from __future__ import annotations

import asyncio
import logging
from typing import TYPE_CHECKING, Any

from pipelines.batching import Batcher
from pipelines.indexing import Outcome, bulk_write_options, send_actions, utc_now

if TYPE_CHECKING:
    from elasticsearch import AsyncElasticsearch
    from scrapy.crawler import Crawler
    from scrapy.settings import Settings

logger = logging.getLogger(__name__)


def source_state(item: Any, source: dict[str, Any]) -> str:
    """What a check found of one source: live, gone (now), still_gone, back, not_modified or unchecked."""
    live, was_gone = source.get("live"), bool(source.get("gone_since"))
    if item["outcome"] == "not_modified":
        return "not_modified"
    if live is None:
        return "unchecked"
    if live:
        return "back" if was_gone else "live"
    return "still_gone" if was_gone else "gone"


def status_update(item: Any, source: dict[str, Any], now: str) -> dict[str, Any] | None:
    """The partial document of one source after its page's check; None when nothing is to be written."""
    if item["outcome"] == "not_modified":
        return {"checked": now}
    if source.get("live") is None:
        return None
    doc: dict[str, Any] = {"checked": now, "page_etag": item.get("page_etag"),
                           "page_last_modified": item.get("page_last_modified")}
    if source["live"]:
        doc.update(gone_since=None, gone_reason=None)
    else:
        doc.update(gone_since=source.get("gone_since") or now, gone_reason=item.get("reason") or "image_removed")
    return doc


def status_actions(index: str, item: Any, now: str) -> list[dict[str, Any]]:
    actions = []
    for source in item["sources"]:
        doc = status_update(item, source, now)
        if doc is not None:
            actions.append({"op": "update", "index": index, "id": source["id"], "body": {"doc": doc}})
    return actions


class SourceStatusPipeline:
    """Writes each checked page's verdicts to the sources index, in bulk (see the module docstring)."""

    def __init__(self, *, crawler: Crawler, settings: Settings, index: str, batch_size: int, max_wait: float,
                 max_retries: int, backoff: float) -> None:
        self.crawler = crawler
        self.stats = crawler.stats
        self.settings = settings
        self.sources_index = f"{index}-sources"
        self.batch_size = batch_size
        self.max_wait = max_wait
        self.max_retries = max_retries
        self.backoff = backoff
        self.client: AsyncElasticsearch | None = None
        self._batcher: Batcher[dict[str, Any], Outcome] | None = None

    @classmethod
    def from_crawler(cls, crawler: Crawler) -> SourceStatusPipeline:
        s = crawler.settings
        return cls(crawler=crawler, settings=s, index=s.get("IMGSEARCH_INDEX"), **bulk_write_options(s))

    async def open_spider(self) -> None:
        from index_setup.client import async_es_client

        self.client = async_es_client(self.settings)
        self._batcher = Batcher(self._write, size=self.batch_size, max_wait=self.max_wait)

    async def process_item(self, item: Any) -> Any:
        """Write the page's sources' new state; count each source under what the check found."""
        assert self._batcher is not None, "open_spider was not called"
        for source in item["sources"]:
            self.stats.inc_value(f"imgsearch/check/sources/{source_state(item, source)}")
        actions = status_actions(self.sources_index, item, utc_now())
        outcomes = await asyncio.gather(*(self._batcher.submit(action) for action in actions))
        for action, outcome in zip(actions, outcomes, strict=True):
            if not outcome.ok:
                self.stats.inc_value(f"imgsearch/check/write_failed/{outcome.reason}")
                logger.warning("Could not record the check of source %s on %s (%s, status %s)", action["id"],
                               item["page_url"], outcome.reason, outcome.status)
        return item

    async def _write(self, actions: list[dict[str, Any]]) -> list[Outcome]:
        assert self.client is not None
        return await send_actions(self.client, actions, max_retries=self.max_retries, backoff=self.backoff)

    async def close_spider(self) -> None:
        if self._batcher is not None:
            await self._batcher.close()
        if self.client is not None:
            await self.client.close()
