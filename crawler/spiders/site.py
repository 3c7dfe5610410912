"""`site`: start URLs, same-site links followed to a depth and a page budget, robots.txt obeyed."""

from __future__ import annotations

import re
from collections.abc import Iterator
from typing import Any
from urllib.parse import urlsplit

from scrapy.http import Response, TextResponse
from scrapy.linkextractors import IGNORED_EXTENSIONS
from scrapy.utils.url import url_has_any_extension

from crawler.extract import page_links
from crawler.spiders import ImageSpider, split_arg

# Links to files that are not pages (archives, documents, media: Scrapy's list) are not followed.
NOT_PAGE_EXTENSIONS = frozenset(f".{extension}" for extension in IGNORED_EXTENSIONS)


def site_arguments(start_urls: Any, allow: Any, deny: Any) -> tuple[list[str], list[re.Pattern], list[re.Pattern]]:
    """The start URLs and the compiled allow / deny patterns; ValueError, in words, for a bad one, so that the
    CLI can refuse it before anything starts and the spider before it crawls."""
    urls = split_arg(start_urls)
    if not urls:
        raise ValueError("the site spider needs start_urls (-a start_urls=https://example.org/)")
    for url in urls:
        if urlsplit(url).scheme not in ("http", "https") or not urlsplit(url).hostname:
            raise ValueError(f"not an http(s) URL: {url}")

    def compiled(name: str, patterns: Any) -> list[re.Pattern]:
        try:
            return [re.compile(pattern) for pattern in split_arg(patterns)]
        except re.error as exc:
            raise ValueError(f"--{name} {exc.pattern!r} is not a regular expression: {exc}") from None

    return urls, compiled("allow", allow), compiled("deny", deny)


class SiteSpider(ImageSpider):
    """scrapy crawl site -a start_urls=URL1,URL2 [-a depth=2] [-a max_pages=N] [-a allowed_domains=a,b]
    [-a allow=REGEX,...] [-a deny=REGEX,...] (or a JSON list: -a allow='["page\\d{1,3}"]')"""

    name = "site"

    def __init__(self, start_urls: Any = None, depth: Any = 2, max_pages: Any = 0, allowed_domains: Any = None,
                 allow: Any = None, deny: Any = None, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.start_urls, self.allow, self.deny = site_arguments(start_urls, allow, deny)
        self.depth = int(depth)
        self.max_pages = int(max_pages or 0)
        self.allowed_domains = split_arg(allowed_domains) or sorted(
            {urlsplit(u).hostname for u in self.start_urls if urlsplit(u).hostname})
        self.pages_requested = len(self.start_urls)

    async def start(self) -> Any:
        for url in self.start_urls:
            yield self.page_request(url, dont_filter=True)

    def on_site(self, url: str) -> bool:
        # On the host alone: Scrapy's LinkExtractor(allow_domains=...) also compares the port.
        host = (urlsplit(url).hostname or "").lower()
        return any(host == d or host.endswith("." + d) for d in self.allowed_domains)

    def follows(self, url: str) -> bool:
        """Whether a link is followed: on the site, matching an allow pattern (if any) and no deny pattern, and
        not to a file that is no page."""
        if not self.on_site(url) or any(pattern.search(url) for pattern in self.deny):
            return False
        if self.allow and not any(pattern.search(url) for pattern in self.allow):
            return False
        return not url_has_any_extension(url, NOT_PAGE_EXTENSIONS)

    def parse(self, response: Response, **kwargs: Any) -> Iterator[Any]:
        yield from super().parse(response)
        if not isinstance(response, TextResponse) or response.meta.get("depth", 0) >= self.depth:
            return
        # Links are found by crawler.extract, as the images are: Scrapy's LinkExtractor resolves <base href> only
        # in the page's first 4096 characters, and raises when its query holds a character the page's encoding
        # cannot encode.
        for url in page_links(response):
            if not self.follows(url):
                continue
            if self.max_pages and self.pages_requested >= self.max_pages:
                return
            self.pages_requested += 1
            yield self.page_request(url)
