"""A local 3-node cluster (`imgsearch es start --nodes 3`): an index of 2 shards and 1 replica, two crawl workers
sharing one Redis frontier, and one Elasticsearch node SIGKILLed mid-crawl. Every image is indexed once, every
page fetched once by one of the workers, and queries answer while the node is gone and afterwards.

The cluster has its own ports (HTTP 9250-9252, transport 9350-9352), clear of the test node the other tests use
(9200) and of test_local_node's (9231); its folder is deleted afterwards."""

from __future__ import annotations

import hashlib
import os
import shutil
import signal
import uuid

import pytest

from crawler.sample_site import SiteServer
from tests.test_frontier import Gate, Workers, gallery, html_requests, redis_url, run_cli, worker_env
from tests.waiting import wait_for

__all__ = ["redis_url"]  # a fixture, used here

CLUSTER_PORT = 9250
PAGES, PER_PAGE = 16, 5
# Images served before the site holds every further one until the node has been killed.
BEFORE_KILL = 30
NO_ES_URL = {"ES_URL": "", "IMGSEARCH_ES_HEAP": "512m"}


@pytest.fixture(scope="module")
def cluster(es_settings):
    """The 3-node cluster, started and stopped through the CLI, from an empty folder."""
    from index_setup.local_node import LocalCluster

    cluster = LocalCluster(es_settings.get("IMGSEARCH_CACHE_DIR"), nodes=3, port=CLUSTER_PORT, heap="512m")
    if not cluster.status().running:
        shutil.rmtree(cluster.cluster_dir, ignore_errors=True)
    try:
        result = run_cli("es", "start", "--nodes", "3", "--port", str(CLUSTER_PORT), env=NO_ES_URL, timeout=420)
        assert result.returncode == 0, result.stdout + result.stderr[-4000:]
        assert f"export ES_URL={cluster.es_url}" in result.stdout
        yield cluster
    finally:
        stopped = run_cli("es", "stop", "--port", str(CLUSTER_PORT), "--nodes", "3", env=NO_ES_URL)
        assert stopped.returncode == 0, stopped.stderr
        assert not cluster.status().running
        shutil.rmtree(cluster.cluster_dir, ignore_errors=True)


@pytest.fixture(scope="module")
def cluster_client(cluster):
    from crawler.config import load_settings
    from index_setup.client import es_client

    client = es_client(load_settings({"ES_URL": cluster.es_url}))
    yield client
    client.close()


def test_status_shows_each_node_and_es_url_reaches_all_of_them(cluster, cluster_client):
    result = run_cli("es", "status", "--port", str(CLUSTER_PORT), env=NO_ES_URL)  # found without --nodes
    assert result.returncode == 0, result.stderr
    assert "3 node(s) joined" in result.stdout
    for url in cluster.urls:
        assert f"  {url}: Elasticsearch 8.19.21, pid " in result.stdout
    assert result.stdout.count("(elected master)") == 1
    assert cluster_client.cluster.health()["number_of_nodes"] == 3
    with_url = run_cli("es", "status", env={"ES_URL": cluster.es_url})
    assert with_url.returncode == 0 and "3 node(s)" in with_url.stdout, with_url.stderr


def test_scale_out_defaults_follow_the_nodes_and_the_device(monkeypatch):
    from crawler import settings

    assert settings.default_replicas(None) == 0
    assert settings.default_replicas("http://127.0.0.1:9200") == 0
    assert settings.default_replicas("http://a:9200, http://b:9200,") == 1
    assert settings.embed_batch_size("cpu", 32, 256) == 32
    assert settings.embed_batch_size("cuda:1", 32, 256) == 256
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "-1")
    assert settings.embed_batch_size("auto", 32, 256) == 32, "no GPU visible: the CPU size"


def victim_node(client, cluster, index: str):
    """A node holding a primary shard of the index, other than the elected master when there is one."""
    master = client.cat.master(format="json")[0]["node"]
    holders = sorted({row["node"] for row in client.cat.shards(index=index, format="json") if row["prirep"] == "p"})
    name = next((n for n in holders if n != master), holders[0])
    return cluster.node(int(name.removeprefix("node-")))


def test_two_workers_index_everything_once_while_a_node_is_killed(cluster, cluster_client, redis_url,
                                                                  crawl_settings_env, tmp_path):
    from crawler.config import load_settings
    from index_setup.indices import delete_indices
    from index_setup.mappings import sources_alias
    from query.search import Searcher

    alias = f"test-cluster-{uuid.uuid4().hex[:8]}"
    env = {**crawl_settings_env, "ES_URL": cluster.es_url, "IMGSEARCH_INDEX": alias, "IMGSEARCH_SHARDS": "2"}
    created = run_cli("index", "create", env=env)
    assert created.returncode == 0, created.stderr
    client = cluster_client
    concrete = next(iter(client.indices.get_alias(name=alias)))
    shape = client.indices.get_settings(index=concrete)[concrete]["settings"]["index"]
    assert (shape["number_of_shards"], shape["number_of_replicas"]) == ("2", "1"), "several nodes: one replica"
    client.cluster.health(index=f"{alias}*", wait_for_status="green", timeout="120s")

    home, pages_gate, held = Gate(), Gate(), Gate(passing=BEFORE_KILL)
    routes, images = gallery(PAGES, PER_PAGE, seed=700, home=home, pages_gate=pages_gate, images_gate=held,
                             image_delay=0.05)
    by_sha = {hashlib.sha256(data).hexdigest(): data for data in images.values()}
    workers = Workers(redis_url, f"imgsearch:{alias}", worker_env(env), tmp_path)
    searcher = Searcher(load_settings({k: v for k, v in env.items() if k.isupper()}))

    def indexed() -> int:
        return client.count(index=alias)["count"]

    try:
        with SiteServer(routes) as site:
            try:
                workers.start(site.url + "/")
                home.open()
                # Pages held until 6 are asked for: each worker takes at most 3, so both have some (without
                # this, the first worker could take every page before the idle second one asks).
                wait_for(lambda: len(html_requests(site)) == 7, 120, "both workers to take pages")
                pages_gate.open()
                wait_for(lambda: indexed() == BEFORE_KILL and held.served > BEFORE_KILL, 240,
                         f"the first {BEFORE_KILL} images to be indexed and the crawl to wait for more")
                node = victim_node(client, cluster, concrete)
                pid = node.status().pid
                os.kill(pid, signal.SIGKILL)
                wait_for(lambda: not node.status().running, 30, "the killed node to be gone")

                # During: a node is gone, the cluster answers from the replicas.
                some = client.search(index=alias, size=1, source=["sha256"])["hits"]["hits"][0]
                during = searcher.search_image(by_sha[some["_id"]], k=3, index=alias)
                assert during["results"][0]["match"] == "exact" and during["results"][0]["image_id"] == some["_id"]
                assert client.cluster.health()["number_of_nodes"] == 2

                held.open()
                stats = workers.finish()
            finally:
                home.open()
                pages_gate.open()
                held.open()
                workers.kill()

        assert html_requests(site) == {"/": 1, **{f"/p{i}.html": 1 for i in range(PAGES)}}, \
            "each page fetched once, by one worker or the other"
        assert {path: site.requests[path] for path in images} == {path: 1 for path in images}, \
            "each image downloaded once"
        assert all(s.get("scheduler/dequeued/redis", 0) > 0 for s in stats), "both workers crawled pages"
        assert all(s.get("imgsearch/index/dead_lettered", 0) == 0 for s in stats)
        assert sum(s.get("imgsearch/index/indexed", 0) for s in stats) == len(images)

        # After: every image once, every occurrence once, and queries answer.
        client.indices.refresh(index=f"{alias},{sources_alias(alias)}")
        ids = {h["_id"] for h in client.search(index=alias, size=200, source=False)["hits"]["hits"]}
        assert ids == set(by_sha) and indexed() == len(images)
        assert client.count(index=sources_alias(alias))["count"] == len(images)
        late = next(sha for sha in by_sha if sha != some["_id"])
        after = searcher.search_image(by_sha[late], k=3, index=alias)
        assert after["results"][0]["match"] == "exact" and after["results"][0]["image_id"] == late
    finally:
        searcher.close()
        delete_indices(client, alias)
