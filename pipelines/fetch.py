"""Fetch stage: download each image through Scrapy's engine, check and decode it off the reactor, keep it.

Downloading through the engine means robots.txt, retries, AutoThrottle, the HTTP cache and the size cap all
apply to images as they do to pages. Image requests carry `allow_offsite`, so images on other hosts than the
page (CDNs) are fetched although the spider's allowed_domains keep the crawl itself on the site.

Each failure is a counted reason (`imgsearch/fetch/skipped/<reason>` for images we choose not to index,
`imgsearch/fetch/failed/<reason>` for errors), one WARNING line, and a dropped item; the crawl goes on.
"""

from __future__ import annotations

import asyncio
import logging
import threading
from collections import OrderedDict
from dataclasses import dataclass
from io import BytesIO
from pathlib import PurePosixPath
from typing import TYPE_CHECKING, Any
from urllib.parse import unquote, urlsplit

from scrapy import Request, signals
from scrapy.exceptions import DropItem, IgnoreRequest
from scrapy.pipelines.files import FilesPipeline, FSFilesStore
from scrapy.utils.defer import maybe_deferred_to_future
from twisted.internet import defer

from pipelines import imaging

if TYPE_CHECKING:
    from scrapy.crawler import Crawler
    from scrapy.http import Response

logger = logging.getLogger(__name__)

# Reasons for images we decide not to index; every other reason is a failure.
SKIP_REASONS = frozenset({imaging.TOO_SMALL, imaging.SVG, imaging.NOT_IMAGE, imaging.TOO_LARGE,
                          imaging.TOO_MANY_PIXELS, imaging.UNSUPPORTED_FORMAT, "robots_disallowed",
                          "same_url_rejected"})
EXTENSIONS = {"jpeg": "jpg", "tiff": "tif"}


class FetchRejected(Exception):
    def __init__(self, reason: str, detail: str = "") -> None:
        super().__init__(f"{reason}: {detail}" if detail else reason)
        self.reason = reason
        self.detail = detail


@dataclass(frozen=True)
class FetchedImage:
    """What the crawl keeps of an image URL once fetched (no pixels: those go to the embed stage once)."""

    image_id: str
    image_name: str
    relative_path: str
    width: int
    height: int
    format: str
    bytes: int

    def fill(self, item: Any) -> None:
        for name, value in self.__dict__.items():
            item[name] = value


def image_name(url: str, fallback: str) -> str:
    name = PurePosixPath(unquote(urlsplit(url).path)).name
    return name[:200] if name else fallback


def relative_path_for(sha256: str, fmt: str) -> str:
    """Content-addressed path in the store: the same bytes are kept once, whatever their URLs."""
    return f"full/{sha256[:2]}/{sha256}.{EXTENSIONS.get(fmt, fmt)}"


def download_failure_reason(exc: BaseException) -> str:
    """A snake_case reason for a failed download (Scrapy's own exceptions, or Twisted's in older versions)."""
    if isinstance(exc, IgnoreRequest):
        return "robots_disallowed" if "robots.txt" in str(exc) else "ignored"
    by_name = {
        "DownloadTimeoutError": "timeout", "TimeoutError": "timeout", "TCPTimedOutError": "timeout",
        "CannotResolveHostError": "dns_error", "DNSLookupError": "dns_error",
        "DownloadConnectionRefusedError": "connection_refused", "ConnectionRefusedError": "connection_refused",
        "ConnectError": "connection_error", "ConnectionLost": "connection_lost",
        "ResponseDataLossError": "data_loss", "ResponseFailed": "connection_lost",
        "DownloadCancelledError": imaging.TOO_LARGE, "UnsupportedURLSchemeError": "unsupported_scheme",
    }
    for cls in type(exc).__mro__:
        if cls.__name__ in by_name:
            return by_name[cls.__name__]
    return "download_error"


class FetchPipeline:
    """Fetch stage of the crawl (see the module docstring)."""

    def __init__(self, *, crawler: Crawler, store: Any, max_bytes: int, max_pixels: int, min_width: int,
                 min_height: int, seen_urls: int) -> None:
        self.crawler = crawler
        self.stats = crawler.stats
        self.store = store
        self.max_bytes = max_bytes
        self.max_pixels = max_pixels
        self.min_width = min_width
        self.min_height = min_height
        self.seen_urls = seen_urls
        # URL -> outcome of its first fetch, bounded: an image shown on many pages is downloaded once, and a
        # later occurrence waits until the first one has been through the whole pipeline.
        self._recent: OrderedDict[str, asyncio.Future[FetchedImage | FetchRejected]] = OrderedDict()
        self._owners: dict[int, tuple[FetchedImage, asyncio.Future[FetchedImage | FetchRejected]]] = {}

    @classmethod
    def from_crawler(cls, crawler: Crawler) -> FetchPipeline:
        settings = crawler.settings
        pipeline = cls(
            crawler=crawler,
            # Scrapy's own stores (a folder, s3://, gs://, ftp://), configured the way its FilesPipeline does.
            store=FilesPipeline.from_crawler(crawler).store,
            max_bytes=settings.getint("IMGSEARCH_FETCH_MAX_BYTES"),
            max_pixels=settings.getint("IMGSEARCH_FETCH_MAX_PIXELS"),
            min_width=settings.getint("IMGSEARCH_FETCH_MIN_WIDTH"),
            min_height=settings.getint("IMGSEARCH_FETCH_MIN_HEIGHT"),
            seen_urls=settings.getint("IMGSEARCH_FETCH_SEEN_URLS"),
        )
        crawler.signals.connect(pipeline._item_done, signal=signals.item_scraped)
        crawler.signals.connect(pipeline._item_done, signal=signals.item_dropped)
        crawler.signals.connect(pipeline._item_done, signal=signals.item_error)
        return pipeline

    async def process_item(self, item: Any) -> Any:
        """Fill in the image's id, size, format and stored path, and hand its decoded pixels to the next stage."""
        self.stats.inc_value("imgsearch/find/found")
        url = item["image_url"]
        earlier = self._recent.get(url)
        if earlier is not None:
            self._recent.move_to_end(url)
            outcome = await asyncio.shield(earlier)
            if isinstance(outcome, FetchRejected):
                raise self._drop(item, FetchRejected("same_url_rejected", outcome.reason), log=False)
            outcome.fill(item)
            item["known"] = True
            self.stats.inc_value("imgsearch/fetch/reused")
            return item
        future: asyncio.Future[FetchedImage | FetchRejected] = asyncio.get_running_loop().create_future()
        self._remember(url, future)
        try:
            loaded = await self._fetch(url, item.get("page_url"))
        except FetchRejected as rejection:
            future.set_result(rejection)
            raise self._drop(item, rejection) from None
        fetched = FetchedImage(
            image_id=loaded.sha256,
            image_name=image_name(url, f"{loaded.sha256[:16]}.{loaded.format}"),
            relative_path=relative_path_for(loaded.sha256, loaded.format),
            width=loaded.width, height=loaded.height, format=loaded.format, bytes=loaded.bytes,
        )
        fetched.fill(item)
        item["image"] = loaded.image
        item["known"] = False
        # Later occurrences of this URL wait until this item has left the pipeline (see _item_done), so that
        # their writes find the image document in place.
        self._owners[id(item)] = (fetched, future)
        return item

    async def _fetch(self, url: str, page_url: str | None) -> imaging.LoadedImage:
        request = Request(url, headers={"Referer": page_url} if page_url else None, meta={
            "allow_offsite": True,
            "download_maxsize": self.max_bytes,
            "download_warnsize": 0,
            "imgsearch_image": True,
        })
        try:
            response: Response = await self.crawler.engine.download_async(request)
        except Exception as exc:
            raise FetchRejected(download_failure_reason(exc), f"{type(exc).__name__}: {exc}") from exc
        if response.status != 200:
            raise FetchRejected(f"http_{response.status}")
        self.stats.inc_value("imgsearch/fetch/downloaded")
        self.stats.inc_value("imgsearch/fetch/bytes", len(response.body))
        try:
            loaded = await asyncio.to_thread(
                imaging.load_image, response.body, max_bytes=self.max_bytes, max_pixels=self.max_pixels,
                min_width=self.min_width, min_height=self.min_height)
        except imaging.ImageRejected as exc:
            raise FetchRejected(exc.reason, exc.detail) from exc
        await self._persist(relative_path_for(loaded.sha256, loaded.format), response.body)
        return loaded

    async def _persist(self, path: str, body: bytes) -> None:
        try:
            if isinstance(self.store, FSFilesStore):
                await asyncio.to_thread(self._persist_file, path, body)
            else:
                await maybe_deferred_to_future(defer.maybeDeferred(self.store.persist_file, path,
                                                                   BytesIO(body), None))
        except Exception as exc:
            raise FetchRejected("store_error", f"{type(exc).__name__}: {exc}") from exc

    def _persist_file(self, path: str, body: bytes) -> None:
        target = self.store._get_filesystem_path(path)
        if not target.exists():  # content-addressed: the same path always holds the same bytes
            # Unique per writer: the same bytes can arrive under two URLs at once, in two threads.
            tmp = target.with_name(f"{target.name}.{threading.get_ident()}.part")
            target.parent.mkdir(parents=True, exist_ok=True)
            tmp.write_bytes(body)
            tmp.replace(target)

    def _drop(self, item: Any, rejection: FetchRejected, *, log: bool = True) -> DropItem:
        outcome = "skipped" if rejection.reason in SKIP_REASONS else "failed"
        self.stats.inc_value(f"imgsearch/fetch/{outcome}/{rejection.reason}")
        if log:
            logger.warning("Image %s %s (%s) on %s%s", outcome, rejection.reason, item["image_url"],
                           item.get("page_url"), f": {rejection.detail}" if rejection.detail else "")
        return DropItem(f"fetch {outcome}: {rejection.reason}", log_level="DEBUG")

    def _remember(self, url: str, future: asyncio.Future[FetchedImage | FetchRejected]) -> None:
        self._recent[url] = future
        while len(self._recent) > self.seen_urls:
            self._recent.popitem(last=False)

    def _item_done(self, item: Any, **_: Any) -> None:
        # Scraped, dropped or failed in a later stage: the image was fetched either way. A later occurrence
        # whose image document is missing then fails at indexing and is dead-lettered, not lost.
        owner = self._owners.pop(id(item), None)
        if owner is not None:
            fetched, future = owner
            if not future.done():
                future.set_result(fetched)
