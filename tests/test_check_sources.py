"""`imgsearch check-sources`: source pages re-checked through Scrapy; removed pages and removed images marked gone
(kept, with when), unchanged pages answered 304, failures leaving sources as they were, a source that is back live
again."""

from __future__ import annotations

import datetime as dt
import json
import os
import subprocess
import sys
import time

import pytest
from scrapy.http import HtmlResponse, Request

from crawler.sample_site import Route, SiteServer, encode, page, photo_like
from crawler.spiders.check_sources import conditional_headers, is_live, shown_images, sources_query
from index_setup.mappings import sources_alias
from pipelines.source_status import source_state, status_update
from tests.test_crawl import crawl

JPEG = "image/jpeg"
ROBOTS = "/robots.txt"


# -- pure parts --------------------------------------------------------------------------------------------------
def test_which_sources_are_checked():
    now = dt.datetime(2026, 3, 1, 12, 0, tzinfo=dt.timezone.utc)
    assert sources_query(0, now) == {"match_all": {}}
    query = sources_query(7, now)["bool"]["must_not"]
    assert query[0] == {"range": {"checked": {"gte": "2026-02-22T12:00:00+00:00"}}}
    assert query[1]["bool"]["filter"] == [{"range": {"last_seen": {"gte": "2026-02-22T12:00:00+00:00"}}}]
    assert query[1]["bool"]["must_not"] == [{"exists": {"field": "gone_since"}}], "a gone source seen again is checked"


def test_requests_are_conditional_only_when_every_source_holds_the_same_validators():
    checked = {"page_etag": '"v1"', "page_last_modified": "Mon, 02 Nov 2026 10:00:00 GMT"}
    assert conditional_headers([checked, dict(checked)]) == {
        "If-None-Match": '"v1"', "If-Modified-Since": "Mon, 02 Nov 2026 10:00:00 GMT"}
    assert conditional_headers([{"page_etag": '"v1"'}]) == {"If-None-Match": '"v1"'}
    assert conditional_headers([checked, {}]) == {}, "a source not checked yet: the whole page is fetched"
    assert conditional_headers([{}]) == {}


def test_a_page_shows_an_image_when_the_crawl_would_find_it_there():
    body = b'<html><body><img src="/a.jpg"><img srcset="/b-small.jpg 1x, /b.jpg 2x"></body></html>'
    response = HtmlResponse("http://site.test/p.html", body=body, request=Request("http://site.test/p.html"))
    shown = shown_images(response)
    assert {"http://site.test/a.jpg", "http://site.test/b.jpg"} <= shown
    assert is_live({"image_url": "http://site.test/a.jpg"}, "http://site.test/p.html", shown)
    assert not is_live({"image_url": "http://site.test/c.jpg"}, "http://site.test/p.html", shown)
    assert is_live({"image_url": "http://site.test/d.jpg"}, "http://site.test/d.jpg", set()), "a direct image"


def test_what_is_written_for_each_source():
    now = "2026-03-01T12:00:00.000Z"
    page_checked = {"outcome": "checked", "page_etag": '"v2"', "page_last_modified": None, "reason": None}
    assert status_update(page_checked, {"live": True, "gone_since": "2026-01-01T00:00:00Z"}, now) == {
        "checked": now, "page_etag": '"v2"', "page_last_modified": None, "gone_since": None, "gone_reason": None}
    assert status_update(page_checked, {"live": False}, now)["gone_since"] == now
    assert status_update(page_checked, {"live": False}, now)["gone_reason"] == "image_removed"
    gone_page = {"outcome": "gone", "reason": "http_404", "page_etag": None, "page_last_modified": None}
    earlier = "2026-02-01T00:00:00Z"
    assert status_update(gone_page, {"live": False, "gone_since": earlier}, now)["gone_since"] == earlier, \
        "when it went is the first check that found it gone"
    assert status_update({"outcome": "not_modified"}, {"live": None}, now) == {"checked": now}
    assert status_update({"outcome": "failed", "reason": "timeout"}, {"live": None}, now) is None
    assert [source_state({"outcome": o}, s) for o, s in (
        ("checked", {"live": True}), ("checked", {"live": True, "gone_since": earlier}), ("gone", {"live": False}),
        ("gone", {"live": False, "gone_since": earlier}), ("not_modified", {"live": None}),
        ("failed", {"live": None}))] == ["live", "back", "gone", "still_gone", "not_modified", "unchecked"]


# -- against a site and the real Elasticsearch -------------------------------------------------------------------
def image_path(n: int) -> str:
    return f"/img/{n}.jpg"


def imgs(*numbers: int) -> str:
    return "".join(f'<img src="{image_path(n)}">' for n in numbers)


PAGES = {"kept": (0, 1), "changed": (2, 3), "removed": (4,), "retired": (5,), "flaky": (0,), "private": (1,)}


def source_site() -> dict[str, Route]:
    routes = {ROBOTS: Route(b"User-agent: *\nAllow: /\n", "text/plain")}
    for n in range(6):
        routes[image_path(n)] = Route(encode(photo_like(2000 + n, 160, 120)), JPEG)
    for name, numbers in PAGES.items():
        routes[f"/{name}.html"] = page(name.title(), imgs(*numbers))
    routes["/kept.html"].headers = {"ETag": '"kept-1"'}
    routes["/"] = page("Home", "".join(f'<a href="/{name}.html">{name}</a>' for name in PAGES))
    return routes


def check(env: dict, tmp_path, *args: str) -> tuple[dict, str]:
    stats_file = tmp_path / f"check-{time.monotonic_ns()}.json"
    result = subprocess.run([sys.executable, "-m", "cli", "check-sources", *args, "--stats-file", str(stats_file)],
                            capture_output=True, text=True, timeout=240, env={**os.environ, **env})
    assert result.returncode == 0, result.stdout + result.stderr[-4000:]
    assert "Traceback" not in result.stderr, result.stderr[-4000:]
    return json.loads(stats_file.read_text()), result.stdout


def sources_by_page(es, alias: str) -> dict[tuple[str, int], dict]:
    """(page name, image number) -> the source document."""
    es.indices.refresh(index=sources_alias(alias))
    found = {}
    for hit in es.search(index=sources_alias(alias), size=100)["hits"]["hits"]:
        doc = hit["_source"]
        name = doc["page_url"].rsplit("/", 1)[-1].removesuffix(".html")
        found[(name, int(doc["image_url"].rsplit("/", 1)[-1].removesuffix(".jpg")))] = doc
    return found


def check_stats(stats: dict) -> dict:
    return {k.removeprefix("imgsearch/check/"): v for k, v in stats.items() if k.startswith("imgsearch/check/")}


@pytest.fixture
def env(crawl_settings_env, index_alias):
    return {**crawl_settings_env, "IMGSEARCH_INDEX": index_alias, "RETRY_TIMES": "0"}


def test_gone_pages_and_images_are_marked_kept_and_rechecked_conditionally(env, es, index_alias, tmp_path):
    routes = source_site()
    with SiteServer(routes) as site:
        crawl(env, tmp_path, site.url + "/")
        before = sources_by_page(es, index_alias)
        assert sorted(before) == sorted((name, n) for name, numbers in PAGES.items() for n in numbers)

        # The site changes: an image taken off a page, a page removed, one retired (410), one failing, one
        # closed to robots.
        site.routes["/changed.html"] = page("Changed", imgs(3))
        del site.routes["/removed.html"]
        site.routes["/retired.html"] = Route(b"retired", status=410)
        site.routes["/flaky.html"] = Route(b"oops", status=500)
        site.routes[ROBOTS] = Route(b"User-agent: *\nDisallow: /private.html\n", "text/plain")
        stats, out = check(env, tmp_path)
        first = sources_by_page(es, index_alias)
        counted = check_stats(stats)
        assert counted["pages"] == 6 and counted.get("conditional", 0) == 0
        assert counted["sources/live"] == 3 and counted["sources/gone"] == 3 and counted["sources/unchecked"] == 2, \
            json.dumps(counted)
        assert counted["page_gone/http_404"] == 1 and counted["page_gone/http_410"] == 1
        assert counted["failed/http_500"] == 1 and counted["skipped/robots_disallowed"] == 1
        assert "gone now 3" in out and site.requests["/private.html"] == 1, "robots.txt is obeyed"

        assert first.keys() == before.keys(), "gone sources are kept"
        gone = {key: (doc["gone_reason"], bool(doc["gone_since"])) for key, doc in first.items()
                if doc.get("gone_since")}
        assert gone == {("changed", 2): ("image_removed", True), ("removed", 4): ("http_404", True),
                        ("retired", 5): ("http_410", True)}
        for key in (("kept", 0), ("kept", 1), ("changed", 3)):
            assert first[key]["checked"] and not first[key].get("gone_since"), key
        assert first[("kept", 0)]["page_etag"] == '"kept-1"'
        for key in (("flaky", 0), ("private", 1)):
            assert first[key] == before[key], f"{key}: a page that could not be checked is left as it was"
        for key, doc in first.items():
            assert doc["first_seen"] == before[key]["first_seen"] and doc["last_seen"] == before[key]["last_seen"]

        # The removed page is back; the kept page has not changed (its ETag): asked for conditionally.
        site.routes["/removed.html"] = page("Removed", imgs(4))
        time.sleep(0.01)
        stats, _ = check(env, tmp_path, "--older-than", "0")
        second = sources_by_page(es, index_alias)
        counted = check_stats(stats)
        assert site.not_modified["/kept.html"] == 1 and counted["not_modified"] == 1
        assert counted["conditional"] >= 1 and counted["sources/not_modified"] == 2
        assert counted["sources/back"] == 1 and counted["sources/still_gone"] == 2
        assert not second[("removed", 4)].get("gone_since") and not second[("removed", 4)].get("gone_reason")
        for key in (("changed", 2), ("retired", 5)):
            assert second[key]["gone_since"] == first[key]["gone_since"], "gone since the first check that saw it"
            assert second[key]["checked"] > first[key]["checked"]
        assert second[("kept", 0)]["checked"] > first[("kept", 0)]["checked"]

        # Everything was checked, or seen live by the crawl, within a day: nothing to do.
        pages_before = site.fetched("/") - site.fetched(ROBOTS) - site.fetched("/img/")
        stats, out = check(env, tmp_path, "--older-than", "1")
        assert check_stats(stats).get("pages", 0) == 0 and "pages 0" in out
        assert site.fetched("/") - site.fetched(ROBOTS) - site.fetched("/img/") == pages_before
        assert es.count(index=sources_alias(index_alias))["count"] == len(before)
