"""Scrapyd: the project deploys with `scrapyd-deploy` and the [deploy] section of scrapy.cfg, a crawl scheduled
through Scrapyd's HTTP API runs, and its images are in the index. Scrapyd (from PyPI) is started here.

The deploy runs in a copy of the project (scrapyd-deploy builds its egg in place, with `setup.py bdist_egg`), whose
scrapy.cfg differs only in the [deploy] URL: the test's Scrapyd listens on a free port."""

from __future__ import annotations

import configparser
import hashlib
import json
import os
import shutil
import socket
import subprocess
import sys
import urllib.parse
import urllib.request
from pathlib import Path

import pytest

from crawler.sample_site import Route, SiteServer, encode, page, photo_like
from tests.waiting import wait_for

ROOT = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]




def tool(name: str) -> str:
    path = BIN / name if (BIN / name).exists() else shutil.which(name)
    if path is None:
        pytest.fail(f"{name} is not installed (pip install -e '.[dev]')", pytrace=False)
    return str(path)


def project_copy(target: Path, scrapyd_url: str) -> Path:
    """The files the egg is built from: scrapy.cfg, setup.py, pyproject.toml, README.md and the packages (which
    of them go into the egg, pyproject.toml says)."""
    target.mkdir()
    for name in ("scrapy.cfg", "setup.py", "pyproject.toml", "README.md"):
        shutil.copy2(ROOT / name, target / name)
    for folder in ROOT.iterdir():
        if folder.is_dir() and (folder / "__init__.py").exists() and folder.name != "tests":
            shutil.copytree(folder, target / folder.name, ignore=shutil.ignore_patterns("__pycache__"))
    cfg = configparser.ConfigParser()
    cfg.read(target / "scrapy.cfg")
    assert cfg.get("deploy", "project") == "imgsearch", "scrapy.cfg's [deploy] section names the project"
    cfg.set("deploy", "url", scrapyd_url)
    with (target / "scrapy.cfg").open("w") as f:
        cfg.write(f)
    return target


def api(base: str, endpoint: str, data: list[tuple[str, str]] | None = None) -> dict:
    body = urllib.parse.urlencode(data).encode() if data is not None else None
    with urllib.request.urlopen(f"{base}/{endpoint}", data=body, timeout=30) as response:
        return json.loads(response.read())


@pytest.fixture(scope="module")
def scrapyd(tmp_path_factory, crawl_settings_env):
    """A Scrapyd on a free loopback port; its jobs get the test models and scratch store through its
    environment, as a Scrapyd service gets them from its unit file."""
    folder = tmp_path_factory.mktemp("scrapyd")
    port = free_port()
    (folder / "scrapyd.conf").write_text(
        f"[scrapyd]\nbind_address = 127.0.0.1\nhttp_port = {port}\neggs_dir = {folder / 'eggs'}\n"
        f"logs_dir = {folder / 'logs'}\ndbs_dir = {folder / 'dbs'}\nitems_dir =\nmax_proc = 1\npoll_interval = 0.5\n")
    log = (folder / "scrapyd.out").open("wb")
    process = subprocess.Popen([tool("scrapyd")], cwd=folder, stdout=log, stderr=subprocess.STDOUT,
                               env={**os.environ, **crawl_settings_env})
    base = f"http://127.0.0.1:{port}"

    def answers() -> bool:
        assert process.poll() is None, (folder / "scrapyd.out").read_text(errors="replace")[-3000:]
        try:
            return api(base, "daemonstatus.json")["status"] == "ok"
        except OSError:
            return False

    try:
        wait_for(answers, 60, "Scrapyd to answer")
        yield base, folder
    finally:
        process.terminate()
        process.wait(timeout=30)


def test_deploy_schedule_and_find_the_images_in_the_index(scrapyd, es, index_alias, tmp_path):
    from index_setup.mappings import sources_alias

    base, folder = scrapyd
    project = project_copy(tmp_path / "project", base + "/")
    deployed = subprocess.run([tool("scrapyd-deploy"), "-v", "test-1"], cwd=project, capture_output=True,
                              text=True, timeout=300)
    assert deployed.returncode == 0, deployed.stdout + deployed.stderr
    assert '"status": "ok"' in deployed.stdout + deployed.stderr, deployed.stdout + deployed.stderr
    assert set(api(base, "listspiders.json?project=imgsearch")["spiders"]) >= {"site", "urls"}

    images = {f"/img/{i}.jpg": encode(photo_like(900 + i, 260, 200)) for i in range(4)}
    routes = {path: Route(data, "image/jpeg") for path, data in images.items()}
    routes["/robots.txt"] = Route(b"User-agent: *\nAllow: /\n", "text/plain")
    routes["/"] = page("Scheduled", "".join(f'<img src="{path}">' for path in images))
    with SiteServer(routes) as site:
        # The index name as a setting of the job, the rest (models, store) from Scrapyd's environment.
        job = api(base, "schedule.json", [("project", "imgsearch"), ("spider", "site"),
                                          ("start_urls", site.url + "/"), ("depth", "1"),
                                          ("setting", f"IMGSEARCH_INDEX={index_alias}")])
        assert job["status"] == "ok", job

        def finished() -> bool:
            jobs = api(base, "listjobs.json?project=imgsearch")
            return any(j["id"] == job["jobid"] for j in jobs["finished"])

        wait_for(finished, 300, "the Scrapyd job to finish", interval=0.5)
    log = (folder / "logs" / "imgsearch" / "site" / f"{job['jobid']}.log").read_text(errors="replace")
    assert "Traceback" not in log, log[-4000:]
    assert "'finish_reason': 'finished'" in log, log[-4000:]
    assert "'imgsearch/index/images_created': 4" in log, log[-4000:]

    es.indices.refresh(index=f"{index_alias},{sources_alias(index_alias)}")
    ids = {h["_id"] for h in es.search(index=index_alias, size=10, source=False)["hits"]["hits"]}
    assert ids == {hashlib.sha256(data).hexdigest() for data in images.values()}
    assert es.count(index=sources_alias(index_alias))["count"] == 4
