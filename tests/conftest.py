"""Shared fixtures: the real Elasticsearch node (started through the code of `imgsearch es start`)."""

from __future__ import annotations

import os
import re
import uuid
from urllib.parse import urlsplit

import pytest

from crawler.config import load_settings
from index_setup.client import ClusterError, cluster_info, es_client
from index_setup.indices import delete_indices
from index_setup.local_node import LocalNode

_cluster: dict = {}


def weaker_setup(reason: str) -> None:
    """Skip a test this setup cannot run, except in CI (CI=true), where the suite's own setup runs them all:
    there a skip would hide a weaker setup, so it fails."""
    if os.environ.get("CI", "").lower() in ("1", "true", "yes"):
        pytest.fail(f"CI must run this test: {reason}", pytrace=False)
    pytest.skip(reason)


@pytest.fixture(scope="session")
def es_settings():
    """Settings that point at a running Elasticsearch: ES_URL when set, else the local node, started here."""
    settings = load_settings()
    if not settings.get("ES_URL"):
        node = LocalNode(settings.get("IMGSEARCH_CACHE_DIR"), port=settings.getint("IMGSEARCH_ES_PORT"),
                         heap=settings.get("IMGSEARCH_ES_HEAP"))
        node.start()
    client = es_client(settings)
    try:
        _cluster.update(cluster_info(client, settings))
    except ClusterError as exc:
        pytest.fail(f"Elasticsearch is required for these tests: {exc}", pytrace=False)
    return settings


@pytest.fixture(scope="session")
def es_upstream(es_settings) -> tuple[str, int]:
    """(host, port) of the cluster's first node, for the tests that put a fault proxy in front of it. The proxies
    speak plain HTTP without credentials: against a cluster with TLS or a password those tests are skipped, or fail
    in CI (the suite's own node, which CI runs, has neither)."""
    url = (es_settings.get("ES_URL") or "").split(",")[0].strip()
    if not url:
        return "127.0.0.1", es_settings.getint("IMGSEARCH_ES_PORT")
    parts = urlsplit(url)
    if parts.scheme != "http" or parts.username:
        weaker_setup("the fault proxy speaks plain HTTP without credentials")
    return parts.hostname, parts.port or 9200


@pytest.fixture(scope="session")
def es(es_settings):
    client = es_client(es_settings)
    yield client
    client.close()


@pytest.fixture(scope="module")
def index_alias(request, es):
    """An index alias of this test module's own, deleted afterwards, so tests never collide."""
    module = re.sub(r"[^a-z0-9]+", "-", request.module.__name__.rsplit(".", 1)[-1].lower())
    alias = f"test-{module}-{uuid.uuid4().hex[:8]}"
    yield alias
    delete_indices(es, alias)


def pytest_terminal_summary(terminalreporter):
    if _cluster:
        terminalreporter.write_line(
            f"Elasticsearch used by the tests: {_cluster['version']} at {_cluster['url']} "
            f"(cluster {_cluster['cluster_name']}, health {_cluster['status']})")


@pytest.fixture(scope="session")
def standin_models(tmp_path_factory):
    """The small random-weight CLIP pair, built offline, loaded through the same code as the real models."""
    from pipelines.standin_models import build_models

    return build_models(tmp_path_factory.mktemp("models"), "tiny")


@pytest.fixture(scope="session")
def wide_standin_models(tmp_path_factory):
    """The stand-in pair encoding into 768 dims (ViT-L/14's size), for what must work with any model's."""
    from pipelines.standin_models import build_models

    return build_models(tmp_path_factory.mktemp("wide-models"), "tiny", dims=768)


@pytest.fixture(scope="session")
def crawl_settings_env(es_settings, standin_models, tmp_path_factory):
    """Environment for a crawl in a subprocess: test models, a scratch store, no politeness delays."""
    image, text = standin_models
    scratch = tmp_path_factory.mktemp("crawl")
    env = {
        "IMGSEARCH_IMAGE_MODEL": str(image),
        "IMGSEARCH_TEXT_MODEL": str(text),
        "FILES_STORE": str(scratch / "store"),
        "IMGSEARCH_INDEX_DEAD_LETTER_DIR": str(scratch / "dead-letter"),
        "IMGSEARCH_EMBED_FLUSH_SECONDS": "0.2",
        "IMGSEARCH_INDEX_FLUSH_SECONDS": "0.2",
        "IMGSEARCH_PROGRESS_SECONDS": "0",
        "DOWNLOAD_DELAY": "0",
        "AUTOTHROTTLE_ENABLED": "false",
        "HF_HUB_OFFLINE": "1",
    }
    return env
