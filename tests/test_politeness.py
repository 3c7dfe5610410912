"""Politeness beyond robots.txt (noai / noimageai / noimageindex, Retry-After) and the newer formats (AVIF,
HEIC), crawled from a site on 127.0.0.1 into the real Elasticsearch."""

from __future__ import annotations

import hashlib
import io
from pathlib import Path

import pytest
from PIL import Image
from scrapy.http import HtmlResponse

from crawler.extract import blocking_directive, page_directive_values, robots_directives
from crawler.middlewares import retry_after_seconds
from crawler.sample_site import Route, SiteServer, encode, page, photo_like
from index_setup.indices import delete_indices
from index_setup.mappings import sources_alias
from pipelines.phash import CROP_NAMES
from tests.test_crawl import crawl

JPEG = "image/jpeg"


@pytest.mark.parametrize(("values", "expected"), [
    (["noai, noimageai"], "noai"),
    (["noimageindex"], "noimageindex"),
    (["googlebot: noimageindex"], None),
    (["imgsearch: noimageai", "otherbot: noai"], "noimageai"),
    (["noindex, nofollow"], None),
    (["max-image-preview:large"], None),
    (["NoImageIndex"], "noimageindex"),
    ([], None),
])
def test_blocking_directives_apply_only_to_us(values, expected):
    assert blocking_directive(values, "imgsearch") == expected


def test_directives_for_another_bot_are_ignored():
    assert robots_directives(["googlebot: noai", "noindex"], "imgsearch") == {"noindex"}


def test_the_directives_follow_the_crawls_bot_name():
    # A crawl run under BOT_NAME=Mybot obeys directives addressed to mybot, no longer those to imgsearch.
    assert blocking_directive(["mybot: noimageai", "imgsearch: noai"], "Mybot") == "noimageai"
    page = HtmlResponse("https://site.example/p.html", body=b'<meta name="mybot" content="noai"><img src="a.jpg">')
    assert blocking_directive(page_directive_values(page, "Mybot"), "Mybot") == "noai"
    assert blocking_directive(page_directive_values(page, "imgsearch"), "imgsearch") is None


def test_retry_after_reads_seconds_and_dates():
    assert retry_after_seconds("120") == 120.0
    assert retry_after_seconds("Wed, 21 Oct 2015 07:28:00 GMT", now=1445412470.0) == 10.0
    assert retry_after_seconds("Wed, 21 Oct 2015 07:28:00 GMT", now=1445412490.0) == 0.0
    assert retry_after_seconds("soon") is None and retry_after_seconds(None) is None


def noai_site() -> dict[str, Route]:
    image = {n: Route(encode(photo_like(6000 + n, 200, 150)), JPEG) for n in range(6)}
    routes = {f"/img/{n}.jpg": route for n, route in image.items()}
    routes["/img/5.jpg"] = Route(image[5].body, JPEG, headers={"X-Robots-Tag": "noai"})
    routes.update({
        "/robots.txt": Route(b"User-agent: *\nAllow: /\n", "text/plain"),
        "/": page("Home", '<a href="/header.html">1</a><a href="/meta.html">2</a><a href="/ours.html">3</a>'
                          '<a href="/google.html">4</a><img src="/img/4.jpg"><img src="/img/5.jpg">'),
        "/header.html": Route(page("Header", '<img src="/img/0.jpg">').body,
                              headers={"X-Robots-Tag": "noimageindex"}),
        "/meta.html": page("Meta", '<img src="/img/1.jpg">', head='<meta name="robots" content="noai, noimageai">'),
        "/ours.html": page("Ours", '<img src="/img/2.jpg">', head='<meta name="imgsearch" content="noimageai">'),
        "/google.html": page("Google only", '<img src="/img/3.jpg">',
                             head='<meta name="robots" content="googlebot: noimageindex">'),
    })
    return routes


def indexed_names(es, alias) -> list[str]:
    es.indices.refresh(index=alias)
    return sorted(h["_source"]["image_url"].rsplit("/", 1)[-1] for h in es.search(index=alias, size=50)["hits"]["hits"])


def test_noai_pages_and_images_are_skipped_and_counted_unless_exempt(crawl_settings_env, index_alias, es, tmp_path):
    alias = f"{index_alias}-noai"
    env = {**crawl_settings_env, "IMGSEARCH_INDEX": alias}
    try:
        with SiteServer(noai_site()) as site:
            stats = crawl(env, tmp_path, site.url + "/")
            assert indexed_names(es, alias) == ["3.jpg", "4.jpg"]
            assert stats["imgsearch/find/skipped/noimageindex"] == 1
            assert stats["imgsearch/find/skipped/noai"] == 1
            assert stats["imgsearch/find/skipped/noimageai"] == 1
            assert stats["imgsearch/fetch/skipped/noai"] == 1
            assert site.requests["/img/0.jpg"] == 0, "a noimageindex page's images are not even downloaded"
            owner = crawl({**env, "IMGSEARCH_NOAI_EXEMPT_DOMAINS": "127.0.0.1"}, tmp_path, site.url + "/")
            assert owner.get("imgsearch/find/skipped/noai", 0) == 0
            assert indexed_names(es, alias) == [f"{n}.jpg" for n in range(6)]
    finally:
        delete_indices(es, alias)


def test_retry_after_is_waited_out_before_the_retry(crawl_settings_env, index_alias, es, tmp_path):
    alias = f"{index_alias}-retry-after"
    env = {**crawl_settings_env, "IMGSEARCH_INDEX": alias}
    gallery = page("Busy", '<img src="/busy.jpg">')
    routes = {
        "/robots.txt": Route(b"User-agent: *\nAllow: /\n", "text/plain"),
        "/": Route(b"slow down", "text/plain", status=429, headers={"Retry-After": "2"}, then=gallery),
        "/busy.jpg": Route(b"", JPEG, status=503, headers={"Retry-After": "1"},
                           then=Route(encode(photo_like(6100, 200, 150)), JPEG)),
    }
    try:
        with SiteServer(routes) as site:
            stats = crawl(env, tmp_path, site.url + "/")
            page_times, image_times = site.times["/"], site.times["/busy.jpg"]
        assert len(page_times) == 2 and page_times[1] - page_times[0] >= 1.9
        assert len(image_times) == 2 and image_times[1] - image_times[0] >= 0.9
        assert stats["imgsearch/politeness/retry_after"] == 2
        assert indexed_names(es, alias) == ["busy.jpg"]
    finally:
        delete_indices(es, alias)


def test_images_are_fetched_at_most_concurrent_requests_per_domain_at_once(crawl_settings_env, index_alias, es,
                                                                         tmp_path):
    # The fetch stage hands every image of a page to Scrapy at once; with no download delay, the per-domain
    # limit is all that keeps them from reaching the site together (crawler/downloader.py).
    alias = f"{index_alias}-per-domain"
    env = {**crawl_settings_env, "IMGSEARCH_INDEX": alias, "CONCURRENT_REQUESTS_PER_DOMAIN": "3"}
    images = {f"/img/{n}.jpg": Route(encode(photo_like(6200 + n, 64, 48)), JPEG, delay=0.05) for n in range(24)}
    routes = {
        "/robots.txt": Route(b"User-agent: *\nAllow: /\n", "text/plain"),
        "/": page("Many", "".join(f'<img src="{path}">' for path in images)),
        **images,
    }
    try:
        with SiteServer(routes) as site:
            stats = crawl(env, tmp_path, site.url + "/")
        assert stats["imgsearch/index/images_created"] == 24
        assert site.most_at_once <= 3, f"{site.most_at_once} requests at once"
    finally:
        delete_indices(es, alias)


def test_avif_and_heic_are_indexed_and_kept_as_they_came(crawl_settings_env, index_alias, es, tmp_path):
    alias = f"{index_alias}-formats"
    env = {**crawl_settings_env, "IMGSEARCH_INDEX": alias}
    files = {}
    for name, fmt, seed in (("a.avif", "AVIF", 6200), ("h.heic", "HEIF", 6201)):
        buffer = io.BytesIO()
        photo_like(seed, 320, 240).save(buffer, format=fmt)
        files[name] = buffer.getvalue()
    routes = {"/robots.txt": Route(b"User-agent: *\nAllow: /\n", "text/plain"),
              "/a.avif": Route(files["a.avif"], "image/avif"), "/h.heic": Route(files["h.heic"], "image/heic"),
              "/": page("Formats", '<img src="/a.avif"><img src="/h.heic">')}
    try:
        with SiteServer(routes) as site:
            stats = crawl(env, tmp_path, site.url + "/")
        assert stats["imgsearch/index/images_created"] == 2
        es.indices.refresh(index=f"{alias},{sources_alias(alias)}")
        docs = {h["_source"]["image_name"]: h["_source"] for h in es.search(index=alias, size=10)["hits"]["hits"]}
        store = Path(env["FILES_STORE"])
        for name, fmt in (("a.avif", "avif"), ("h.heic", "heic")):
            doc = docs[name]
            assert (doc["format"], doc["width"], doc["height"]) == (fmt, 320, 240)
            assert doc["image_id"] == hashlib.sha256(files[name]).hexdigest()
            assert (store / doc["relative_path"]).read_bytes() == files[name], "the original is kept untouched"
            with Image.open(store / doc["thumbnail_path"]) as thumb:
                assert thumb.format == "JPEG" and max(thumb.size) <= 256
            assert len(doc["phash_crops"]) == len(CROP_NAMES)
    finally:
        delete_indices(es, alias)
