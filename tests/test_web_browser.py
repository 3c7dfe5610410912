"""The search page in a real headless Chromium (Debian's `chromium`, driven by Playwright), served by uvicorn on
127.0.0.1 over a crawled index: upload, drop and paste an image, type a text, meet an error, open a result.

Each test saves a screenshot under $IMGSEARCH_TEST_ARTIFACTS (a folder), or else under pytest's temporary
folder; the folder is printed at the end of the module. `make test` installs chromium when it is missing; without
it these tests fail, saying so (a skip would hide a broken install step).
"""

from __future__ import annotations

import base64
import os
import shutil
import threading
import time
from pathlib import Path

import pytest
from playwright import sync_api as playwright_api

from cli.serve import listening_socket
from crawler.sample_site import SiteServer
from tests.test_crawl import crawl
from tests.test_web_api import photo, web_site

CHROMIUM_NAMES = ("chromium", "chromium-browser", "google-chrome")


def chromium_path() -> str | None:
    configured = os.environ.get("IMGSEARCH_CHROMIUM")
    if configured:
        return configured
    return next((found for found in map(shutil.which, CHROMIUM_NAMES) if found), None)


@pytest.fixture(scope="module")
def artifacts(request, tmp_path_factory) -> Path:
    configured = os.environ.get("IMGSEARCH_TEST_ARTIFACTS")
    folder = Path(configured) / "browser" if configured else tmp_path_factory.mktemp("browser-screenshots")
    folder.mkdir(parents=True, exist_ok=True)
    yield folder
    reporter = request.config.pluginmanager.get_plugin("terminalreporter")
    capture = request.config.pluginmanager.get_plugin("capturemanager")
    if reporter is not None and capture is not None:
        with capture.global_and_fixture_disabled():  # teardown output is captured otherwise
            reporter.write_line(f"\nBrowser test screenshots ({len(list(folder.glob('*.png')))}): {folder}")


@pytest.fixture(scope="module")
def served(crawl_settings_env, index_alias, tmp_path_factory, es):
    """The test site crawled into this module's index, and `imgsearch serve`'s app on a free loopback port."""
    import uvicorn

    from crawler.config import load_settings
    from web.app import create_app

    env = {**crawl_settings_env, "IMGSEARCH_INDEX": index_alias}
    with SiteServer(web_site()) as site:
        crawl(env, tmp_path_factory.mktemp("browser-crawl"), site.url + "/")
        es.indices.refresh(index=f"{index_alias},{index_alias}-sources")
        sock = listening_socket("127.0.0.1", 0)
        server = uvicorn.Server(uvicorn.Config(create_app(load_settings(env)), log_level="warning"))
        thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, name="web-test", daemon=True)
        thread.start()
        deadline = time.monotonic() + 120  # the models load before the server listens
        while not server.started and thread.is_alive() and time.monotonic() < deadline:
            time.sleep(0.1)
        assert server.started, "the server did not start"
        try:
            yield {"url": f"http://127.0.0.1:{sock.getsockname()[1]}", "site": site}
        finally:
            server.should_exit = True
            thread.join(30)
            sock.close()


@pytest.fixture(scope="module")
def browser():
    executable = chromium_path()
    if executable is None:
        pytest.fail("Debian's chromium is not installed (apt-get install chromium; `make test` does it as root)",
                    pytrace=False)
    with playwright_api.sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=executable, headless=True,
                                             args=["--no-sandbox", "--disable-dev-shm-usage"])
        yield browser
        browser.close()


@pytest.fixture
def page(browser, served):
    context = browser.new_context(viewport={"width": 1280, "height": 900})
    page = context.new_page()
    page.set_default_timeout(60_000)
    page.goto(served["url"] + "/")
    yield page
    context.close()


def thumbnails_loaded(page, count: int) -> list[int]:
    """The natural widths of the first `count` result thumbnails, once they have loaded."""
    page.wait_for_function(
        "n => Array.from(document.querySelectorAll('.thumb img')).slice(0, n).every(i => i.complete)", arg=count)
    return page.eval_on_selector_all(".thumb img", f"imgs => imgs.slice(0, {count}).map(i => i.naturalWidth)")


def test_upload_a_crawled_image_and_see_its_exact_match_first_with_its_source_page(page, served, artifacts,
                                                                                   tmp_path):
    query = tmp_path / "holiday.jpg"
    query.write_bytes(photo(0))
    with page.expect_navigation():
        page.set_input_files("#image", str(query))  # choosing the file starts the search
    first = page.locator(".result").first
    assert first.get_attribute("data-match") == "exact"
    assert first.locator(".match").inner_text().strip() == "exact"
    assert first.locator(".score").inner_text() == "1.000"
    links = first.locator("a.source")
    assert links.first.get_attribute("href") == served["site"].url + "/"
    assert "Web gallery" in links.first.inner_text() and "More photos" in first.inner_text()
    assert all(width > 0 for width in thumbnails_loaded(page, 4))
    sources = page.eval_on_selector_all("img[src]", "imgs => imgs.map(i => i.getAttribute('src'))")
    assert all(s.startswith(("/thumbs/", "data:image/jpeg")) for s in sources), sources
    assert page.locator(".query-preview").count() == 1
    page.screenshot(path=str(artifacts / "upload-exact-match.png"), full_page=True)


def test_type_a_text_and_see_k_thumbnails(page, artifacts):
    page.fill("input[name=text]", "a photo of the sea")
    page.fill("input[name=k]", "5")
    with page.expect_navigation():
        page.click("button[type=submit]")
    assert page.locator(".result").count() == 5
    assert all(width > 0 for width in thumbnails_loaded(page, 5))
    assert "the text “a photo of the sea”" in page.locator(".summary").inner_text()
    assert page.input_value("input[name=text]") == "a photo of the sea"
    page.screenshot(path=str(artifacts / "text-query.png"), full_page=True)


def test_upload_a_text_file_and_see_a_plain_message(page, artifacts):
    with page.expect_navigation():
        page.set_input_files("#image", {"name": "notes.txt", "mimeType": "text/plain",
                                        "buffer": b"meeting notes, not a picture"})
    alert = page.locator(".error[role=alert]")
    assert alert.get_attribute("data-kind") == "not_an_image"
    assert "That is not an image we can read" in alert.inner_text()
    assert "Traceback" not in page.content()
    assert page.locator(".result").count() == 0
    page.screenshot(path=str(artifacts / "not-an-image.png"), full_page=True)


@pytest.mark.parametrize("gesture", ["drop", "paste"])
def test_drop_or_paste_an_image_to_search(page, gesture, artifacts):
    script = """([gesture, b64]) => {
        const bytes = Uint8Array.from(atob(b64), c => c.charCodeAt(0));
        const transfer = new DataTransfer();
        transfer.items.add(new File([bytes], "dropped.jpg", {type: "image/jpeg"}));
        if (gesture === "drop") {
            document.getElementById("drop-zone").dispatchEvent(
                new DragEvent("drop", {dataTransfer: transfer, bubbles: true, cancelable: true}));
        } else {
            document.dispatchEvent(new ClipboardEvent("paste", {clipboardData: transfer, bubbles: true,
                                                                 cancelable: true}));
        }
    }"""
    with page.expect_navigation():
        page.evaluate(script, [gesture, base64.b64encode(photo(2)).decode()])
    first = page.locator(".result").first
    assert first.get_attribute("data-match") == "exact"
    assert first.locator(".name").inner_text() == "w2.jpg"
    page.screenshot(path=str(artifacts / f"{gesture}.png"))


def test_a_result_leads_to_all_its_sources(page, served, artifacts, tmp_path):
    query = tmp_path / "q.jpg"
    query.write_bytes(photo(1))
    with page.expect_navigation():
        page.set_input_files("#image", str(query))
    with page.expect_navigation():
        page.locator(".result .name a").first.click()
    assert page.locator("h1").inner_text() == "w1.jpg"
    rows = page.locator(".sources-table tbody tr")
    assert rows.count() == 2
    assert [rows.nth(i).locator("a.source").inner_text() for i in range(2)] == ["Web gallery", "More photos"]
    assert "Seen on 2 pages, oldest first" in page.inner_text("main")
    assert page.evaluate("document.querySelector('.detail .large').naturalWidth") > 0
    page.screenshot(path=str(artifacts / "image-detail.png"), full_page=True)
    with page.expect_navigation():
        page.click("text=Search for images like this one")
    assert page.locator(".result").first.get_attribute("data-match") == "exact"
