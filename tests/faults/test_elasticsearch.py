"""Elasticsearch faults in the middle of a real crawl: the cluster goes away and comes back, answers 429 to a
third of the bulk requests, answers slowly. The crawl's client talks to the cluster through `ClusterProxy`
(the shared node is never stopped); the test reads the outcome from the node directly.

Outcome wanted each time: every image indexed exactly once, every occurrence once (after `imgsearch replay`
where the crawl says so), retries counted in `imgsearch/index/retried`, memory bounded.
"""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
import time

import pytest

from crawler.sample_site import SiteServer
from index_setup.mappings import sources_alias, urls_alias
from tests.faults.crawls import Crawl, all_ids, count
from tests.faults.es_proxy import ClusterProxy
from tests.test_indexing import Reply
from tests.test_recrawl import gallery_site
from tests.waiting import wait_for

PAGES, PER_PAGE, SHARED = 6, 8, 1
IMAGES = PAGES * PER_PAGE + SHARED  # 49 distinct images
OCCURRENCES = PAGES * (PER_PAGE + SHARED)  # 54 (image, page) pairs


@pytest.fixture
def proxy(es_upstream):
    server = ClusterProxy(es_upstream).start()
    yield server
    server.stop()


@pytest.fixture
def site():
    routes = gallery_site(PAGES, PER_PAGE, shared=SHARED)
    for path, route in routes.items():
        if path.startswith(("/img/", "/shared/")):
            route.delay = 0.05  # a site that takes a little while, so that faults land mid-crawl
    with SiteServer(routes) as server:
        yield server


def expected_ids(site: SiteServer) -> set[str]:
    return {hashlib.sha256(r.body).hexdigest() for p, r in site.routes.items() if p.startswith(("/img/", "/shared/"))}


def es_env(fault_env: dict[str, str], proxy: ClusterProxy, **extra: str) -> dict[str, str]:
    return {**fault_env, "ES_URL": proxy.url, "IMGSEARCH_INDEX_BATCH_SIZE": "10", "IMGSEARCH_EMBED_BATCH_SIZE": "8",
            **extra}


def outcome(es, alias: str, site: SiteServer) -> tuple[int, int, int, int]:
    """(images lost, image documents, occurrences, urls documents); duplicates are impossible by id, so "exactly
    once" is: the ids are the expected ones and the counts match."""
    ids = set(all_ids(es, alias))
    lost = len(expected_ids(site) - ids)
    assert ids <= expected_ids(site), "a document that is no image of the site"
    return lost, len(ids), count(es, sources_alias(alias)), count(es, urls_alias(alias))


def downloaded(site: SiteServer) -> int:
    return site.fetched("/img/") + site.fetched("/shared/")


def crawl_through_outage(es, alias: str, site: SiteServer, proxy: ClusterProxy, env: dict[str, str], tmp_path,
                         seconds: float):
    """Crawl the site; once 8 images are indexed, the cluster goes away for `seconds`, then comes back.
    Returns the crawl's result and how long the cluster was down."""
    crawl = Crawl([site.url + "/"], env, tmp_path)
    try:
        wait_for(lambda: count(es, alias) >= 8 or crawl.poll(), 180, "8 images indexed")
        assert crawl.poll() is None, "the crawl ended before the cluster could go away"
        proxy.go_down()
        went_down = time.monotonic()
        wait_for(lambda: time.monotonic() - went_down >= seconds, 10, f"{seconds:.0f} s of outage")
        proxy.come_back()
        down_for = time.monotonic() - went_down
        return crawl.wait(240), down_for
    finally:
        crawl.kill()


def test_cluster_down_for_a_few_seconds_mid_crawl_is_ridden_out_by_retries(es, alias, fault_env, proxy, site,
                                                                            tmp_path, fault_table):
    env = es_env(fault_env, proxy, IMGSEARCH_INDEX_MAX_RETRIES="5", IMGSEARCH_INDEX_RETRY_BACKOFF="0.5")
    result, down_for = crawl_through_outage(es, alias, site, proxy, env, tmp_path, 5)
    lost, images, sources, urls = outcome(es, alias, site)
    fault_table.row(f"ES down {down_for:.0f} s mid-crawl (proxy refuses), then back",
                    f"exit {result.returncode}, retried "
                    f"{result.stat('imgsearch/index/retried')}, dead-lettered "
                    f"{result.stat('imgsearch/index/dead_lettered')}; {images} images, {sources} occurrences, "
                    f"{urls} urls; peak RSS {result.peak_rss_mb:.0f} MB", lost)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "Traceback" not in result.stderr
    assert result.stat("imgsearch/index/retried") > 0
    assert result.stat("imgsearch/index/dead_lettered") == 0
    assert (lost, images, sources, urls) == (0, IMAGES, OCCURRENCES, IMAGES)


def test_cluster_down_longer_than_the_retries_is_dead_lettered_then_replayed(es, alias, fault_env, proxy, site,
                                                                             tmp_path, fault_table):
    env = es_env(fault_env, proxy, IMGSEARCH_INDEX_MAX_RETRIES="1", IMGSEARCH_INDEX_RETRY_BACKOFF="0.2")
    result, down_for = crawl_through_outage(es, alias, site, proxy, env, tmp_path, 4)
    dead = result.stat("imgsearch/index/dead_lettered")
    lost_before, images_before, _, _ = outcome(es, alias, site)
    letters = result.stats.get("imgsearch/index/dead_letter_file")
    replay = subprocess.run([sys.executable, "-m", "cli", "replay", str(letters)], capture_output=True, text=True,
                            timeout=120, env={**os.environ, **env}) if letters else None
    lost, images, sources, urls = outcome(es, alias, site)
    fault_table.row(f"ES down {down_for:.0f} s, longer than the retries (1 retry)",
                    f"exit {result.returncode}, {dead} writes dead-lettered ({lost_before} images missing), "
                    f"crawl says `imgsearch replay`; replay exit {replay.returncode if replay else '-'}: "
                    f"{images} images, {sources} occurrences, {urls} urls (a URL whose image write failed is "
                    f"fetched again next crawl)", lost)
    assert result.returncode == 1, result.stderr[-3000:]
    assert "Traceback" not in result.stderr
    assert dead > 0 and letters and f"imgsearch replay {letters}" in result.stderr
    assert images_before < IMAGES
    assert replay.returncode == 0, replay.stdout + replay.stderr
    assert (lost, images, sources) == (0, IMAGES, OCCURRENCES)
    assert urls <= IMAGES


def test_429_with_retry_after_to_a_third_of_the_bulks(es, alias, fault_env, proxy, site, tmp_path, fault_table):
    proxy.reset(lambda n: Reply(429, {"Retry-After": "1"}) if n % 3 == 0 else None)
    env = es_env(fault_env, proxy, IMGSEARCH_INDEX_MAX_RETRIES="5", IMGSEARCH_INDEX_RETRY_BACKOFF="0.1")
    result = Crawl([site.url + "/"], env, tmp_path).wait(240)
    refused = [size for size, fault in zip(proxy.bulk_sizes, proxy.faults, strict=True) if fault == "Reply"]
    lost, images, sources, urls = outcome(es, alias, site)
    fault_table.row("429 + Retry-After: 1 to every third bulk request",
                    f"exit {result.returncode}, {len(refused)} of {proxy.bulk_count} bulks refused "
                    f"({sum(refused)} actions), retried {result.stat('imgsearch/index/retried')}, dead-lettered "
                    f"{result.stat('imgsearch/index/dead_lettered')}; {images} images, {sources} occurrences; "
                    f"{result.seconds:.0f} s, peak RSS {result.peak_rss_mb:.0f} MB", lost)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "Traceback" not in result.stderr
    assert len(refused) >= 3
    assert result.stat("imgsearch/index/retried") == sum(refused), "each refused action is retried and counted"
    assert (lost, images, sources, urls) == (0, IMAGES, OCCURRENCES, IMAGES)


def test_a_cluster_answering_bulks_in_5_s_slows_the_crawl_without_buffering_it(es, alias, fault_env, proxy, site,
                                                                               tmp_path, fault_table):
    proxy.delay = 5.0
    in_flight = 20  # fewer than the site's images, so that the bound is reached
    env = es_env(fault_env, proxy, IMGSEARCH_INDEX_BATCH_SIZE="25", IMGSEARCH_INDEX_FLUSH_SECONDS="2",
                 IMGSEARCH_FETCH_MAX_IN_FLIGHT=str(in_flight))
    crawl = Crawl([site.url + "/"], env, tmp_path)
    ahead = []  # images downloaded but not yet written, sampled through the crawl

    def sample() -> bool:
        ahead.append(downloaded(site) - count(es, alias))
        return crawl.poll() is not None

    try:
        wait_for(sample, 240, "the crawl to end", interval=0.5)
    finally:
        crawl.kill()
    result = crawl.poll()
    lost, images, sources, urls = outcome(es, alias, site)
    fault_table.row("every bulk request answered in 5 s",
                    f"exit {result.returncode}, {proxy.delayed} slow bulks, {result.seconds:.0f} s; up to "
                    f"{max(ahead)} images downloaded ahead of the index (of {IMAGES}); peak RSS "
                    f"{result.peak_rss_mb:.0f} MB; {images} images, {sources} occurrences", lost)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "Traceback" not in result.stderr
    assert (lost, images, sources, urls) == (0, IMAGES, OCCURRENCES, IMAGES)
    assert proxy.delayed >= 2, "the bulks were slowed"
    # Downloads wait for the index: no more images between the two than the fetch stage lets through.
    assert max(ahead) <= in_flight, ahead


BIG_PAGES, BIG_PER_PAGE = 25, 10  # 250 images
AHEAD_BOUND = 60  # IMGSEARCH_FETCH_MAX_IN_FLIGHT for this crawl: the images allowed between download and index


def test_while_the_cluster_holds_every_bulk_the_crawl_stops_downloading(es, alias, fault_env, proxy, tmp_path,
                                                                        fault_table):
    proxy.hold()
    env = es_env(fault_env, proxy, ES_REQUEST_TIMEOUT="300", IMGSEARCH_FETCH_MAX_IN_FLIGHT=str(AHEAD_BOUND))
    with SiteServer(gallery_site(BIG_PAGES, BIG_PER_PAGE)) as big:
        crawl = Crawl([big.url + "/", "--depth", "1"], env, tmp_path)
        try:
            history: list[int] = []

            def settled() -> bool:  # bulks are hanging, and no image was downloaded for 5 s
                history.append(downloaded(big))
                if not proxy.bulk_times:
                    history.clear()
                return crawl.poll() is not None or (len(history) > 20 and history[-21] == history[-1])

            wait_for(settled, 180, "downloads to stop while the bulks hang", interval=0.25)
            held_bulks, ahead = len(proxy.bulk_times), downloaded(big) - count(es, alias)
            proxy.release()
            result = crawl.wait(240)
        finally:
            proxy.release()
            crawl.kill()
        lost = BIG_PAGES * BIG_PER_PAGE - count(es, alias)
    fault_table.row("every bulk request held unanswered (back-pressure)",
                    f"{held_bulks} bulks hanging; downloads stopped {ahead} images ahead of the index, of "
                    f"{BIG_PAGES * BIG_PER_PAGE} (bound {AHEAD_BOUND}); released: exit {result.returncode}, "
                    f"{BIG_PAGES * BIG_PER_PAGE - lost} indexed, peak RSS {result.peak_rss_mb:.0f} MB", lost)
    assert result.returncode == 0, result.stderr[-3000:]
    assert lost == 0
    assert ahead <= AHEAD_BOUND, f"{ahead} images downloaded while no bulk was answered"
