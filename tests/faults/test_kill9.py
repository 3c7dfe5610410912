"""A crawl with a job directory killed with SIGKILL at three random (seeded) points and resumed each time:
every image indexed once, every occurrence once (tests/test_recrawl.py has the single-kill version)."""

from __future__ import annotations

import random

from crawler.sample_site import SiteServer
from index_setup.mappings import sources_alias, urls_alias
from tests.faults.crawls import Crawl, count
from tests.faults.test_elasticsearch import downloaded
from tests.test_recrawl import gallery_site
from tests.waiting import wait_for

SEED = 20260809
PAGES, PER_PAGE, SHARED = 20, 6, 2  # enough left after the kills for a busy machine to lag behind them
IMAGES = PAGES * PER_PAGE + SHARED  # 122
OCCURRENCES = PAGES * (PER_PAGE + SHARED)  # 160


def test_three_sigkills_at_random_points_lose_and_repeat_nothing(es, alias, fault_env, tmp_path, fault_table):
    rng = random.Random(SEED)
    gains = [rng.randint(4, 16) for _ in range(3)]  # each run is killed once it has indexed this many images
    env = {**fault_env, "IMGSEARCH_INDEX_BATCH_SIZE": "8", "IMGSEARCH_EMBED_BATCH_SIZE": "8",
           "CONCURRENT_REQUESTS_PER_DOMAIN": "8"}
    job = str(tmp_path / "job")
    routes = gallery_site(PAGES, PER_PAGE, shared=SHARED)
    for path, route in routes.items():
        if path.startswith(("/img/", "/shared/")):
            route.delay = 0.05  # many pages in flight at each kill
    killed = []
    with SiteServer(routes) as site:
        for gain in gains:
            threshold = count(es, alias) + gain
            victim = Crawl(["--job-dir", job, site.url + "/"], env, tmp_path)
            try:
                wait_for(lambda t=threshold, v=victim: count(es, alias) >= t or v.poll(), 180,
                         f"{threshold} images indexed")
                assert victim.poll() is None, f"the crawl ended before the kill at {threshold} images"
            finally:
                victim.kill()
            killed.append((count(es, alias), site.fetched("/page/"), downloaded(site)))
        final = Crawl(["--job-dir", job, site.url + "/"], env, tmp_path).wait(300)
        page_fetches, image_fetches = site.fetched("/page/"), downloaded(site)
    images, sources, urls = count(es, alias), count(es, sources_alias(alias)), count(es, urls_alias(alias))
    per_page = es.search(index=sources_alias(alias), size=0, aggs={
        "pages": {"terms": {"field": "page_url", "size": 100}}})["aggregations"]["pages"]["buckets"]
    fault_table.row(f"kill -9 three times, each run after {', '.join(map(str, gains))} more images indexed (seed "
                    f"{SEED}), resumed each time",
                    f"killed with {', '.join(str(k[0]) for k in killed)} indexed; the last run exit "
                    f"{final.returncode}, resumed {final.stat('imgsearch/job/resumed_pages')} pages; pages fetched "
                    f"{page_fetches} for {PAGES}, images {image_fetches} for {IMAGES}; {images} images, {sources} "
                    f"occurrences, {urls} urls", IMAGES - images)
    assert final.returncode == 0, final.stderr[-3000:]
    assert "Traceback" not in final.stderr
    assert killed[-1][0] < IMAGES, "each kill was mid-crawl"
    assert (images, sources, urls) == (IMAGES, OCCURRENCES, IMAGES)
    assert len(per_page) == PAGES and {b["doc_count"] for b in per_page} == {PER_PAGE + SHARED}
