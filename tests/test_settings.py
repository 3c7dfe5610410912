"""Settings as a user gives them: the environment, the CLI's flags and `-s NAME=VALUE` on `scrapy crawl` (how
Scrapyd passes a job's settings). The defaults that depend on other settings follow whichever value is in force,
and a value that cannot be used is one line and exit status 2, not a traceback."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import uuid
from pathlib import Path

import pytest

from crawler.sample_site import Route, SiteServer, encode, page, photo_like
from crawler.settings import default_replicas

ROOT = Path(__file__).resolve().parent.parent


def imgsearch(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "cli", *args], capture_output=True, text=True, timeout=120,
                          env={**os.environ, **env})


@pytest.mark.parametrize(("name", "value", "expected"), [
    ("IMGSEARCH_REPLICAS", "two", "a whole number"),
    ("IMGSEARCH_EMBED_BATCH_SIZE", "1.5", "a whole number"),
    ("IMGSEARCH_INDEX_FLUSH_SECONDS", "soon", "a number"),
    ("ES_VERIFY_CERTS", "maybe", "true or false"),
])
def test_a_value_that_cannot_be_used_is_one_line_and_exit_2(name, value, expected, es, index_alias):
    result = imgsearch("index", "create", "--index", index_alias, env={name: value})
    assert result.returncode == 2, result.stdout + result.stderr
    assert result.stderr.splitlines() == [f"imgsearch: error: {name}={value!r}: expected {expected}"], result.stderr
    assert not es.indices.exists_alias(name=index_alias), "nothing is created with a setting refused"


def test_an_empty_variable_is_an_unset_one(es, index_alias, crawl_settings_env):
    empty = {name: "" for name in ("IMGSEARCH_REPLICAS", "IMGSEARCH_SHARDS", "IMGSEARCH_EMBED_BATCH_SIZE",
                                   "ES_VERIFY_CERTS", "IMGSEARCH_CACHE_DIR", "IMGSEARCH_PROGRESS_SECONDS")}
    # The stand-in model: a new image index takes its dims from the model.
    models = {name: crawl_settings_env[name] for name in ("IMGSEARCH_IMAGE_MODEL", "HF_HUB_OFFLINE")}
    result = imgsearch("index", "create", "--index", index_alias, env={**models, **empty})
    assert result.returncode == 0, result.stderr
    concrete = next(iter(es.indices.get_alias(name=index_alias)))
    shape = es.indices.get_settings(index=concrete)[concrete]["settings"]["index"]
    assert (shape["number_of_shards"], shape["number_of_replicas"]) == (
        "1", str(default_replicas(os.environ.get("ES_URL"))))


def test_overrides_of_the_cli_derive_replicas_and_batch_size_again(monkeypatch):
    from crawler.config import load_settings

    for name in ("ES_URL", "IMGSEARCH_REPLICAS", "IMGSEARCH_EMBED_DEVICE", "IMGSEARCH_EMBED_BATCH_SIZE"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("IMGSEARCH_EMBED_DEVICE", "cpu")
    nodes = {"ES_URL": "http://a:9200,http://b:9200"}
    assert load_settings(nodes).getint("IMGSEARCH_REPLICAS") == 1
    assert load_settings({**nodes, "IMGSEARCH_REPLICAS": 0}).getint("IMGSEARCH_REPLICAS") == 0, "explicit wins"
    assert load_settings().getint("IMGSEARCH_EMBED_BATCH_SIZE") == 32
    assert load_settings({"IMGSEARCH_EMBED_DEVICE": "cuda"}).getint("IMGSEARCH_EMBED_BATCH_SIZE") == 256
    assert load_settings({"IMGSEARCH_EMBED_DEVICE": "cuda", "IMGSEARCH_EMBED_BATCH_SIZE": "8"}).getint(
        "IMGSEARCH_EMBED_BATCH_SIZE") == 8


def test_scrapy_crawl_derives_replicas_and_batch_size_from_its_s_settings(crawl_settings_env, es_upstream, es):
    from index_setup.indices import delete_indices
    from tests.test_indexing import FaultProxy

    alias = f"test-settings-{uuid.uuid4().hex[:8]}"
    host, port = es_upstream
    # The environment names a GPU, the job's settings the CPU and two nodes: the node, and a proxy to it.
    proxy = FaultProxy(es_upstream).start()
    env = {**os.environ, **crawl_settings_env, "IMGSEARCH_EMBED_DEVICE": "cuda"}
    for name in ("ES_URL", "IMGSEARCH_REPLICAS", "IMGSEARCH_EMBED_BATCH_SIZE"):
        env.pop(name, None)
    with SiteServer({"/": page("One", '<img src="/one.jpg">'),
                     "/one.jpg": Route(encode(photo_like(50, 300, 300)), "image/jpeg")}) as site:
        try:
            result = subprocess.run(
                [sys.executable, "-m", "scrapy", "crawl", "site", "-a", f"start_urls={site.url}/", "-a", "depth=0",
                 "-s", f"IMGSEARCH_INDEX={alias}", "-s", f"ES_URL=http://{host}:{port},{proxy.url}",
                 "-s", "IMGSEARCH_EMBED_DEVICE=cpu"],
                cwd=ROOT, capture_output=True, text=True, timeout=240, env=env)
            log = result.stderr
            assert result.returncode == 0 and "Traceback" not in log, log[-4000:]
            assert "'imgsearch/index/indexed': 1" in log, log[-4000:]
            concrete = next(iter(es.indices.get_alias(name=alias)))
            replicas = es.indices.get_settings(index=concrete)[concrete]["settings"]["index"]["number_of_replicas"]
        finally:
            proxy.stop()
            delete_indices(es, alias)
    batch_size = re.search(r"'imgsearch/embed/batch_size': (\d+)", log).group(1)
    assert (replicas, batch_size) == ("1", "32"), "two nodes in ES_URL: one replica; on the CPU, the CPU's batch size"
