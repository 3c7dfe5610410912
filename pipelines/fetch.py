"""Fetch stage: download each image through Scrapy's engine, check and decode it off the reactor, keep it.

Downloading through the engine means robots.txt, retries, AutoThrottle, the HTTP cache and the size cap all
apply to images as they do to pages. Image requests carry `allow_offsite`, so images on other hosts than the
page (CDNs) are fetched although the spider's allowed_domains keep the crawl itself on the site.

Re-crawls are cheap: the image URLs of each page are looked up in batches in the urls index (one mget for the
URLs, one for their images). A URL fetched within IMGSEARCH_REFRESH_DAYS whose image is indexed is not
downloaded again (`imgsearch/fetch/skipped_known`): the item goes on to record the occurrence. An older one is
asked for with its ETag / Last-Modified, and a 304 answer (`imgsearch/fetch/not_modified`) counts as fresh.

Each failure is a counted reason (`imgsearch/fetch/skipped/<reason>` for images we choose not to index,
`imgsearch/fetch/failed/<reason>` for errors), one WARNING line, and a dropped item; the crawl goes on.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import logging
import threading
from collections import OrderedDict
from dataclasses import dataclass, replace
from io import BytesIO
from pathlib import Path, PurePosixPath
from typing import TYPE_CHECKING, Any
from urllib.parse import unquote, urlsplit

from PIL import Image
from scrapy import Request, signals
from scrapy.exceptions import DropItem, IgnoreRequest
from scrapy.pipelines.files import FilesPipeline, FSFilesStore
from scrapy.utils.defer import maybe_deferred_to_future
from twisted.internet import defer

from crawler.extract import NO_IMAGE_INDEX, blocking_directive, noai_exempt
from crawler.middlewares import RedirectNotFollowed
from pipelines import imaging, phash
from pipelines.batching import FETCH_STAGE, Batcher, Occupancy, StageCpu
from pipelines.indexing import url_id
from pipelines.store import local_store

if TYPE_CHECKING:
    from scrapy.crawler import Crawler
    from scrapy.http import Response

logger = logging.getLogger(__name__)

# Reasons for images we decide not to index; every other reason is a failure.
SKIP_REASONS = frozenset({imaging.TOO_SMALL, imaging.SVG, imaging.NOT_IMAGE, imaging.TOO_LARGE,
                          imaging.TOO_MANY_PIXELS, imaging.UNSUPPORTED_FORMAT, "robots_disallowed",
                          "same_url_rejected", *NO_IMAGE_INDEX})
EXTENSIONS = {"jpeg": "jpg", "tiff": "tif"}
THUMBNAIL_SIDE = 256


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
    thumbnail_path: str | None
    width: int
    height: int
    format: str
    bytes: int

    def fill(self, item: Any) -> None:
        for name, value in self.__dict__.items():
            item[name] = value


@dataclass(frozen=True)
class KnownURL:
    """An image URL the index already holds: its image, when it was last fetched, its HTTP validators."""

    image: FetchedImage
    fetched: dt.datetime
    etag: str | None
    last_modified: str | None

    def fresh(self, now: dt.datetime, refresh_days: float) -> bool:
        return now - self.fetched < dt.timedelta(days=refresh_days)

    def conditional_headers(self) -> dict[str, str]:
        headers = {}
        if self.etag:
            headers["If-None-Match"] = self.etag
        if self.last_modified:
            headers["If-Modified-Since"] = self.last_modified
        return headers


def parse_time(value: str) -> dt.datetime:
    return dt.datetime.fromisoformat(value.replace("Z", "+00:00"))


async def known_urls(client: Any, images_index: str, urls_index: str, urls: list[str]) -> dict[str, KnownURL]:
    """The URLs among `urls` that the urls index holds and whose image document exists."""
    response = await client.mget(index=urls_index, ids=[url_id(u) for u in urls])
    found = {doc["_source"]["image_url"]: doc["_source"] for doc in response["docs"] if doc.get("found")}
    if not found:
        return {}
    ids = sorted({doc["image_id"] for doc in found.values()})
    images = await client.mget(index=images_index, ids=ids,
                               source=["relative_path", "thumbnail_path", "width", "height", "format", "bytes"])
    stored = {doc["_id"]: doc["_source"] for doc in images["docs"] if doc.get("found")}
    known = {}
    for url, doc in found.items():
        image = stored.get(doc["image_id"])
        if image is None:
            continue  # the image document is gone (index deleted or restored from elsewhere): fetch again
        known[url] = KnownURL(
            image=FetchedImage(image_id=doc["image_id"], image_name=image_name(url, doc["image_id"][:16]),
                               relative_path=image["relative_path"],
                               thumbnail_path=image.get("thumbnail_path"), width=image["width"],
                               height=image["height"], format=image["format"], bytes=image["bytes"]),
            fetched=parse_time(doc["fetched"]), etag=doc.get("etag"), last_modified=doc.get("last_modified"))
    return known


def _header(response: Response, name: bytes) -> str | None:
    value = response.headers.get(name)
    return value.decode("latin-1")[:1024] if value else None


def image_name(url: str, fallback: str) -> str:
    name = PurePosixPath(unquote(urlsplit(url).path)).name
    return name[:200] if name else fallback


def relative_path_for(sha256: str, fmt: str) -> str:
    """Content-addressed path in the store: the same bytes are kept once, whatever their URLs."""
    return f"full/{sha256[:2]}/{sha256}.{EXTENSIONS.get(fmt, fmt)}"


def thumbnail_path_for(sha256: str) -> str:
    return f"thumbs/{sha256[:2]}/{sha256}.jpg"


def thumbnail(image: Image.Image) -> bytes:
    """A small JPEG for result pages: browsers show it whatever the original's format (HEIC, TIFF, …), and the
    original stays byte for byte as it was downloaded."""
    small = image.copy()
    # Bilinear: Pillow widens the filter by the shrink factor, so it still averages every pixel it drops, for
    # 0.7 ms at the fetch stage's usual 320x240 where bicubic takes 1.2 and Lanczos 1.6.
    small.thumbnail((THUMBNAIL_SIDE, THUMBNAIL_SIDE), Image.Resampling.BILINEAR)
    buffer = BytesIO()
    small.save(buffer, format="JPEG", quality=85)
    return buffer.getvalue()


def download_failure_reason(exc: BaseException) -> str:
    """A snake_case reason for a failed download (Scrapy's own exceptions, or Twisted's in older versions)."""
    if isinstance(exc, RedirectNotFollowed):
        return exc.reason
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


def _files_store(crawler: Crawler) -> Any:
    """Scrapy's own store for FILES_STORE: a folder (as local_store reads it), s3://, gs://, ftp:// (configured
    the way its FilesPipeline does)."""
    root = local_store(crawler.settings.get("FILES_STORE"))
    return FSFilesStore(str(root)) if root is not None else FilesPipeline.from_crawler(crawler).store


class StoredHashes:
    """Perceptual hashes of already indexed images, computed from the originals the crawl kept in a local
    FILES_STORE: `imgsearch index upgrade` fills in an older index's image documents with it."""

    def __init__(self, base: Path, *, max_pixels: int) -> None:
        self.base = base
        self.max_pixels = max_pixels
        self.missing = 0

    def __call__(self, doc: dict[str, Any]) -> dict[str, Any]:
        path = self.base / (doc.get("relative_path") or "")
        try:
            loaded = imaging.load_image(path.read_bytes(), max_bytes=1 << 40, max_pixels=self.max_pixels,
                                        min_width=1, min_height=1)
        except (OSError, imaging.ImageRejected):
            self.missing += 1
            return doc
        return {**doc, **phash.document_fields(phash.image_hashes(loaded.image))}


class FetchPipeline:
    """Fetch stage of the crawl (see the module docstring)."""

    def __init__(self, *, crawler: Crawler, store: Any, max_bytes: int, max_pixels: int, min_width: int,
                 min_height: int, seen_urls: int, refresh_days: float, index: str | None,
                 max_in_flight: int = 400) -> None:
        self.crawler = crawler
        self.stats = crawler.stats
        self.store = store
        self._local_store = isinstance(store, FSFilesStore)  # written from the thread pool, not through Twisted
        self.max_bytes = max_bytes
        self.max_pixels = max_pixels
        self.min_width = min_width
        self.min_height = min_height
        self.seen_urls = seen_urls
        self.refresh_days = refresh_days
        self.index = index  # None: no lookups of known URLs (every image is downloaded)
        self.client: Any = None
        self._lookups: Batcher[str, KnownURL | None] | None = None
        # URL -> outcome of its first fetch, bounded: an image shown on many pages is downloaded once, and a
        # later occurrence waits until the first one has been through the whole pipeline.
        self._recent: OrderedDict[str, asyncio.Future[FetchedImage | FetchRejected]] = OrderedDict()
        self._owners: dict[int, tuple[FetchedImage, asyncio.Future[FetchedImage | FetchRejected]]] = {}
        # Items between here and the end of the pipeline, bounded: when embedding or Elasticsearch is slower
        # than downloading (or stalled), new items wait here, holding no image, and Scrapy stops reading pages,
        # instead of decoded images and vectors piling up in memory.
        self._in_flight = asyncio.Semaphore(max(1, max_in_flight))
        self._holding: set[int] = set()
        # Items being looked up, downloaded or decoded: the embed and index stages send partial batches at once
        # when there are none (see pipelines/batching.py).
        self.occupancy = Occupancy.of(crawler)
        self.cpu = StageCpu(self.stats, "fetch")

    @classmethod
    def from_crawler(cls, crawler: Crawler) -> FetchPipeline:
        settings = crawler.settings
        pipeline = cls(
            crawler=crawler,
            store=_files_store(crawler),
            max_bytes=settings.getint("IMGSEARCH_FETCH_MAX_BYTES"),
            max_pixels=settings.getint("IMGSEARCH_FETCH_MAX_PIXELS"),
            min_width=settings.getint("IMGSEARCH_FETCH_MIN_WIDTH"),
            min_height=settings.getint("IMGSEARCH_FETCH_MIN_HEIGHT"),
            seen_urls=settings.getint("IMGSEARCH_FETCH_SEEN_URLS"),
            max_in_flight=settings.getint("IMGSEARCH_FETCH_MAX_IN_FLIGHT"),
            refresh_days=settings.getfloat("IMGSEARCH_REFRESH_DAYS"),
            index=settings.get("IMGSEARCH_INDEX"),
        )
        crawler.signals.connect(pipeline._item_done, signal=signals.item_scraped)
        crawler.signals.connect(pipeline._item_done, signal=signals.item_dropped)
        crawler.signals.connect(pipeline._item_done, signal=signals.item_error)
        return pipeline

    async def open_spider(self) -> None:
        if self.index is None:
            return
        from index_setup.client import async_es_client
        from index_setup.mappings import urls_alias

        self.client = async_es_client(self.crawler.settings)
        urls_index = urls_alias(self.index)

        async def lookup(urls: list[str]) -> list[KnownURL | None]:
            try:
                known = await known_urls(self.client, self.index, urls_index, urls)
            except Exception as exc:  # a missing index, an unreachable cluster: download, as on a first crawl
                self.stats.inc_value("imgsearch/fetch/lookup_failed", len(urls))
                logger.warning("Could not look up %d image URLs in %s (%s: %s); downloading them", len(urls),
                               urls_index, type(exc).__name__, str(exc)[:200])
                return [None] * len(urls)
            return [known.get(url) for url in urls]

        self._lookups = Batcher(lookup, size=100, max_wait=0.05, max_in_flight=4)

    async def close_spider(self) -> None:
        self.cpu.report()
        if self._lookups is not None:
            await self._lookups.close()
        if self.client is not None:
            await self.client.close()

    async def process_item(self, item: Any) -> Any:
        """Fill in the image's id, size, format and stored path, and hand its decoded pixels to the next stage;
        for an image URL already indexed and fresh, fill in what the index holds and skip the download."""
        self.stats.inc_value("imgsearch/find/found")
        await self._in_flight.acquire()
        self._holding.add(id(item))
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
        with self.occupancy.inside(FETCH_STAGE):
            known = await self._lookups.submit(url) if self._lookups is not None else None
            if known is not None and known.fresh(dt.datetime.now(dt.timezone.utc), self.refresh_days):
                self.stats.inc_value("imgsearch/fetch/skipped_known")
                return self._known(item, known.image, future)
            try:
                fetched = await self._fetch(item, known)
            except FetchRejected as rejection:
                future.set_result(rejection)
                raise self._drop(item, rejection) from None
            except BaseException as exc:
                # Never leave later occurrences of this URL waiting on a future nobody will resolve.
                future.set_result(FetchRejected("internal_error", f"{type(exc).__name__}: {exc}"))
                raise
        if fetched is None:  # 304 Not Modified
            self.stats.inc_value("imgsearch/fetch/not_modified")
            item["url_checked"] = True
            item["http_etag"], item["http_last_modified"] = known.etag, known.last_modified
            return self._known(item, known.image, future)
        # Later occurrences of this URL wait until this item has left the pipeline (see _item_done), so that
        # their writes find the image document in place.
        self._owners[id(item)] = (fetched, future)
        return item

    def _known(self, item: Any, image: FetchedImage, future: asyncio.Future[FetchedImage | FetchRejected]) -> Any:
        replace(image, image_name=image_name(item["image_url"], image.image_name)).fill(item)
        item["known"] = True
        future.set_result(image)
        return item

    async def _fetch(self, item: Any, known: KnownURL | None) -> FetchedImage | None:
        """Download, check, decode, hash and keep the image; None when a conditional request says it is unchanged.
        The decoded pixels go into the item for the embed stage."""
        url, page_url = item["image_url"], item.get("page_url")
        headers = {"Referer": page_url} if page_url else {}
        if known is not None:
            headers.update(known.conditional_headers())
        response = await self._download(url, headers, expect_304=bool(known and known.conditional_headers()))
        if response.status == 304:
            return None
        directive = blocking_directive((v.decode("latin-1") for v in response.headers.getlist(b"X-Robots-Tag")),
                                       self.crawler.settings.get("BOT_NAME"))
        if directive and not (noai_exempt(self.crawler.settings, url)
                              or (page_url and noai_exempt(self.crawler.settings, page_url))):
            raise FetchRejected(directive, "X-Robots-Tag")
        self.stats.inc_value("imgsearch/fetch/downloaded")
        self.stats.inc_value("imgsearch/fetch/bytes", len(response.body))
        try:
            loaded, hashes, thumb = await asyncio.to_thread(self.cpu.run, self._prepare, response.body)
        except imaging.ImageRejected as exc:
            raise FetchRejected(exc.reason, exc.detail) from exc
        if not self._local_store:  # a local store was written by _prepare, in the same job
            await self._persist(relative_path_for(loaded.sha256, loaded.format), response.body)
            await self._persist(thumbnail_path_for(loaded.sha256), thumb)
        item.update(phash.document_fields(hashes))
        item["http_etag"] = _header(response, b"ETag")
        item["http_last_modified"] = _header(response, b"Last-Modified")
        item["url_checked"] = True
        fetched = FetchedImage(
            image_id=loaded.sha256,
            image_name=image_name(url, f"{loaded.sha256[:16]}.{loaded.format}"),
            relative_path=relative_path_for(loaded.sha256, loaded.format),
            thumbnail_path=thumbnail_path_for(loaded.sha256),
            width=loaded.width, height=loaded.height, format=loaded.format, bytes=loaded.bytes,
        )
        fetched.fill(item)
        item["image"] = loaded.image
        item["known"] = False
        return fetched

    async def _download(self, url: str, headers: dict[str, str], *, expect_304: bool) -> Response:
        request = Request(url, headers=headers, meta={
            "allow_offsite": True,
            "download_maxsize": self.max_bytes,
            "download_warnsize": 0,
            "imgsearch_image": True,
        })
        try:
            response: Response = await self.crawler.engine.download_async(request)
        except Exception as exc:
            raise FetchRejected(download_failure_reason(exc), f"{type(exc).__name__}: {exc}") from exc
        if response.status != 200 and not (expect_304 and response.status == 304):
            raise FetchRejected(f"http_{response.status}")
        return response

    def _decode_and_hash(self, body: bytes) -> tuple[imaging.LoadedImage, list[phash.PerceptualHash], bytes]:
        loaded = imaging.load_image(body, max_bytes=self.max_bytes, max_pixels=self.max_pixels,
                                    min_width=self.min_width, min_height=self.min_height)
        try:
            return loaded, phash.image_hashes(loaded.image), thumbnail(loaded.image)
        except Exception as exc:  # a decoded image these cannot handle is a counted reason, not a crash
            raise imaging.ImageRejected(imaging.DECODE_ERROR, f"hashing: {type(exc).__name__}: {exc}") from exc

    def _prepare(self, body: bytes) -> tuple[imaging.LoadedImage, list[phash.PerceptualHash], bytes]:
        """Decode, hash and make the thumbnail; into a local store, keep both files too.

        One job on the thread pool per image, not three: with the files written in jobs of their own, an
        image's writes queued behind the decoding of every image downloaded before it."""
        loaded, hashes, thumb = self._decode_and_hash(body)
        if not self._local_store:
            return loaded, hashes, thumb
        try:
            self._persist_file(relative_path_for(loaded.sha256, loaded.format), body)
            self._persist_file(thumbnail_path_for(loaded.sha256), thumb)
        except Exception as exc:
            raise FetchRejected("store_error", f"{type(exc).__name__}: {exc}") from exc
        return loaded, hashes, thumb

    async def _persist(self, path: str, body: bytes) -> None:
        try:
            await maybe_deferred_to_future(defer.maybeDeferred(self.store.persist_file, path, BytesIO(body), None))
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
        if id(item) in self._holding:
            self._holding.discard(id(item))
            self._in_flight.release()
        # Scraped, dropped or failed in a later stage: the image was fetched either way. A later occurrence
        # whose image document is missing then fails at indexing and is dead-lettered, not lost.
        owner = self._owners.pop(id(item), None)
        if owner is not None:
            fetched, future = owner
            if not future.done():
                future.set_result(fetched)
