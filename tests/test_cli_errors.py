"""What a user types that cannot run: one line on stderr, exit status 2, and nothing created or started."""

from __future__ import annotations

import importlib.util

import pytest

from crawler.sample_site import Route, SiteServer, encode, page, photo_like
from index_setup.indices import IndexNames
from tests.cli_runs import in_process
from tests.test_crawl import crawl


@pytest.fixture
def run(monkeypatch, capsys, crawl_settings_env, index_alias):
    return in_process(monkeypatch, capsys, {**crawl_settings_env, "IMGSEARCH_INDEX": index_alias})


@pytest.mark.parametrize(("args", "message"), [
    (["ftp://127.0.0.1/"], "not an http(s) URL: ftp://127.0.0.1/"),
    (["--urls-file", "/no/such/urls.txt"], "--urls-file /no/such/urls.txt: no such file"),
    (["http://127.0.0.1:9/", "--allow", "("], "--allow '(' is not a regular expression"),
    (["http://127.0.0.1:9/", "--deny", "a[b"], "--deny 'a[b' is not a regular expression"),
    (["http://127.0.0.1:9/", "-s", "DOWNLOAD_DELAY"], "-s 'DOWNLOAD_DELAY': give a setting as NAME=VALUE"),
    (["http://127.0.0.1:9/", "--store", "s3://bucket/images"], "needs botocore, which is not installed"),
])
def test_a_crawl_that_cannot_run_is_one_line_and_creates_nothing(run, es, index_alias, args, message):
    if "s3://" in " ".join(args) and importlib.util.find_spec("botocore") is not None:
        pytest.skip("botocore is installed here (the s3 extra): the store is usable")
    status, out, err = run("crawl", *args)
    assert status == 2
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("imgsearch: error: ") and message in lines[0], err
    assert "Traceback" not in err
    assert not any(es.indices.exists_alias(name=name) for name in IndexNames.for_alias(index_alias).all())


def test_version_and_verbosity_after_the_command(run):
    with pytest.raises(SystemExit) as exit_:
        run("--version")
    assert exit_.value.code == 0
    status, _, err = run("crawl", "ftp://127.0.0.1/", "-v")
    assert status == 2 and "not an http(s) URL" in err


def test_allow_and_deny_take_regular_expressions_with_commas(crawl_settings_env, index_alias, es, tmp_path):
    image = encode(photo_like(40, 300, 300))
    routes = {"/": page("Home", '<a href="/page12.html">p</a> <a href="/page1234x.html">q</a> '
                                '<a href="/other.html">o</a>'),
              "/page12.html": page("Twelve", '<img src="/twelve.jpg">'),
              "/page1234x.html": page("Long", '<img src="/long.jpg">'),
              "/other.html": page("Other", '<img src="/other.jpg">'),
              "/twelve.jpg": Route(image, "image/jpeg"),
              "/long.jpg": Route(encode(photo_like(41, 300, 300)), "image/jpeg"),
              "/other.jpg": Route(encode(photo_like(42, 300, 300)), "image/jpeg")}
    with SiteServer(routes) as site:
        env = {**crawl_settings_env, "IMGSEARCH_INDEX": index_alias}
        crawl(env, tmp_path, site.url + "/", "--allow", r"page\d{1,3}\.html$", "--deny", r"x{1,2}\.html")
        assert site.fetched("/page12.html") == 1
        assert site.fetched("/page1234x.html") == site.fetched("/other.html") == 0
