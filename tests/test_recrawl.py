"""Scheduled re-crawls: nothing known is downloaded again, validators are used, a killed crawl resumes losing
nothing, two runs of one job never overlap; and the source finder's "where did it appear first?"."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading

import pytest

from crawler.sample_site import Route, SiteServer, encode, page, photo_like
from index_setup.indices import delete_indices
from index_setup.mappings import sources_alias, urls_alias
from query import Searcher
from tests.test_crawl import crawl
from tests.waiting import wait_for

JPEG = "image/jpeg"




@pytest.fixture
def alias(index_alias, request, es):
    name = f"{index_alias}-{request.node.name[5:25].replace('_', '-')}"
    yield name
    delete_indices(es, name)


def gallery_site(pages: int, per_page: int, *, validators: bool = False, shared: int = 0) -> dict[str, Route]:
    """`pages` pages of `per_page` distinct images each, plus `shared` images shown on every page."""
    routes = {"/robots.txt": Route(b"User-agent: *\nAllow: /\n", "text/plain")}
    shared_cells = []
    for s in range(shared):
        routes[f"/shared/{s}.jpg"] = Route(encode(photo_like(5000 + s, 200, 160)), JPEG)
        shared_cells.append(f'<img src="/shared/{s}.jpg">')
    links = []
    for p in range(pages):
        cells = list(shared_cells)
        for i in range(per_page):
            n = p * per_page + i
            headers = {"ETag": f'"img-{n}"', "Last-Modified": "Mon, 02 Nov 2026 10:00:00 GMT"} if validators else None
            routes[f"/img/{n}.jpg"] = Route(encode(photo_like(1000 + n, 160, 120)), JPEG, headers=headers)
            cells.append(f'<img src="/img/{n}.jpg" alt="image {n}">')
        routes[f"/page/{p}.html"] = page(f"Page {p}", "".join(cells))
        links.append(f'<a href="/page/{p}.html">{p}</a>')
    routes["/"] = page("Index", "".join(links))
    return routes


def test_a_recrawl_downloads_no_known_image_and_records_each_occurrence(crawl_settings_env, alias, es, tmp_path):
    env = {**crawl_settings_env, "IMGSEARCH_INDEX": alias}
    with SiteServer(gallery_site(3, 4, shared=1)) as site:
        first = crawl(env, tmp_path, site.url + "/")
        assert first["imgsearch/index/images_created"] == 13
        es.indices.refresh(index=f"{alias},{sources_alias(alias)},{urls_alias(alias)}")
        before = {h["_id"]: h["_source"] for h in es.search(index=sources_alias(alias), size=100)["hits"]["hits"]}
        assert es.count(index=urls_alias(alias))["count"] == 13
        images_before = dict(site.requests)

        second = crawl(env, tmp_path, site.url + "/")
        assert second.get("imgsearch/fetch/downloaded", 0) == 0, "no known image is downloaded again"
        assert second["imgsearch/fetch/skipped_known"] == 13
        assert second.get("imgsearch/index/images_created", 0) == 0
        assert second.get("imgsearch/embed/embedded", 0) == 0
        for path, count in images_before.items():
            if path.endswith(".jpg"):
                assert site.requests[path] == count, path
    es.indices.refresh(index=f"{alias},{sources_alias(alias)}")
    assert es.count(index=alias)["count"] == 13
    after = {h["_id"]: h["_source"] for h in es.search(index=sources_alias(alias), size=100)["hits"]["hits"]}
    assert after.keys() == before.keys() and len(after) == 15  # 12 + the shared image on 3 pages
    for key, doc in after.items():
        assert doc["first_seen"] == before[key]["first_seen"]
        assert doc["last_seen"] > before[key]["last_seen"]


def test_stale_urls_are_revalidated_with_their_etag(crawl_settings_env, alias, es, tmp_path):
    env = {**crawl_settings_env, "IMGSEARCH_INDEX": alias, "IMGSEARCH_REFRESH_DAYS": "0"}
    with SiteServer(gallery_site(1, 5, validators=True)) as site:
        crawl(env, tmp_path, site.url + "/")
        assert sum(site.not_modified.values()) == 0
        es.indices.refresh(index=urls_alias(alias))
        stored = es.search(index=urls_alias(alias), size=10)["hits"]["hits"]
        assert sorted(h["_source"]["etag"] for h in stored) == [f'"img-{n}"' for n in range(5)]
        fetched_before = {h["_id"]: h["_source"]["fetched"] for h in stored}

        stats = crawl(env, tmp_path, site.url + "/")
        assert stats["imgsearch/fetch/not_modified"] == 5
        assert stats.get("imgsearch/fetch/downloaded", 0) == 0
        assert sum(site.not_modified.values()) == 5
        # The site changes one image (a new ETag): it is downloaded and indexed as the new image it is.
        site.routes["/img/0.jpg"] = Route(encode(photo_like(77, 160, 120)), JPEG, headers={"ETag": '"img-0-v2"'})
        changed = crawl(env, tmp_path, site.url + "/")
        assert changed["imgsearch/fetch/downloaded"] == 1 and changed["imgsearch/fetch/not_modified"] == 4
        assert changed["imgsearch/index/images_created"] == 1
    es.indices.refresh(index=f"{alias},{urls_alias(alias)}")
    after = {h["_id"]: h["_source"]["fetched"] for h in es.search(index=urls_alias(alias), size=10)["hits"]["hits"]}
    assert all(after[k] > fetched_before[k] for k in fetched_before), "a 304 counts as fetched now"
    assert es.count(index=alias)["count"] == 6


def test_an_image_on_three_pages_lists_three_sources_oldest_first(crawl_settings_env, alias, es, tmp_path):
    env = {**crawl_settings_env, "IMGSEARCH_INDEX": alias}
    photo = encode(photo_like(4242, 400, 300))
    routes = {"/robots.txt": Route(b"User-agent: *\nAllow: /\n", "text/plain"),
              "/photo.jpg": Route(photo, JPEG),
              "/first.html": page("Where it was first", '<img src="/photo.jpg">')}
    with SiteServer(routes) as site:
        crawl(env, tmp_path, site.url + "/first.html")
        site.routes["/"] = page("Home", '<a href="/first.html">1</a><a href="/second.html">2</a>'
                                        '<a href="/third.html">3</a><img src="/photo.jpg">')
        site.routes["/second.html"] = page("Copied", '<img src="/photo.jpg">')
        site.routes["/third.html"] = page("Copied again", '<img src="/photo.jpg">')
        crawl(env, tmp_path, site.url + "/")
    es.indices.refresh(index=f"{alias},{sources_alias(alias)}")
    searcher = Searcher(env_settings(env))
    try:
        answer = searcher.find_sources(photo, index=alias)
    finally:
        searcher.close()
    pages = [s["page_url"].rsplit("/", 1)[-1] for s in answer["sources"]]
    assert answer["sources_total"] == 4 and pages[0] == "first.html"
    assert sorted(pages[1:]) == ["", "second.html", "third.html"]
    firsts = [s["first_seen"] for s in answer["sources"]]
    assert firsts == sorted(firsts) and firsts[0] < firsts[1]
    assert answer["oldest"]["page_title"] == "Where it was first"
    assert {s["match"] for s in answer["sources"]} == {"exact"}


def env_settings(env: dict):
    from crawler.config import load_settings

    return load_settings(env)


def test_a_crawl_killed_with_sigkill_resumes_with_every_image_and_occurrence_once(crawl_settings_env, alias, es,
                                                                                  tmp_path):
    pages, per_page, shared = 24, 10, 2  # 242 images, 264 occurrences
    env = {**crawl_settings_env, "IMGSEARCH_INDEX": alias, "IMGSEARCH_INDEX_BATCH_SIZE": "20",
           "IMGSEARCH_EMBED_BATCH_SIZE": "8", "CONCURRENT_REQUESTS_PER_DOMAIN": "8"}
    job = tmp_path / "job"
    args = [sys.executable, "-m", "cli", "crawl", "--job-dir", str(job)]
    with SiteServer(gallery_site(pages, per_page, shared=shared)) as site:
        # Images answer slowly, so that many pages are in flight when the crawl is killed.
        for path, route in site.routes.items():
            if path.startswith("/img/"):
                route.delay = 0.05
        victim = subprocess.Popen([*args, site.url + "/"], env={**os.environ, **env}, stdout=subprocess.DEVNULL,
                                  stderr=subprocess.DEVNULL)
        try:
            def indexed() -> int:
                if not es.indices.exists(index=alias):
                    return 0
                es.indices.refresh(index=alias)
                return es.count(index=alias)["count"]

            wait_for(lambda: indexed() >= 80 or victim.poll() is not None, 180, "the crawl to index 80 images")
            assert victim.poll() is None, "the crawl ended before it could be killed"
            victim.send_signal(signal.SIGKILL)
            victim.wait(30)
        finally:
            if victim.poll() is None:
                victim.kill()
        killed_at = indexed()
        assert killed_at < pages * per_page + shared, "killed in the middle"
        pages_before = site.fetched("/page/")
        stats_file = tmp_path / "resumed.json"
        resumed = subprocess.run([*args, site.url + "/", "--stats-file", str(stats_file)], capture_output=True,
                                 text=True, timeout=300, env={**os.environ, **env})
        assert resumed.returncode == 0, resumed.stderr[-3000:]
        stats = json.loads(stats_file.read_text())
        # Pages finished before the kill are not crawled again; only the unfinished ones are.
        assert site.fetched("/page/") - pages_before == stats["imgsearch/job/resumed_pages"] < pages
    assert stats["imgsearch/job/resumed_pages"] > 0
    es.indices.refresh(index=f"{alias},{sources_alias(alias)}")
    assert es.count(index=alias)["count"] == pages * per_page + shared
    assert es.count(index=sources_alias(alias))["count"] == pages * (per_page + shared)
    per_page_counts = es.search(index=sources_alias(alias), size=0, aggs={
        "pages": {"terms": {"field": "page_url", "size": 100}}})["aggregations"]["pages"]["buckets"]
    assert len(per_page_counts) == pages and {b["doc_count"] for b in per_page_counts} == {per_page + shared}


def test_a_second_run_of_the_same_job_is_refused_at_once(crawl_settings_env, alias, tmp_path):
    env = {**crawl_settings_env, "IMGSEARCH_INDEX": alias}
    job = tmp_path / "job"
    routes = gallery_site(2, 3)
    held = threading.Event()  # the first run's images wait until the second run has been refused
    for path, route in routes.items():
        if path.startswith("/img/"):
            route.gate = held
    with SiteServer(routes) as site:
        args = [sys.executable, "-m", "cli", "crawl", "--job-dir", str(job), site.url + "/"]
        first = subprocess.Popen(args, env={**os.environ, **env}, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                 text=True)
        try:
            lock = job / "imgsearch.lock"
            wait_for(lambda: lock.exists() and f"pid {first.pid}" in lock.read_text(), 60, "the first run's lock")
            second = subprocess.run(args, capture_output=True, text=True, timeout=60, env={**os.environ, **env})
            assert first.poll() is None, "the first run was still crawling when the second started"
            assert second.returncode == 2
            assert "another run of this job is in progress" in second.stderr
            assert f"pid {first.pid}" in second.stderr
            assert "Traceback" not in second.stderr
            held.set()
            out, err = first.communicate(timeout=240)
            assert first.returncode == 0, err[-3000:]
        finally:
            held.set()
            if first.poll() is None:
                first.kill()
        # The lock goes with the process: the next run of the job goes ahead.
        again = subprocess.run(args, capture_output=True, text=True, timeout=240, env={**os.environ, **env})
        assert again.returncode == 0, again.stderr[-3000:]


def test_a_page_redirecting_to_a_page_already_crawled_is_finished_in_the_job_journal(crawl_settings_env, alias,
                                                                                     tmp_path):
    from crawler.jobstate import PageJournal

    routes = gallery_site(2, 1)
    # /old.html, linked after the pages, redirects to one of them: the redirect ends in the duplicate filter.
    routes["/"] = page("Index", '<a href="/page/0.html">0</a> <a href="/page/1.html">1</a> '
                                '<a href="/old.html">old</a>')
    routes["/old.html"] = Route(b"", status=301, headers={"Location": "/page/0.html"})
    job = tmp_path / "job"
    env = {**crawl_settings_env, "IMGSEARCH_INDEX": alias, "CONCURRENT_REQUESTS_PER_DOMAIN": "1"}
    with SiteServer(routes) as site:
        result = subprocess.run([sys.executable, "-m", "cli", "crawl", "--job-dir", str(job), site.url + "/"],
                                capture_output=True, text=True, timeout=300, env={**os.environ, **env})
        assert result.returncode == 0, result.stderr[-3000:]
        assert site.fetched("/old.html") == 1
    seen, pending = PageJournal(job).load()
    assert pending == [], "every page the crawl took up is finished: a resume has nothing to fetch again"
    assert len(seen) >= 4
