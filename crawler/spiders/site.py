"""`site`: start URLs, same-site links followed to a depth and a page budget, robots.txt obeyed."""

from __future__ import annotations

import re
from collections.abc import Iterator
from typing import Any
from urllib.parse import urlsplit

from scrapy.http import Response, TextResponse
from scrapy.linkextractors import LinkExtractor

from crawler.spiders import ImageSpider, split_arg


class SiteSpider(ImageSpider):
    """scrapy crawl site -a start_urls=URL1,URL2 [-a depth=2] [-a max_pages=N] [-a allowed_domains=a,b]
    [-a allow=REGEX,...] [-a deny=REGEX,...]"""

    name = "site"

    def __init__(self, start_urls: Any = None, depth: Any = 2, max_pages: Any = 0, allowed_domains: Any = None,
                 allow: Any = None, deny: Any = None, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.start_urls = split_arg(start_urls)
        if not self.start_urls:
            raise ValueError("the site spider needs start_urls (-a start_urls=https://example.org/)")
        for url in self.start_urls:
            if urlsplit(url).scheme not in ("http", "https"):
                raise ValueError(f"not an http(s) URL: {url}")
        self.depth = int(depth)
        self.max_pages = int(max_pages or 0)
        self.allowed_domains = split_arg(allowed_domains) or sorted(
            {urlsplit(u).hostname for u in self.start_urls if urlsplit(u).hostname})
        allow_patterns, deny_patterns = split_arg(allow), split_arg(deny)
        for pattern in allow_patterns + deny_patterns:
            re.compile(pattern)  # a bad pattern fails here, with its own message, not mid-crawl
        # Domains are matched here on the host alone: LinkExtractor's allow_domains also compares the port.
        self.links = LinkExtractor(allow=allow_patterns, deny=deny_patterns)
        self.pages_requested = len(self.start_urls)

    async def start(self) -> Any:
        for url in self.start_urls:
            yield self.page_request(url, dont_filter=True)

    def on_site(self, url: str) -> bool:
        host = (urlsplit(url).hostname or "").lower()
        return any(host == d or host.endswith("." + d) for d in self.allowed_domains)

    def parse(self, response: Response, **kwargs: Any) -> Iterator[Any]:
        yield from super().parse(response)
        if not isinstance(response, TextResponse) or response.meta.get("depth", 0) >= self.depth:
            return
        for link in self.links.extract_links(response):
            if not self.on_site(link.url):
                continue
            if self.max_pages and self.pages_requested >= self.max_pages:
                return
            self.pages_requested += 1
            yield self.page_request(link.url)
