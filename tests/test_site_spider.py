"""The `site` spider on in-memory responses: which links it follows, what a page it cannot parse whole still
gives, and how a page failure is counted."""

from __future__ import annotations

import logging

from scrapy import Request
from scrapy.http import HtmlResponse
from scrapy.utils.test import get_crawler
from twisted.python.failure import Failure

from crawler.items import ImageItem
from crawler.middlewares import RedirectLoop, TooManyRedirects
from crawler.spiders.site import SiteSpider

SITE = "https://site.example"


def _spider(**kwargs) -> SiteSpider:
    return SiteSpider.from_crawler(get_crawler(SiteSpider), start_urls=f"{SITE}/", **kwargs)


def _parse(spider: SiteSpider, body: bytes, content_type: str = "text/html; charset=utf-8") -> tuple[list, list]:
    url = f"{SITE}/dir/page.html"
    response = HtmlResponse(url, body=body, headers={"Content-Type": content_type},
                            request=Request(url, meta={"depth": 0}))
    out = list(spider.parse(response))
    return [o for o in out if isinstance(o, ImageItem)], [o.url for o in out if isinstance(o, Request)]


def test_a_base_href_the_page_encoding_cannot_encode_still_yields_images_and_links():
    # Byte 0x81 is undefined in windows-1252: Scrapy's selector and LinkExtractor raise on such a <base href>.
    body = (b'<html><head><title>Base</title><base href="/g/?ref=\x81"></head><body>'
            b'<img src="base-cp1252.jpg"><a href="next.html">next</a></body></html>')
    items, links = _parse(_spider(), body, "text/html; charset=windows-1252")
    assert [(i["image_url"], i["page_title"]) for i in items] == [(f"{SITE}/g/base-cp1252.jpg", "Base")]
    assert links == [f"{SITE}/g/next.html"]


def test_links_followed_are_on_site_allowed_and_pages():
    body = (b'<a href="/a.html">a</a><a href="/private/b.html">b</a><a href="/c.pdf">c</a>'
            b'<a href="https://sub.site.example/d.html">d</a><a href="https://other.example/e.html">e</a>'
            b'<a href="/a.html#again">a</a><a href="mailto:x@site.example">m</a><a href="/f.HTML">f</a>')
    _, links = _parse(_spider(deny=r"/private/"), body)
    assert links == [f"{SITE}/a.html", "https://sub.site.example/d.html", f"{SITE}/f.HTML"]
    _, links = _parse(_spider(allow=r"/f\.", deny=r"/private/"), body)
    assert links == [f"{SITE}/f.HTML"]


def test_links_stop_at_max_pages_and_depth():
    body = b"".join(b'<a href="/%d.html">n</a>' % n for n in range(5))
    _, links = _parse(_spider(max_pages=3), body)
    assert links == [f"{SITE}/0.html", f"{SITE}/1.html"]  # the start URL counts too
    _, links = _parse(_spider(depth=0), body)
    assert links == []


def test_a_redirect_loop_or_chain_is_a_counted_logged_page_failure(caplog):
    spider = _spider()
    request = Request(f"{SITE}/loop/b.html")
    for error in (RedirectLoop(f"redirect loop: {SITE}/loop/a.html -> {SITE}/loop/b.html -> {SITE}/loop/a.html"),
                  TooManyRedirects("more than 10 redirects")):
        failure = Failure(error)
        failure.request = request
        with caplog.at_level(logging.WARNING):
            spider.page_failed(failure)
    stats = spider.crawler.stats.get_stats()
    assert stats["imgsearch/find/failed/redirect_loop"] == 1
    assert stats["imgsearch/find/failed/too_many_redirects"] == 1
    assert f"Page failed redirect_loop ({SITE}/loop/b.html): redirect loop: " in caplog.text
    assert f"Page failed too_many_redirects ({SITE}/loop/b.html)" in caplog.text
