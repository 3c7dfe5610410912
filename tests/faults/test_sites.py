"""Hostile sites, crawled for real: a server that trickles a byte a second, one that never answers, redirect
loops and endless redirect chains, a 10 MB page, broken and lying charsets, images served as text/html and
HTML served as image/jpeg. The crawl must end by itself within its timeouts, with each fault counted under a
reason and nothing else lost.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass

import pytest

from crawler.sample_site import Route, SiteServer, encode, page, photo_like
from tests.faults.crawls import Crawl, CrawlRun, all_ids
from tests.faults.servers import SilentServer, TrickleServer

JPEG = "image/jpeg"
PAGE_FAILED = re.compile(r"Page failed (\w+) \((\S+)\)")
TIMEOUT = 3  # DOWNLOAD_TIMEOUT for these crawls, seconds
HTML_AS_JPEG = b"<!doctype html><html><head><title>x</title></head><body><p>not a picture</p></body></html>"


def photo(seed: int) -> bytes:
    return encode(photo_like(seed, 200, 150))


def site_routes(trickle: str, silent: str) -> tuple[dict[str, Route], dict[str, bytes]]:
    """The site, and the images on it that should be indexed (path -> bytes)."""
    good = {f"/img/{name}.jpg": photo(7000 + n) for n, name in enumerate(
        ["home", "after-huge", "bogus-charset", "lying-utf8", "meta-utf16", "latin1-as-utf8", "as-html"])}
    routes = {path: Route(body, JPEG) for path, body in good.items()}
    # A windows-1252 page whose <base href> query holds a byte that code page leaves undefined (0x81).
    good["/g/base-cp1252.jpg"] = photo(7010)
    routes["/g/base-cp1252.jpg"] = Route(good["/g/base-cp1252.jpg"], JPEG)
    routes["/base-cp1252.html"] = Route(b'<html><head><title>Base</title><base href="/g/?ref=\x81"></head><body>'
                                        b'<img src="base-cp1252.jpg"><a href="next.html">next</a></body></html>',
                                        "text/html; charset=windows-1252")
    routes["/img/as-html.jpg"] = Route(good["/img/as-html.jpg"], "text/html; charset=utf-8")  # a JPEG all the same
    routes["/img/html-as-jpeg.jpg"] = Route(HTML_AS_JPEG, JPEG)
    routes["/html-as-jpeg-page"] = Route(HTML_AS_JPEG, JPEG)  # a linked "page" that says it is an image
    # Redirects: a loop (a -> b -> a) and an endless chain (n -> n + 1 -> ...), for pages and for images.
    routes["/loop/a.html"] = Route(b"", status=302, headers={"Location": "/loop/b.html"})
    routes["/loop/b.html"] = Route(b"", status=302, headers={"Location": "/loop/a.html"})
    routes["/loop/a.jpg"] = Route(b"", status=302, headers={"Location": "/loop/b.jpg"})
    routes["/loop/b.jpg"] = Route(b"", status=302, headers={"Location": "/loop/a.jpg"})
    for n in range(40):
        routes[f"/chain/{n}.html"] = Route(b"", status=302, headers={"Location": f"/chain/{n + 1}.html"})
        routes[f"/chain/{n}.jpg"] = Route(b"", status=302, headers={"Location": f"/chain/{n + 1}.jpg"})
    # 10 MB of paragraphs, then an image.
    filler = "".join(f"<p>Paragraph {n} of a very long page, with some text in it to make it long.</p>"
                     for n in range(130_000))
    routes["/huge.html"] = page("Huge", filler + '<img src="/img/after-huge.jpg">')
    assert len(routes["/huge.html"].body) > 10_000_000
    # Charsets: one nobody knows, UTF-8 declared over bytes that are not, a <meta> claiming UTF-16 over ASCII
    # (browsers read that as UTF-8), latin-1 declared over UTF-8.
    routes["/bogus-charset.html"] = Route('<html><head><title>Café</title></head><body><p>Crème brûlée</p>'
                                          '<img src="/img/bogus-charset.jpg" alt="café"></body></html>'.encode(),
                                          "text/html; charset=x-no-such-charset")
    routes["/lying-utf8.html"] = Route(b"<html><head><title>Caf\xe9 \xff\xfe</title></head><body><p>cr\xe8me "
                                       b"\xc3\x28 \xa0\x80</p><img src=\"/img/lying-utf8.jpg\" alt=\"\xe9t\xe9\">"
                                       b"</body></html>", "text/html; charset=utf-8")
    routes["/meta-utf16.html"] = Route(b'<html><head><meta charset="utf-16"><title>x</title></head><body>'
                                       b'<img src="/img/meta-utf16.jpg"></body></html>', "text/html")
    routes["/latin1-as-utf8.html"] = Route('<html><head><title>日本語のページ</title></head><body>'
                                           '<img src="/img/latin1-as-utf8.jpg" alt="写真"></body></html>'.encode(),
                                           "text/html; charset=iso-8859-1")
    links = ["/huge.html", "/base-cp1252.html", "/bogus-charset.html", "/lying-utf8.html", "/meta-utf16.html",
             "/latin1-as-utf8.html", "/loop/a.html", "/chain/0.html", "/html-as-jpeg-page", f"{trickle}/trickle.html",
             f"{silent}/silent.html"]
    images = ["/img/home.jpg", "/img/as-html.jpg", "/img/html-as-jpeg.jpg", "/loop/a.jpg", "/chain/0.jpg",
              f"{trickle}/trickle.jpg", f"{silent}/silent.jpg"]
    routes["/"] = page("Hostile sites", "".join(f'<a href="{u}">{u}</a>' for u in links)
                       + "".join(f'<img src="{u}">' for u in images))
    routes["/robots.txt"] = Route(b"User-agent: *\nAllow: /\n", "text/plain")
    return routes, good


@dataclass
class Outcome:
    result: CrawlRun
    lost: list[str]
    indexed: int
    expected: int
    trickle: TrickleServer
    silent: SilentServer
    loop_hits: int
    chain_hits: int

    @property
    def page_failures(self) -> dict[str, int]:
        return self.result.reasons("imgsearch/find/failed/")

    @property
    def image_failures(self) -> dict[str, int]:
        return self.result.reasons("imgsearch/fetch/failed/")


@pytest.fixture(scope="module")
def hostile(es, index_alias, crawl_settings_env, tmp_path_factory) -> Outcome:
    """One crawl of the hostile site, shared by the tests below (each checks and reports one fault)."""
    workdir = tmp_path_factory.mktemp("sites")
    env = {**crawl_settings_env, "IMGSEARCH_INDEX": index_alias, "DOWNLOAD_TIMEOUT": str(TIMEOUT),
           "RETRY_TIMES": "1", "IMGSEARCH_INDEX_DEAD_LETTER_DIR": str(workdir / "dead-letter")}
    with TrickleServer() as trickle, SilentServer() as silent:
        routes, good = site_routes(trickle.url, silent.url)
        with SiteServer(routes) as site:
            result = Crawl([site.url + "/", "--depth", "1"], env, workdir).wait(180)
            loop_hits, chain_hits = site.fetched("/loop/"), site.fetched("/chain/")
    ids = set(all_ids(es, index_alias))
    lost = sorted(p for p, body in good.items() if hashlib.sha256(body).hexdigest() not in ids)
    return Outcome(result, lost, len(ids), len(good), trickle, silent, loop_hits, chain_hits)


def test_the_crawl_ends_by_itself_and_indexes_nothing_else(hostile, fault_table):
    result = hostile.result
    fault_table.row("the hostile site as a whole (all the faults below at once)",
                    f"exit {result.returncode} after {result.seconds:.0f} s (DOWNLOAD_TIMEOUT {TIMEOUT} s, 1 retry); "
                    f"{hostile.indexed} images indexed of {hostile.expected} valid; skipped "
                    f"{result.reasons('imgsearch/fetch/skipped/')}", len(hostile.lost))
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stats.get("finish_reason") == "finished", "the crawl ends by itself, within its timeouts"
    assert hostile.lost == [], "every valid image is indexed"
    assert hostile.indexed == hostile.expected, "nothing but the valid images is indexed"


def test_no_traceback_in_the_log(hostile, fault_table):
    tracebacks = hostile.result.stderr.count("Traceback")
    robots = sum(hostile.result.reasons("robotstxt/exception_count/").values())
    fault_table.row("robots.txt of the trickling / silent server times out",
                    f"{tracebacks} tracebacks in the crawl log; robots.txt failures {robots}, the pages then "
                    f"fetched as if it had none, and counted", 0)
    assert tracebacks == 0, hostile.result.stderr[hostile.result.stderr.index("Traceback") - 300:][:3000]


def test_a_trickling_and_a_silent_server_time_out(hostile, fault_table):
    pages, images = hostile.page_failures.get("timeout", 0), hostile.image_failures.get("timeout", 0)
    fault_table.row("server trickling 1 byte/s (a page, an image)",
                    f"{hostile.trickle.connections} connections, {hostile.trickle.bytes_sent} bytes sent before the "
                    f"crawl gave up: find/failed/timeout and fetch/failed/timeout (with the silent server's: "
                    f"{pages} pages, {images} images)", 0)
    fault_table.row("server accepting, never answering (a page, an image)",
                    f"{hostile.silent.connections} connections held, none answered: counted as timeouts", 0)
    assert (pages, images) == (2, 2), (hostile.page_failures, hostile.image_failures)


def test_redirect_loops_and_endless_chains_of_images_and_pages_are_counted(hostile, fault_table):
    pages, images = hostile.page_failures, hostile.image_failures
    fault_table.row("endless redirect chain (a page, an image); loop a->b->a (an image)",
                    f"{hostile.chain_hits} chain requests, stopped at REDIRECT_MAX_TIMES: find/failed/"
                    f"too_many_redirects x{pages.get('too_many_redirects', 0)}, fetch/failed/too_many_redirects "
                    f"x{images.get('too_many_redirects', 0)}; {hostile.loop_hits} loop requests (the page's and the "
                    f"image's), each loop stopped at its first repeat: fetch/failed/redirect_loop "
                    f"x{images.get('redirect_loop', 0)}", 0)
    assert pages.get("too_many_redirects") == 1, pages
    assert (images.get("too_many_redirects"), images.get("redirect_loop")) == (1, 1), images
    assert "ignored" not in pages and "ignored" not in images, (pages, images)
    assert hostile.loop_hits == 4, "each loop's two URLs are requested once, then the loop is stopped"


def test_a_page_redirect_loop_is_counted_under_a_reason(hostile, fault_table):
    counted = PAGE_FAILED.findall(hostile.result.stderr)
    loop = [reason for reason, url in counted if "/loop/" in url]
    fault_table.row("redirect loop a->b->a (a page)",
                    f"the redirect back to /loop/a.html stopped before Scrapy's dupefilter could drop it unseen "
                    f"(dupefilter/filtered {hostile.result.stat('dupefilter/filtered')}); counted and logged as: "
                    f"{', '.join(f'find/failed/{reason}' for reason in loop) or 'nothing, no log line'}",
                    "0" if loop else "1 page")
    assert loop == ["redirect_loop"], counted
    assert hostile.page_failures.get("redirect_loop") == 1, hostile.page_failures


def test_a_10_mb_page_is_parsed_to_its_end(hostile, fault_table):
    lost = "/img/after-huge.jpg" in hostile.lost
    fault_table.row("10 MB page, its image at the end",
                    f"downloaded and parsed; its image {'lost' if lost else 'indexed'}", int(lost))
    assert not lost


def test_unknown_lying_and_mismatched_charsets(hostile, fault_table):
    pages = ["/img/bogus-charset.jpg", "/img/lying-utf8.jpg", "/img/latin1-as-utf8.jpg"]
    lost = [p for p in pages if p in hostile.lost]
    fault_table.row("charsets: unknown name, invalid bytes under UTF-8, UTF-8 under latin-1",
                    f"parsed; images lost: {', '.join(lost) or 'none'}", len(lost))
    assert lost == []


def test_a_meta_charset_of_utf16_over_ascii_is_read_as_utf8(hostile, fault_table):
    lost = "/img/meta-utf16.jpg" in hostile.lost
    fault_table.row('<meta charset="utf-16"> over an ASCII page',
                    "decoded as UTF-16: no image found, nothing counted" if lost
                    else "read as UTF-8 (as browsers do): its image indexed", int(lost))
    assert not lost


def test_a_base_href_with_an_undecodable_byte_still_yields_the_images(hostile, fault_table):
    lost = "/g/base-cp1252.jpg" in hostile.lost
    errors = hostile.result.reasons("spider_exceptions/")
    page = [reason for reason, url in PAGE_FAILED.findall(hostile.result.stderr) if "base-cp1252" in url]
    what = "lost (a 'Cannot parse' WARNING, no stat)" if lost else "indexed"
    failed = f"counted as find/failed/{', '.join(page)} (its links lost too)" if page else "not failed"
    fault_table.row("windows-1252 page, <base href> query with byte 0x81 (found by the fuzzer)",
                    f"its image {what}; the page {failed}; spider exceptions {errors or 'none'}", int(lost))
    assert not lost and not page and not errors


def test_images_as_text_html_and_html_as_image_jpeg(hostile, fault_table):
    lost = "/img/as-html.jpg" in hostile.lost
    not_image = hostile.result.reasons("imgsearch/fetch/skipped/").get("not_image", 0)
    fault_table.row("a JPEG served as text/html; HTML served as image/jpeg (an <img>, a linked page)",
                    f"the JPEG {'lost' if lost else 'sniffed and indexed'}; the HTML counted skipped/not_image "
                    f"x{not_image}", int(lost))
    assert not lost
    assert not_image == 2
