"""The crawl's spiders: `site` follows a site's links, `urls` reads a list of pages or images."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import scrapy
from scrapy.http import Response, TextResponse

from crawler.extract import extract_images, page_title
from crawler.items import ImageItem


def image_items(response: Response) -> Iterator[ImageItem]:
    """One item per (page, image URL): every image a browser would show on the page."""
    if not isinstance(response, TextResponse):
        return
    title = page_title(response)
    for found in extract_images(response):
        yield ImageItem(page_url=response.url, page_title=title, alt_text=found.alt_text,
                        image_url=found.image_url)


def split_arg(value: Any) -> list[str]:
    """Spider arguments arrive as strings from `-a name=a,b`; lists pass through."""
    if value is None or value == "":
        return []
    if isinstance(value, (list, tuple)):
        return [str(v).strip() for v in value if str(v).strip()]
    return [v.strip() for v in str(value).split(",") if v.strip()]


class ImageSpider(scrapy.Spider):
    """Base: page responses that are images themselves become items whose page is the image URL."""

    def direct_image_item(self, response: Response) -> ImageItem | None:
        content_type = response.headers.get(b"Content-Type", b"").decode("latin-1").lower()
        if not isinstance(response, TextResponse) or content_type.startswith("image/"):
            return ImageItem(page_url=response.url, page_title="", alt_text="", image_url=response.url)
        return None
