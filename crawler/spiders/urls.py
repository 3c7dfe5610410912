"""`urls`: pages (or direct image URLs) read from a file, one per line; no links followed."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from crawler.items import ImageItem
from crawler.spiders import ImageSpider

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".gif", ".webp", ".bmp", ".tif", ".tiff", ".avif", ".heic")


class UrlsSpider(ImageSpider):
    """scrapy crawl urls -a file=urls.txt  (blank lines and lines starting with # are ignored)"""

    name = "urls"

    def __init__(self, file: str | None = None, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        if not file:
            raise ValueError("the urls spider needs a file (-a file=urls.txt)")
        self.file = Path(file)
        if not self.file.is_file():
            raise ValueError(f"{file}: no such file")

    def _urls(self) -> Iterator[str]:
        with self.file.open(encoding="utf-8", errors="replace") as f:
            for line in f:
                url = line.strip()
                if not url or url.startswith("#"):
                    continue
                if urlsplit(url).scheme not in ("http", "https"):
                    self.logger.warning("Skipping %r: not an http(s) URL", url)
                    continue
                yield url

    async def start(self) -> Any:
        for url in self._urls():
            if urlsplit(url).path.lower().endswith(IMAGE_SUFFIXES):
                # A direct image: the fetch stage downloads it; no need to fetch it as a page first.
                yield ImageItem(page_url=url, page_title="", alt_text="", image_url=url)
            else:
                yield self.page_request(url)
