"""The crawl's spiders: `site` follows a site's links, `urls` reads a list of pages or images."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import scrapy
from scrapy.http import Response, TextResponse
from scrapy.spidermiddlewares.httperror import HttpError
from twisted.python.failure import Failure

from crawler.extract import blocking_directive, extract_images, noai_exempt, page_directive_values, page_title
from crawler.items import ImageItem
from crawler.jobstate import KEY, page_done


def image_items(response: Response) -> Iterator[ImageItem]:
    """One item per (page, image URL): every image a browser would show on the page."""
    if not isinstance(response, TextResponse):
        return
    title = page_title(response)
    for found in extract_images(response):
        yield ImageItem(page_url=response.url, page_title=title, alt_text=found.alt_text,
                        image_url=found.image_url)


def split_arg(value: Any) -> list[str]:
    """Spider arguments arrive as strings from `-a name=a,b`, or `-a name='["a{1,3}", "b"]'` (a JSON list, for
    values with commas, such as regular expressions); lists pass through."""
    if value is None or value == "":
        return []
    if isinstance(value, str) and value.lstrip().startswith("["):
        try:
            value = json.loads(value)
        except ValueError:
            pass
    if isinstance(value, (list, tuple)):
        return [str(v).strip() for v in value if str(v).strip()]
    return [v.strip() for v in str(value).split(",") if v.strip()]


class ImageSpider(scrapy.Spider):
    """Base: page responses that are images themselves become items whose page is the image URL; a page that
    cannot be fetched is one counted, logged reason, not a traceback."""

    def page_request(self, url: str, **kwargs: Any) -> scrapy.Request:
        return scrapy.Request(url, callback=self.parse, errback=self.page_failed, **kwargs)

    def page_failed(self, failure: Failure) -> None:
        from pipelines.fetch import download_failure_reason

        reason = download_failure_reason(failure.value)
        if isinstance(failure.value, HttpError):
            reason = f"http_{failure.value.response.status}"
        self.crawler.stats.inc_value(f"imgsearch/find/failed/{reason}")
        self.logger.warning("Page failed %s (%s): %s", reason, failure.request.url, failure.getErrorMessage())
        # Counted: done, for the job journal (crawler.jobstate), like a page whose images are all indexed.
        self.crawler.signals.send_catch_log(signal=page_done, key=failure.request.meta.get(KEY))

    def parse(self, response: Response, **kwargs: Any) -> Iterator[Any]:
        """The page's image items; a response that is an image itself is one item, its own page."""
        self.crawler.stats.inc_value("imgsearch/find/pages")
        content_type = response.headers.get(b"Content-Type", b"").decode("latin-1").lower()
        if not isinstance(response, TextResponse) or content_type.startswith("image/"):
            yield ImageItem(page_url=response.url, page_title="", alt_text="", image_url=response.url)
            return
        bot = self.settings.get("BOT_NAME")
        directive = blocking_directive(page_directive_values(response, bot), bot)
        if directive and not noai_exempt(self.settings, response.url):
            # The site asks that this page's images not be indexed; its links are still followed.
            self.crawler.stats.inc_value(f"imgsearch/find/skipped/{directive}")
            self.logger.info("Page skipped %s (%s): its images are not indexed", directive, response.url)
            return
        yield from image_items(response)
