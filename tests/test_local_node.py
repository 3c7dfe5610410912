"""`imgsearch es` and the local node: idempotent start, stop, status, checksum, unpacking, error lines."""

from __future__ import annotations

import os
import subprocess
import sys
import zipfile

import pytest

from index_setup import local_node
from index_setup.local_node import LocalNode, NodeError
from tests.conftest import weaker_setup

IMGSEARCH = [sys.executable, "-m", "cli"]


def run_cli(*args, env=None, timeout=240):
    return subprocess.run([*IMGSEARCH, *args], capture_output=True, text=True, timeout=timeout,
                          env={**os.environ, **(env or {})})


def test_es_start_with_a_reachable_es_url_says_so_and_starts_nothing(es_settings):
    url = es_settings.get("ES_URL") or f"http://127.0.0.1:{es_settings.getint('IMGSEARCH_ES_PORT')}"
    result = run_cli("es", "start", env={"ES_URL": url})
    assert result.returncode == 0 and "nothing started" in result.stdout, result.stdout + result.stderr


def test_es_start_twice_reuses_the_node_and_status_reports_it(es_settings):
    if es_settings.get("ES_URL"):
        weaker_setup("ES_URL names the suite's cluster: the local node is not the one the tests use")
    first = run_cli("es", "start")
    second = run_cli("es", "start")
    assert first.returncode == second.returncode == 0, first.stderr + second.stderr
    pid = first.stdout.split("(pid ")[1].split(",")[0]
    assert f"(pid {pid}," in second.stdout
    status = run_cli("es", "status")
    assert status.returncode == 0
    assert " Elasticsearch 8." in status.stdout and ("health green" in status.stdout
                                                       or "health yellow" in status.stdout)


def test_second_node_starts_stops_and_reports(es_settings):
    # Runs even when ES_URL names another cluster: the local node code must work on every machine.
    node = LocalNode(es_settings.get("IMGSEARCH_CACHE_DIR"), port=9231, heap="256m")
    try:
        started = node.start()
        assert started.running and started.version.startswith("8.") and started.health in ("green", "yellow")
        assert node.start().pid == started.pid
    finally:
        assert node.stop()
    assert not node.status().running
    assert not node.stop()


def test_unreachable_cluster_is_one_line_without_credentials():
    result = run_cli("index", "info", env={"ES_URL": "http://elastic:s3cr3t-pw@127.0.0.1:9", "ES_API_KEY": ""})
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [
        "imgsearch: error: Elasticsearch is unreachable at http://***@127.0.0.1:9"]
    assert "s3cr3t" not in result.stdout + result.stderr


def test_es_start_with_es_url_starts_nothing():
    result = run_cli("es", "start", env={"ES_URL": "http://127.0.0.1:9"})
    assert result.returncode == 2
    assert "unreachable at http://127.0.0.1:9" in result.stderr


def test_a_download_with_the_wrong_checksum_is_refused_and_deleted(tmp_path, monkeypatch):
    def fake_download(target):
        target.write_bytes(b"not elasticsearch")
        return True

    monkeypatch.setattr(local_node, "_download_with_maven", fake_download)
    with pytest.raises(NodeError, match="checksum mismatch"):
        local_node.obtain_distribution(tmp_path)
    assert list((tmp_path / "downloads").iterdir()) == []


def test_unpack_keeps_exec_bits_and_finds_the_home(tmp_path):
    archive = tmp_path / "es.zip"
    with zipfile.ZipFile(archive, "w") as zf:
        info = zipfile.ZipInfo("elasticsearch-8.0.0/bin/elasticsearch")
        info.external_attr = 0o755 << 16
        zf.writestr(info, "#!/bin/sh\n")
        zf.writestr("elasticsearch-8.0.0/config/elasticsearch.yml", "")
    home = local_node._unpack(archive, tmp_path / "out")
    assert home == tmp_path / "out" / "elasticsearch-8.0.0"
    assert os.access(home / "bin" / "elasticsearch", os.X_OK)


def test_not_a_distribution_is_refused(tmp_path):
    archive = tmp_path / "x.zip"
    with zipfile.ZipFile(archive, "w") as zf:
        zf.writestr("readme.txt", "hello")
    with pytest.raises(NodeError, match="does not look like an Elasticsearch distribution"):
        local_node._unpack(archive, tmp_path / "out")
