"""crawler.middlewares on in-memory requests and responses: redirect loops and endless chains stopped under
reasons of their own, a meta refresh read on a page Scrapy cannot resolve URLs of, and a page whose markup
declares an encoding it cannot be in."""

from __future__ import annotations

import codecs

import pytest
from scrapy import Request
from scrapy.exceptions import IgnoreRequest
from scrapy.http import HtmlResponse, Response, TextResponse
from scrapy.utils.test import get_crawler

from crawler.extract import extract_images
from crawler.middlewares import (
    MarkupEncodingMiddleware,
    MetaRefreshMiddleware,
    RedirectLoop,
    RedirectMiddleware,
    TooManyRedirects,
    markup_encoding_override,
    redirect_loop,
)
from pipelines.fetch import download_failure_reason

SITE = "https://site.example"


def _middleware(cls, max_times: int = 3):
    return cls.from_crawler(get_crawler(settings_dict={"REDIRECT_MAX_TIMES": max_times}))


def _redirect(middleware: RedirectMiddleware, request: Request, location: str) -> Request | Response:
    response = Response(request.url, status=302, headers={"Location": location}, request=request)
    return middleware.process_response(request, response)


# --- redirect loops and endless chains ----------------------------------------------------------------------


def test_a_redirect_loop_stops_at_its_first_repeat():
    middleware = _middleware(RedirectMiddleware, max_times=10)
    b = _redirect(middleware, Request(f"{SITE}/a"), "/b")
    assert isinstance(b, Request) and b.url == f"{SITE}/b"
    with pytest.raises(RedirectLoop) as raised:
        _redirect(middleware, b, "/a")
    assert isinstance(raised.value, IgnoreRequest)  # Scrapy still treats it as a request not to make
    assert download_failure_reason(raised.value) == "redirect_loop"
    assert f"{SITE}/a -> {SITE}/b -> {SITE}/a" in str(raised.value)


def test_a_redirect_to_itself_is_a_loop():
    with pytest.raises(RedirectLoop):
        _redirect(_middleware(RedirectMiddleware), Request(f"{SITE}/a?x=1"), "/a?x=1#top")


def test_loops_are_urls_the_dupefilter_would_call_the_same():
    assert redirect_loop([f"{SITE}/a?x=1&y=2", f"{SITE}/b"], f"{SITE}/a?y=2&x=1#f")
    assert not redirect_loop([f"{SITE}/a?x=1", f"{SITE}/b"], f"{SITE}/a?x=2")
    assert not redirect_loop([f"{SITE}/a"], "http://site.example/a")


def test_a_chain_longer_than_redirect_max_times_is_too_many_redirects():
    middleware = _middleware(RedirectMiddleware, max_times=3)
    request = Request(f"{SITE}/0")
    for n in range(1, 4):
        request = _redirect(middleware, request, f"/{n}")
        assert isinstance(request, Request) and request.url == f"{SITE}/{n}"
    with pytest.raises(TooManyRedirects) as raised:
        _redirect(middleware, request, "/4")
    assert download_failure_reason(raised.value) == "too_many_redirects"
    assert "more than 3 redirects" in str(raised.value)


def test_other_ignored_requests_keep_their_reasons():
    assert download_failure_reason(IgnoreRequest("Forbidden by robots.txt")) == "robots_disallowed"
    assert download_failure_reason(IgnoreRequest("something else")) == "ignored"


# --- meta refresh -------------------------------------------------------------------------------------------

# A windows-1252 page whose <base href> query holds a byte that code page leaves undefined (0x81): Scrapy's own
# meta refresh middleware raises on it (the page then failed as download_error).
BAD_BASE = b'<html><head><base href="/g/?ref=\x81">%s</head><body><img src="x.jpg"></body></html>'


def _cp1252_page(url: str, head: bytes) -> HtmlResponse:
    return HtmlResponse(url, body=BAD_BASE % head, headers={"Content-Type": "text/html; charset=windows-1252"},
                        request=Request(url))


def test_a_page_with_an_unencodable_base_href_passes_through():
    response = _cp1252_page(f"{SITE}/p.html", b"<title>t</title>")
    assert _middleware(MetaRefreshMiddleware).process_response(response.request, response) is response


def test_its_meta_refresh_is_still_followed():
    response = _cp1252_page(f"{SITE}/p.html", b'<meta http-equiv="refresh" content="0; url=next.html?q=&#20013;">')
    redirected = _middleware(MetaRefreshMiddleware).process_response(response.request, response)
    assert isinstance(redirected, Request)
    assert redirected.url == f"{SITE}/g/next.html?q=%E4%B8%AD"  # a query the page's encoding lacks: UTF-8


def test_a_meta_refresh_loop_is_counted():
    url = f"{SITE}/p.html"
    response = HtmlResponse(url, body=b'<meta http-equiv="refresh" content="0; url=p.html">', request=Request(url))
    with pytest.raises(RedirectLoop):
        _middleware(MetaRefreshMiddleware).process_response(response.request, response)


# --- an encoding the markup cannot declare -----------------------------------------------------------------

ASCII_PAGE = '<html><head><meta charset="{}"><title>x</title></head><body><img src="a.jpg"></body></html>'


def _read(body: bytes, content_type: str | None = None) -> TextResponse:
    """A page as the spiders get it: Scrapy's own encoding choice, then MarkupEncodingMiddleware."""
    url = f"{SITE}/p.html"
    headers = {"Content-Type": content_type} if content_type else {}
    return MarkupEncodingMiddleware().process_response(Request(url), HtmlResponse(url, body=body, headers=headers))


@pytest.mark.parametrize("declared", ["utf-16", "UTF-16LE", "utf-16be", "utf-32"])
def test_a_meta_charset_of_utf16_over_ascii_is_read_as_utf8(declared):
    page = ASCII_PAGE.format(declared).replace("<title>x", "<title>caf\u00e9")
    response = _read(page.encode())
    assert "<title>caf\u00e9</title>" in response.text
    assert [found.image_url for found in extract_images(response)] == [f"{SITE}/a.jpg"]


def test_the_http_equiv_and_xml_declarations_too():
    http_equiv = (b'<meta http-equiv="Content-Type" content="text/html; charset=utf-16le"><title>caf\xc3\xa9</title>'
                  b'<img src="a.jpg">')
    xml = (b'<?xml version="1.0" encoding="UTF-16"?><html><head><title>caf\xc3\xa9</title></head>'
           b'<body><img src="a.jpg"/></body></html>')
    for body in (http_equiv, xml):
        response = _read(body)
        assert "<title>caf\u00e9</title>" in response.text
        assert [found.image_url for found in extract_images(response)] == [f"{SITE}/a.jpg"]


def test_utf8_text_survives_the_override():
    body = ASCII_PAGE.format("utf-16").replace("<title>x", "<title>café").encode()
    response = MarkupEncodingMiddleware().process_response(None, HtmlResponse(f"{SITE}/p.html", body=body))
    assert "<title>café</title>" in response.text


def test_a_bom_or_a_content_type_charset_still_wins():
    page = ASCII_PAGE.format("utf-16")
    with_bom = codecs.BOM_UTF16_LE + page.encode("utf-16-le")
    assert markup_encoding_override("text/html", with_bom, "utf-16-le") is None
    response = HtmlResponse(f"{SITE}/p.html", body=with_bom)
    assert MarkupEncodingMiddleware().process_response(None, response) is response
    in_utf16 = page.encode("utf-16-le")
    assert markup_encoding_override("text/html; charset=utf-16le", in_utf16, "utf-16-le") is None
    # Without BOM or charset, UTF-16 found in the bytes themselves (no declaration read as ASCII) is kept too.
    assert markup_encoding_override("text/html", in_utf16, "utf-16-le") is None


def test_other_declared_encodings_are_kept():
    for declared in ("utf-8", "windows-1252", "shift_jis"):
        body = ASCII_PAGE.format(declared).encode()
        response = HtmlResponse(f"{SITE}/p.html", body=body)
        assert markup_encoding_override("text/html", body, response.encoding) is None
        assert MarkupEncodingMiddleware().process_response(None, response) is response
    not_text = Response(f"{SITE}/a.jpg", body=b"\xff\xd8")
    assert MarkupEncodingMiddleware().process_response(None, not_text) is not_text
    plain = TextResponse(f"{SITE}/a.txt", body=b"hello", encoding="utf-8")
    assert MarkupEncodingMiddleware().process_response(None, plain) is plain
