"""`imgsearch es start --secure`: a local node with TLS (a CA of its own) and a generated password, and the
commands over https with the settings it prints; a wrong password, an untrusted certificate and
ES_VERIFY_CERTS=false.

The node has a free port of its own (its transport port 100 above it free too) in the cache that holds the
distribution; its folders are deleted afterwards."""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shlex
import shutil
import socket
import stat
import subprocess
import sys
import uuid

import pytest

from crawler.config import load_settings
from crawler.sample_site import Route, SiteServer, encode, page, photo_like
from index_setup.client import client_options
from index_setup.local_node import LocalNode

IMGSEARCH = [sys.executable, "-m", "cli"]
# Left out of the environment the commands inherit: each test says which of them it gives.
ES_SETTINGS = ("ES_URL", "ES_API_KEY", "ES_USERNAME", "ES_PASSWORD", "ES_CA_CERTS", "ES_VERIFY_CERTS")
JPEG = "image/jpeg"


def run_cli(*args: str, env: dict[str, str], timeout: float = 240) -> subprocess.CompletedProcess:
    inherited = {name: value for name, value in os.environ.items() if name not in ES_SETTINGS}
    return subprocess.run([*IMGSEARCH, *args], capture_output=True, text=True, timeout=timeout,
                          env={**inherited, **env})


def _bindable(port: int) -> bool:
    with socket.socket() as probe:
        try:
            probe.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def free_node_port() -> int:
    """A free HTTP port whose transport port (100 above it) is free too."""
    for _ in range(50):
        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            port = probe.getsockname()[1]
        if port + 100 < 65536 and _bindable(port + 100):
            return port
    raise AssertionError("no free pair of ports for the secure node")


def printed_settings(stdout: str) -> dict[str, str]:
    """The NAME=value lines of `es start --secure`, read as a shell would."""
    lines = [line for line in stdout.splitlines() if line and not line.startswith("#")]
    return dict(shlex.split(line)[0].split("=", 1) for line in lines)


@pytest.fixture(scope="module")
def secure_node():
    """The secure node, started through the CLI; yields it and the settings it printed."""
    node = LocalNode(load_settings().get("IMGSEARCH_CACHE_DIR"), port=free_node_port())
    try:
        result = run_cli("es", "start", "--secure", "--port", str(node.port), env={"IMGSEARCH_ES_HEAP": "512m"},
                         timeout=300)
        assert result.returncode == 0, result.stdout + result.stderr[-4000:]
        yield node, printed_settings(result.stdout)
    finally:
        node.stop()
        shutil.rmtree(node.node_dir, ignore_errors=True)
        shutil.rmtree(node.security_dir, ignore_errors=True)


@pytest.fixture(scope="module")
def secure_env(secure_node, crawl_settings_env):
    """Environment for commands against the secure node: its settings, and the crawl tests' models and store."""
    _, settings = secure_node
    return {**crawl_settings_env, **settings, "IMGSEARCH_INDEX": f"test-secure-{uuid.uuid4().hex[:8]}"}


def without(env: dict[str, str], *names: str) -> dict[str, str]:
    return {name: value for name, value in env.items() if name not in names}


def test_start_prints_https_settings_and_starting_again_reuses_them(secure_node):
    node, settings = secure_node
    assert sorted(settings) == ["ES_CA_CERTS", "ES_PASSWORD", "ES_URL", "ES_USERNAME"]
    assert settings["ES_URL"] == f"https://127.0.0.1:{node.port}"
    assert len(settings["ES_PASSWORD"]) >= 24

    again = run_cli("es", "start", "--secure", "--port", str(node.port), env={})
    assert again.returncode == 0, again.stderr
    assert printed_settings(again.stdout) == settings
    status = run_cli("es", "status", "--port", str(node.port), env={})
    assert status.returncode == 0, status.stderr
    assert status.stdout.startswith(f"https://127.0.0.1:{node.port}: Elasticsearch 8.")
    plain = run_cli("es", "start", "--port", str(node.port), env={})
    assert plain.returncode == 2 and "runs with security on" in plain.stderr


def test_secrets_are_private_and_the_credentials_file_holds_the_printed_settings(secure_node):
    node, settings = secure_node
    assert stat.S_IMODE(node.credentials_file.stat().st_mode) == 0o600
    assert stat.S_IMODE((node.security_dir / "ca.key").stat().st_mode) == 0o600
    assert printed_settings(node.credentials_file.read_text()) == settings
    assert settings["ES_CA_CERTS"] == str(node.ca_cert)


def test_index_create_crawl_and_search_work_over_https(secure_env, tmp_path):
    pictures = {f"/img/{n}.jpg": encode(photo_like(40 + n, 320, 240)) for n in (1, 2)}
    with SiteServer() as site:
        site.routes.update({path: Route(data, JPEG) for path, data in pictures.items()})
        site.routes["/"] = page("Secure", "".join(f'<img src="{path}">' for path in pictures))
        created = run_cli("index", "create", env=secure_env)
        assert created.returncode == 0, created.stderr
        stats_file = tmp_path / "stats.json"
        crawled = run_cli("crawl", site.url + "/", "--depth", "0", "--stats-file", str(stats_file), env=secure_env)
        assert crawled.returncode == 0, crawled.stdout + crawled.stderr[-4000:]
    stats = json.loads(stats_file.read_text())
    assert stats["imgsearch/index/images_created"] == 2
    assert stats.get("imgsearch/index/dead_lettered", 0) == 0

    query = tmp_path / "query.jpg"
    query.write_bytes(pictures["/img/2.jpg"])
    found = run_cli("search", "--image", str(query), "--k", "2", "--json", env=secure_env)
    assert found.returncode == 0, found.stderr
    best = json.loads(found.stdout)["results"][0]
    assert (best["image_id"], best["match"]) == (hashlib.sha256(pictures["/img/2.jpg"]).hexdigest(), "exact")


@pytest.mark.parametrize("command", [("index", "info"), ("search", "--text", "a photo")])
def test_a_wrong_password_is_one_line_naming_401(secure_env, command):
    result = run_cli(*command, env={**secure_env, "ES_PASSWORD": "not-the-password"})
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "(401)" in lines[0], result.stderr
    assert "not-the-password" not in result.stdout + result.stderr


def test_without_its_ca_the_certificate_is_untrusted_in_one_line(secure_env):
    result = run_cli("index", "info", env=without(secure_env, "ES_CA_CERTS"))
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "the certificate is not trusted" in lines[0], result.stderr
    assert secure_env["ES_PASSWORD"] not in result.stdout + result.stderr


def test_verify_certs_false_works_and_warns(secure_env):
    result = run_cli("index", "info", env={**without(secure_env, "ES_CA_CERTS"), "ES_VERIFY_CERTS": "false"})
    assert result.returncode == 0, result.stderr
    assert "ES_VERIFY_CERTS=false: the TLS certificate of Elasticsearch at https://127.0.0.1:" in result.stderr


def test_client_options_check_certificates_unless_told_not_to(caplog):
    checked = client_options(load_settings({"ES_URL": "https://127.0.0.1:9"}))
    assert "verify_certs" not in checked  # the client's default: verify
    with caplog.at_level(logging.WARNING, logger="index_setup.client"):
        unchecked = client_options(load_settings({"ES_URL": "https://127.0.0.1:9", "ES_VERIFY_CERTS": "false"}))
        client_options(load_settings({"ES_URL": "https://127.0.0.1:9", "ES_VERIFY_CERTS": "false"}))
    assert unchecked["verify_certs"] is False
    assert [r.getMessage().startswith("ES_VERIFY_CERTS=false") for r in caplog.records] == [True, True]


def test_es_stop_with_the_printed_settings_stops_it(secure_node):
    # Last: a shell that took the printed settings stops the node it names.
    node, settings = secure_node
    result = run_cli("es", "stop", env=settings)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == f"Stopped Elasticsearch at https://127.0.0.1:{node.port}."
    assert not node.status().running
