"""The whole crawl, end to end: a hostile little site on 127.0.0.1 crawled into the real Elasticsearch."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
import time

import pytest

from crawler.sample_site import Route, SiteServer, encode, page, photo_like
from index_setup.mappings import sources_alias
from tests.test_imaging import png_claiming

JPEG = "image/jpeg"


def valid_images() -> dict[str, tuple[bytes, str, tuple[int, int], str]]:
    """path -> (bytes, content type, (width, height), format)"""
    return {
        "/img/plain.jpg": (encode(photo_like(1, 400, 300)), JPEG, (400, 300), "jpeg"),
        "/img/large.png": (encode(photo_like(2, 320, 240), "PNG"), "image/png", (320, 240), "png"),
        "/img/lazy.webp": (encode(photo_like(3, 300, 200), "WEBP"), "image/webp", (300, 200), "webp"),
        "/img/bg.gif": (encode(photo_like(4, 200, 150).convert("P"), "GIF"), "image/gif", (200, 150), "gif"),
        "/img/og.jpg": (encode(photo_like(5, 500, 260)), JPEG, (500, 260), "jpeg"),
        "/img/b-only.jpg": (encode(photo_like(6, 240, 320)), JPEG, (240, 320), "jpeg"),
    }


def build_site(cdn_url: str) -> dict[str, Route]:
    images = valid_images()
    routes = {path: Route(data, ctype) for path, (data, ctype, _, _) in images.items()}
    plain = images["/img/plain.jpg"][0]
    routes.update({
        "/img/dup-copy.jpg": Route(plain, JPEG),  # the same bytes under a second URL
        "/img/small.png": Route(encode(photo_like(20, 160, 120), "PNG"), "image/png"),  # srcset 1x: not wanted
        "/img/icon.png": Route(encode(photo_like(7, 16, 16), "PNG"), "image/png"),
        "/img/truncated.jpg": Route(encode(photo_like(8, 400, 300))[:3000], JPEG),
        "/img/fake.jpg": Route(b"<!doctype html><html><body>not an image</body></html>", JPEG),
        "/img/empty.jpg": Route(b"", JPEG),
        "/img/logo.svg": Route(b'<svg xmlns="http://www.w3.org/2000/svg" width="100" height="100"/>',
                               "image/svg+xml"),
        "/img/bomb.png": Route(png_claiming(40000, 40000), "image/png"),
        "/private/hidden.jpg": Route(encode(photo_like(9, 300, 300)), JPEG),
        "/private/secret.html": page("Secret", '<img src="/private/hidden.jpg">'),
        "/robots.txt": Route(b"User-agent: *\nDisallow: /private/\n", "text/plain"),
    })
    routes["/"] = page("Home page", """
        <a href="/a.html">A</a> <a href="/b.html">B</a> <a href="/private/secret.html">secret</a>
        <img src="/img/plain.jpg" alt="A plain photo">
        <img src="data:image/gif;base64,R0lGODlhAQABAAAAACw=" srcset="/img/small.png 1x, /img/large.png 2x" alt="hi">
        <img src="data:image/gif;base64,R0lGODlhAQABAAAAACw=" data-src="/img/lazy.webp" alt="lazy">
        <div style="background-image: url('/img/bg.gif')">banner</div>
        <img src="/img/icon.png">""", head='<meta property="og:image" content="/img/og.jpg">')
    routes["/a.html"] = page("Page A", f"""
        <img src="/img/plain.jpg" alt="The same photo again"> <img src="/img/dup-copy.jpg">
        <img src="{cdn_url}/cdn/photo.jpg" alt="from the CDN">
        <img src="/img/truncated.jpg"> <img src="/img/fake.jpg"> <img src="/img/empty.jpg">
        <img src="/img/logo.svg"> <img src="/img/missing.jpg"> <img src="/img/bomb.png">""")
    routes["/b.html"] = page("Page B", '<img src="/img/b-only.jpg"><img src="/private/hidden.jpg">')
    return routes


def three_images_site(title: str, seed: int) -> dict[str, Route]:
    """A home page showing three small distinct JPEGs."""
    return {
        "/robots.txt": Route(b"User-agent: *\nAllow: /\n", "text/plain"),
        "/": page(title, "".join(f'<img src="/img/{n}.jpg">' for n in range(3))),
        **{f"/img/{n}.jpg": Route(encode(photo_like(seed + n, 96, 64)), JPEG) for n in range(3)},
    }


@pytest.fixture(scope="module")
def sites():
    with SiteServer() as cdn, SiteServer() as site:
        cdn.routes["/cdn/photo.jpg"] = Route(encode(photo_like(10, 350, 350)), JPEG)
        cdn.routes["/robots.txt"] = Route(b"User-agent: *\nAllow: /\n", "text/plain")
        site.routes.update(build_site(cdn.url))
        yield site, cdn


def crawl(env: dict, tmp_path, *args: str, timeout: float = 240) -> dict:
    stats_file = tmp_path / f"stats-{time.monotonic_ns()}.json"
    result = subprocess.run([sys.executable, "-m", "cli", "crawl", *args, "--stats-file", str(stats_file)],
                            capture_output=True, text=True, timeout=timeout, env={**os.environ, **env})
    assert result.returncode == 0, result.stdout + result.stderr[-4000:]
    assert "Traceback" not in result.stderr, result.stderr[-4000:]
    return json.loads(stats_file.read_text())


@pytest.fixture(scope="module")
def crawl_env(index_alias, crawl_settings_env):
    return {**crawl_settings_env, "IMGSEARCH_INDEX": index_alias}


def test_crawl_indexes_every_valid_image_once_and_counts_every_bad_one(sites, crawl_env, es, index_alias,
                                                                       tmp_path):
    site, cdn = sites
    stats = crawl(crawl_env, tmp_path, site.url + "/")

    assert stats["imgsearch/fetch/skipped/too_small"] == 1
    assert stats["imgsearch/fetch/failed/decode_error"] == 1
    assert stats["imgsearch/fetch/skipped/not_image"] == 1
    assert stats["imgsearch/fetch/failed/empty"] == 1
    assert stats["imgsearch/fetch/skipped/svg"] == 1
    assert stats["imgsearch/fetch/failed/http_404"] == 1
    assert stats["imgsearch/fetch/skipped/too_many_pixels"] == 1
    assert stats["imgsearch/fetch/skipped/robots_disallowed"] == 1
    assert stats["imgsearch/index/images_created"] == 7
    assert stats.get("imgsearch/index/dead_lettered", 0) == 0
    # Where the CPU went: the model's threads and the fetch stage's (decoding, hashing, thumbnails).
    assert stats["imgsearch/embed/cpu_seconds"] > 0 and stats["imgsearch/fetch/cpu_seconds"] > 0
    assert site.fetched("/private/") == 0, "robots.txt disallows /private/"
    assert site.fetched("/img/small.png") == 0, "only the largest srcset candidate is fetched"
    assert site.fetched("/img/plain.jpg") == 1, "an image on two pages is downloaded once"
    assert cdn.fetched("/cdn/photo.jpg") == 1, "images on another host are not dropped as offsite"

    es.indices.refresh(index=f"{index_alias},{sources_alias(index_alias)}")
    docs = {h["_id"]: h["_source"] for h in es.search(index=index_alias, size=100)["hits"]["hits"]}
    assert es.count(index=index_alias)["count"] == 7
    for path, (data, _, (width, height), fmt) in valid_images().items():
        # One image under two URLs: its document names whichever URL was written first.
        doc = docs[hashlib.sha256(data).hexdigest()]
        assert (doc["width"], doc["height"], doc["format"], doc["bytes"]) == (width, height, fmt, len(data)), path
        assert doc["domains"] == ["127.0.0.1"]
        assert len(doc["image_embedding"]) == 512
        assert doc["first_seen"] <= doc["last_seen"]
        assert doc["relative_path"].startswith(f"full/{doc['sha256'][:2]}/")

    plain_id = next(d["image_id"] for d in docs.values() if d["image_url"].endswith("/img/plain.jpg")
                    or d["image_url"].endswith("/img/dup-copy.jpg"))
    occurrences = es.search(index=sources_alias(index_alias), query={"term": {"image_id": plain_id}},
                            size=10)["hits"]["hits"]
    pairs = sorted((o["_source"]["page_url"].rsplit("/", 1)[-1], o["_source"]["image_url"].rsplit("/", 1)[-1])
                   for o in occurrences)
    assert pairs == [("", "plain.jpg"), ("a.html", "dup-copy.jpg"), ("a.html", "plain.jpg")]
    titles = {o["_source"]["page_url"].rsplit("/", 1)[-1]: o["_source"]["page_title"] for o in occurrences}
    assert titles == {"": "Home page", "a.html": "Page A"}
    assert es.count(index=sources_alias(index_alias))["count"] == 9


def test_second_crawl_adds_no_image_and_advances_last_seen(sites, crawl_env, es, index_alias, tmp_path):
    site, _ = sites
    sources = sources_alias(index_alias)
    es.indices.refresh(index=f"{index_alias},{sources}")
    before = {h["_id"]: h["_source"] for h in es.search(index=sources, size=100)["hits"]["hits"]}
    if not before:
        crawl(crawl_env, tmp_path, site.url + "/")
        es.indices.refresh(index=f"{index_alias},{sources}")
        before = {h["_id"]: h["_source"] for h in es.search(index=sources, size=100)["hits"]["hits"]}
    stats = crawl(crawl_env, tmp_path, site.url + "/")
    assert stats.get("imgsearch/index/images_created", 0) == 0
    assert stats["imgsearch/index/images_updated"] >= 7  # one write per image and batch
    es.indices.refresh(index=f"{index_alias},{sources}")
    assert es.count(index=index_alias)["count"] == 7
    after = {h["_id"]: h["_source"] for h in es.search(index=sources, size=100)["hits"]["hits"]}
    assert after.keys() == before.keys()
    for key, doc in after.items():
        assert doc["first_seen"] == before[key]["first_seen"]
        assert doc["last_seen"] > before[key]["last_seen"]
    images = es.search(index=index_alias, size=100)["hits"]["hits"]
    assert all(h["_source"]["last_seen"] > h["_source"]["first_seen"] for h in images)


def test_a_trickle_smaller_than_one_batch_still_finishes(crawl_env, tmp_path, es, index_alias):
    with SiteServer({"/": page("One", '<img src="/one.jpg">'),
                     "/one.jpg": Route(encode(photo_like(30, 300, 300)), JPEG)}) as one:
        env = {**crawl_env, "IMGSEARCH_INDEX": f"{index_alias}-trickle", "IMGSEARCH_EMBED_BATCH_SIZE": "1000",
               "IMGSEARCH_INDEX_BATCH_SIZE": "1000"}
        try:
            stats = crawl(env, tmp_path, one.url + "/", timeout=120)
        finally:
            from index_setup.indices import delete_indices

            delete_indices(es, f"{index_alias}-trickle")
    assert stats["imgsearch/index/indexed"] == 1
    assert stats["finish_reason"] == "finished"


def test_a_store_that_cannot_be_written_is_counted_and_the_crawl_goes_on(crawl_env, tmp_path, es, index_alias):
    store = tmp_path / "store"
    store.mkdir()
    (store / "full").write_text("a file where the folder of the originals should be")
    with SiteServer({"/": page("Two", '<img src="/a.jpg"><img src="/b.jpg">'),
                     "/a.jpg": Route(encode(photo_like(31, 300, 300)), JPEG),
                     "/b.jpg": Route(encode(photo_like(32, 300, 300)), JPEG)}) as two:
        env = {**crawl_env, "IMGSEARCH_INDEX": f"{index_alias}-store", "FILES_STORE": str(store)}
        try:
            stats = crawl(env, tmp_path, two.url + "/", timeout=120)
        finally:
            from index_setup.indices import delete_indices

            delete_indices(es, f"{index_alias}-store")
    assert stats["imgsearch/fetch/failed/store_error"] == 2
    assert stats.get("imgsearch/index/indexed", 0) == 0
    assert stats["finish_reason"] == "finished"


@pytest.mark.parametrize("spelling", ["~/store", "file://{home}/store"])
def test_the_store_is_where_the_page_and_the_upgrade_look_however_it_is_spelled(spelling, crawl_env, tmp_path, es,
                                                                               index_alias, monkeypatch):
    from pipelines.store import local_store
    from web.store import ImageStore

    home = tmp_path / "home"
    files_store = spelling.format(home=home)
    data = encode(photo_like(33, 300, 300))
    with SiteServer({"/": page("Kept", '<img src="/a.jpg">'), "/a.jpg": Route(data, JPEG)}) as site:
        env = {**crawl_env, "IMGSEARCH_INDEX": f"{index_alias}-spelled", "FILES_STORE": files_store, "HOME": str(home)}
        try:
            stats = crawl(env, tmp_path, site.url + "/", timeout=120)
        finally:
            from index_setup.indices import delete_indices

            delete_indices(es, f"{index_alias}-spelled")
    assert stats["imgsearch/index/indexed"] == 1
    sha = hashlib.sha256(data).hexdigest()
    assert (home / "store" / "full" / sha[:2] / f"{sha}.jpg").read_bytes() == data
    monkeypatch.setenv("HOME", str(home))
    assert local_store(files_store) == home / "store"  # what `index upgrade` and `reembed` read
    store = ImageStore(files_store, max_bytes=1 << 30, max_pixels=10**8)
    assert store.original(sha) == data
    assert store.thumbnail(sha) == home / "store" / "thumbs" / sha[:2] / f"{sha}.jpg", "the crawl's own thumbnail"


def test_urls_file_crawls_listed_pages_and_direct_images(crawl_env, tmp_path, es, index_alias):
    alias = f"{index_alias}-listed"
    with SiteServer({"/page.html": page("Listed", '<img src="/in-page.jpg">'),
                     "/in-page.jpg": Route(encode(photo_like(40, 300, 300)), JPEG),
                     "/direct.png": Route(encode(photo_like(41, 300, 300), "PNG"), "image/png"),
                     "/served-as-page": Route(encode(photo_like(42, 300, 300)), JPEG)}) as listed:
        urls = tmp_path / "urls.txt"
        urls.write_text(f"# pages and images\n{listed.url}/page.html\n\n{listed.url}/direct.png\n"
                        f"{listed.url}/served-as-page\nnot a url\n{listed.url}/gone.html\n")
        try:
            stats = crawl({**crawl_env, "IMGSEARCH_INDEX": alias}, tmp_path, "--urls-file", str(urls))
            es.indices.refresh(index=alias)
            urls_indexed = sorted(h["_source"]["image_url"].rsplit("/", 1)[-1]
                                  for h in es.search(index=alias, size=10)["hits"]["hits"])
        finally:
            from index_setup.indices import delete_indices

            delete_indices(es, alias)
    assert urls_indexed == ["direct.png", "in-page.jpg", "served-as-page"]
    assert stats["imgsearch/find/failed/http_404"] == 1
    assert listed.requests["/direct.png"] == 1, "a direct image URL is downloaded once, by the fetch stage"


def test_one_image_in_flight_at_a_time_still_crawls_everything(sites, crawl_env, es, index_alias, tmp_path):
    """The in-flight bound (back-pressure) never deadlocks, even at 1 with one URL on several pages."""
    site, _ = sites
    alias = f"{index_alias}-one-at-a-time"
    try:
        stats = crawl({**crawl_env, "IMGSEARCH_INDEX": alias, "IMGSEARCH_FETCH_MAX_IN_FLIGHT": "1"}, tmp_path,
                      site.url + "/", timeout=180)
        assert stats["imgsearch/index/images_created"] == 7
        assert stats["imgsearch/fetch/reused"] >= 1
    finally:
        from index_setup.indices import delete_indices

        delete_indices(es, alias)


def test_pages_waiting_together_for_robots_txt_all_obey_it(crawl_env, tmp_path, es, index_alias):
    """Scrapy 2.19's robots.txt middleware hands the rules to the first waiting request only; the others were let
    through. Many listed pages on one new host all wait at once: none under the disallowed path may be fetched."""
    alias = f"{index_alias}-robots"
    routes = {"/robots.txt": Route(b"User-agent: *\nDisallow: /private/\n", "text/plain", delay=0.5)}
    for n in range(6):
        routes[f"/open/{n}.html"] = page(f"Open {n}", "")
        routes[f"/private/{n}.html"] = page(f"Private {n}", "")
    with SiteServer(routes) as site:
        urls = tmp_path / "pages.txt"
        urls.write_text("".join(f"{site.url}/{kind}/{n}.html\n" for n in range(6) for kind in ("private", "open")))
        try:
            stats = crawl({**crawl_env, "IMGSEARCH_INDEX": alias}, tmp_path, "--urls-file", str(urls))
        finally:
            from index_setup.indices import delete_indices

            delete_indices(es, alias)
        assert site.fetched("/private/") == 0
        assert site.fetched("/open/") == 6
        assert site.requests["/robots.txt"] == 1
    assert stats["imgsearch/find/failed/robots_disallowed"] == 6


def test_a_finished_crawl_is_searchable_at_once(crawl_settings_env, index_alias, es, tmp_path):
    from index_setup.indices import IndexNames, delete_indices, ensure_indices
    from pipelines.embedding import model_dims

    alias = f"{index_alias}-searchable"
    env = {**crawl_settings_env, "IMGSEARCH_INDEX": alias}
    model = env["IMGSEARCH_IMAGE_MODEL"]
    ensure_indices(es, alias, dims=model_dims(model), model=model)
    # No periodic refresh: only the crawl's own refresh at its end can make its writes visible to a search.
    es.indices.put_settings(index=",".join(IndexNames.for_alias(alias).all()),
                            settings={"index.refresh_interval": "-1"})
    routes = three_images_site("Three", 6300)
    try:
        with SiteServer(routes) as site:
            stats = crawl(env, tmp_path, site.url + "/")
        assert stats["imgsearch/index/images_created"] == 3
        assert es.count(index=alias)["count"] == 3
        assert es.count(index=sources_alias(alias))["count"] == 3
    finally:
        delete_indices(es, alias)


def test_a_first_crawl_with_a_model_of_other_dims_indexes_every_image(wide_standin_models, crawl_settings_env,
                                                                      index_alias, es, tmp_path):
    from index_setup.indices import delete_indices

    image, text = wide_standin_models
    alias = f"{index_alias}-wide"
    env = {**crawl_settings_env, "IMGSEARCH_INDEX": alias, "IMGSEARCH_IMAGE_MODEL": str(image),
           "IMGSEARCH_TEXT_MODEL": str(text)}
    routes = three_images_site("Wide", 6400)
    try:
        with SiteServer(routes) as site:
            stats = crawl(env, tmp_path, site.url + "/")
        assert stats["imgsearch/index/images_created"] == 3
        assert stats.get("imgsearch/index/dead_lettered", 0) == 0
        mappings = next(iter(es.indices.get_mapping(index=alias).body.values()))["mappings"]
        assert mappings["properties"]["image_embedding"]["dims"] == mappings["_meta"]["dims"] == 768
        hits = es.search(index=alias, size=10)["hits"]["hits"]
        assert sorted(len(hit["_source"]["image_embedding"]) for hit in hits) == [768] * 3
    finally:
        delete_indices(es, alias)
