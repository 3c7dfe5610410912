"""Fuzz targets: the page extractor and the image loader, each a function of raw bytes that raises only on a bug.

- `extract`: the bytes are an HTML page (its first byte picks the charset its Content-Type header declares, or
  none) served at a fixed URL; `crawler.extract.extract_images`, `page_links`, `page_title` and
  `page_directive_values` must not raise, and every URL found (image or link) must be an absolute http(s) URL
  without fragment, at most MAX_URL_CHARS long.
- `image`: `pipelines.imaging.load_image` on the bytes must return a usable image or raise ImageRejected with one
  of its reasons; anything else is a crash.

Both are run by tests/fuzz/run.py (atheris, or random mutations where atheris is missing).
"""

from __future__ import annotations

from collections.abc import Callable
from urllib.parse import urlsplit

PAGE_URL = "https://fuzz.example/dir/page.html"
# The charset the page's Content-Type declares, chosen by the first byte; None: no charset parameter.
CHARSETS = (None, "utf-8", "iso-8859-1", "windows-1252", "shift_jis", "utf-16", "gb18030", "x-no-such-charset")


def extract(data: bytes) -> None:
    from scrapy.http import HtmlResponse

    from crawler.extract import MAX_URL_CHARS, extract_images, page_directive_values, page_links, page_title

    charset = CHARSETS[data[0] % len(CHARSETS)] if data else None
    content_type = "text/html" + (f"; charset={charset}" if charset else "")
    response = HtmlResponse(url=PAGE_URL, body=data[1:], headers={"Content-Type": content_type})
    found_images = extract_images(response)
    for url in [found.image_url for found in found_images] + page_links(response):
        parts = urlsplit(url)
        if parts.scheme not in ("http", "https") or not parts.hostname or "#" in url or len(url) > MAX_URL_CHARS:
            raise AssertionError(f"not an absolute http(s) URL: {url[:200]!r}")
    for found in found_images:
        if not isinstance(found.alt_text, str):
            raise AssertionError(f"alt text {found.alt_text!r}")
    if not isinstance(page_title(response), str):
        raise AssertionError("page_title did not return a string")
    page_directive_values(response, "imgsearch")


def image(data: bytes) -> None:
    from pipelines.imaging import REASONS, ImageRejected, load_image

    try:
        loaded = load_image(data, max_pixels=4_000_000)  # small cap: the fuzzer's time goes to parsing
    except ImageRejected as exc:
        if exc.reason not in REASONS:
            raise AssertionError(f"unknown reason {exc.reason!r}") from exc
        return
    if loaded.image.mode != "RGB" or min(loaded.image.size) < 1 or loaded.width < 32 or loaded.height < 32:
        raise AssertionError(f"unusable result: {loaded}")


TARGETS: dict[str, Callable[[bytes], None]] = {"extract": extract, "image": image}
# The modules whose code atheris instruments for coverage, per target.
INSTRUMENTED = {"extract": ("crawler.extract", "w3lib", "parsel"), "image": ("pipelines.imaging", "PIL")}
