"""The search page's JSON API and pages through FastAPI's test client, against a crawled index in the real
Elasticsearch, with the small test models: each input kind, each error, the result shape, the token check.
The upload cap is also checked on uvicorn over a real socket, where the test client would read the body first."""

from __future__ import annotations

import io
import itertools
import json
import logging
import re
import socket
import threading
from collections.abc import Iterator
from contextlib import contextmanager

import pytest
from fastapi.testclient import TestClient
from PIL import Image

from cli.serve import listening_socket
from crawler.config import load_settings
from crawler.sample_site import Route, SiteServer, encode, page, photo_like
from tests.test_crawl import crawl
from tests.waiting import wait_for
from web.app import build_searcher, create_app, load_models
from web.store import ImageStore

PHOTOS = 10
ON_BOTH_PAGES = (0, 1)  # shown on the gallery and on the second page
HTML = {"accept": "text/html"}
RESULT_KEYS = {"score", "match", "image_id", "image_url", "image_name", "relative_path", "width", "height", "format",
               "bytes", "first_seen", "last_seen", "domains", "sources", "sources_total"}


def photo(i: int) -> bytes:
    return encode(photo_like(500 + i, 360 + 20 * (i % 4), 300))


def web_site() -> dict[str, Route]:
    """A gallery of 8 photos linking a second page that shows 2 of them again and 2 more."""
    routes = {f"/photos/w{i}.jpg": Route(photo(i), "image/jpeg") for i in range(PHOTOS)}
    routes["/"] = page("Web gallery", "".join(f'<img src="/photos/w{i}.jpg" alt="photo {i}">' for i in range(8))
                       + '<a href="/more.html">more</a>')
    routes["/more.html"] = page("More photos", "".join(f'<img src="/photos/w{i}.jpg" alt="again {i}">'
                                                       for i in (*ON_BOTH_PAGES, 8, 9)))
    return routes


@pytest.fixture(scope="module")
def site_index(crawl_settings_env, index_alias, tmp_path_factory, es):
    """The site above crawled into this module's index; yields the site, the crawl's environment and settings."""
    env = {**crawl_settings_env, "IMGSEARCH_INDEX": index_alias}
    with SiteServer(web_site()) as site:
        crawl(env, tmp_path_factory.mktemp("web-crawl"), site.url + "/")
        es.indices.refresh(index=f"{index_alias},{index_alias}-sources")
        yield {"site": site, "env": env, "settings": load_settings(env)}


@pytest.fixture(scope="module")
def searcher(site_index):
    searcher = build_searcher(site_index["settings"])
    load_models(searcher)
    yield searcher
    searcher.close()


def app_client(site_index, searcher, *, allow_private: bool = False, **overrides) -> TestClient:
    settings = load_settings({**site_index["env"], **overrides})
    return TestClient(create_app(settings, searcher=searcher, allow_private=allow_private))


@pytest.fixture(scope="module")
def client(site_index, searcher):
    with app_client(site_index, searcher) as client:
        yield client


def upload(data: bytes, name: str = "query.jpg", content_type: str = "image/jpeg") -> dict:
    return {"image": (name, data, content_type)}


def image_id_of(client: TestClient, i: int) -> str:
    answer = client.post("/api/search", files=upload(photo(i)), data={"k": "1"}).json()
    assert answer["results"][0]["match"] == "exact"
    return answer["results"][0]["image_id"]


def assert_one_line_error(response, status: int, kind: str, *fragments: str) -> dict:
    assert response.status_code == status, response.text
    body = response.json()
    assert set(body) == {"error", "kind"} and body["kind"] == kind, body
    assert "\n" not in body["error"] and "Traceback" not in body["error"]
    for fragment in fragments:
        assert fragment in body["error"], body
    return body


# -- each input kind ------------------------------------------------------------------------------------------------
def test_an_uploaded_crawled_image_finds_itself_first_with_its_pages_oldest_first(client, site_index, searcher):
    site = site_index["site"]
    response = client.post("/api/search", files=upload(photo(0)), data={"k": "5"})
    assert response.status_code == 200, response.text
    body = response.json()
    assert set(body) == {"query", "took_ms", "results"}
    first = body["results"][0]
    assert first["match"] == "exact" and first["score"] == 1.0
    assert first["image_url"] == site.url + "/photos/w0.jpg"
    assert {s["page_url"] for s in first["sources"]} == {site.url + "/", site.url + "/more.html"}
    assert first["sources_total"] == 2
    seen = [s["first_seen"] for s in first["sources"]]
    assert seen == sorted(seen), "sources come oldest first"
    assert len(body["results"]) == 5 and len({r["image_id"] for r in body["results"]}) == 5
    for result in body["results"]:
        assert RESULT_KEYS <= set(result)
    timing = response.headers["server-timing"]
    assert re.search(r"embed;dur=\d+\.\d, es;dur=\d+\.\d, search;dur=\d+\.\d", timing), timing
    # One code path: the same answer as the query package gives the CLI (`imgsearch search --json`).
    direct = searcher.search_image(photo(0), 5, index=site_index["env"]["IMGSEARCH_INDEX"])
    assert [r["image_id"] for r in direct["results"]] == [r["image_id"] for r in body["results"]]
    assert [set(r) for r in direct["results"]] == [set(r) for r in body["results"]]
    assert set(direct["query"]) == set(body["query"])


def test_text_queries_as_json_and_as_a_form_return_k_results(client):
    answer = client.post("/api/search", json={"text": "a photo", "k": 4, "domain": "127.0.0.1"})
    assert answer.status_code == 200, answer.text
    body = answer.json()
    assert body["query"]["type"] == "text" and body["query"]["text"] == "a photo"
    assert body["query"]["domains"] == ["127.0.0.1"]
    assert len(body["results"]) == 4 and all("127.0.0.1" in r["domains"] for r in body["results"])
    form = client.post("/api/search", data={"text": "un chat noir", "k": "3", "num_candidates": "50"})
    assert form.status_code == 200, form.text
    assert len(form.json()["results"]) == 3
    assert client.post("/api/search", json={"text": "a photo", "domain": ["nowhere.example"]}).json()["results"] == []


def test_an_image_url_is_fetched_when_private_addresses_are_allowed(site_index, searcher):
    site = site_index["site"]
    url = site.url + "/photos/w5.jpg"
    before = site.requests["/photos/w5.jpg"]
    with app_client(site_index, searcher, allow_private=True) as client:
        response = client.post("/api/search", json={"image_url": url, "k": 2})
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["query"]["source"] == url
    assert body["results"][0]["match"] == "exact" and body["results"][0]["image_url"] == url
    assert site.requests["/photos/w5.jpg"] == before + 1


# -- each error -----------------------------------------------------------------------------------------------------
def test_an_image_url_inside_this_machine_is_refused_and_never_fetched(client, site_index):
    site = site_index["site"]
    before = site.requests["/photos/w3.jpg"]
    response = client.post("/api/search", json={"image_url": site.url + "/photos/w3.jpg"})
    assert_one_line_error(response, 400, "url_refused", "internal address 127.0.0.1")
    form = client.post("/api/search", data={"image_url": f"http://localhost:{site.port}/photos/w3.jpg"})
    assert_one_line_error(form, 400, "url_refused", "internal address")
    assert site.requests["/photos/w3.jpg"] == before


@pytest.mark.parametrize("url", ["/etc/passwd", "file:///etc/passwd", "~/.ssh/id_rsa", "ftp://example.org/a.jpg"])
def test_an_image_url_that_is_not_http_is_refused_never_read_as_a_file(client, url):
    assert_one_line_error(client.post("/api/search", json={"image_url": url}), 400, "bad_url", "http(s) URL")


def test_a_file_that_is_not_an_image_is_refused_whatever_its_name_and_type(client):
    text = b"just some words, not an image at all"
    response = client.post("/api/search", files=upload(text, "holiday.jpg", "image/jpeg"))
    assert_one_line_error(response, 415, "not_an_image", "not a usable image (not_image")
    svg = b'<svg xmlns="http://www.w3.org/2000/svg" width="10" height="10"/>'
    assert_one_line_error(client.post("/api/search", files=upload(svg, "a.png", "image/png")), 415, "not_an_image")


def test_an_upload_over_the_cap_is_refused_before_it_is_read(site_index, searcher):
    big = encode(photo_like(77, 900, 700), quality=95)
    assert len(big) > 60_000
    with app_client(site_index, searcher, IMGSEARCH_SERVE_MAX_UPLOAD_BYTES="50000") as client:
        declared = client.post("/api/search", files=upload(big))
        assert_one_line_error(declared, 413, "too_large", "too large")

        def chunks():  # no Content-Length: the cap counts the bytes as they come
            for _ in range(0, len(big) + 200_000, 16_384):
                yield b"x" * 16_384

        streamed = client.post("/api/search", content=chunks(), headers={"content-type": "application/json"})
        assert_one_line_error(streamed, 413, "too_large", "too large")
        small = client.post("/api/search", files=upload(photo(2)))  # about 25 kB: under the cap
        assert small.status_code == 200, small.text
        page = client.post("/", files=upload(big), headers=HTML)
        assert page.status_code == 413 and "too large" in page.text and "Traceback" not in page.text


@contextmanager
def live_server(app) -> Iterator[int]:
    """`app` on uvicorn, as `imgsearch serve` runs it, on a free loopback port; yields the port."""
    import uvicorn

    sock = listening_socket("127.0.0.1", 0)
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning"))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, name="web-api-test", daemon=True)
    thread.start()
    try:
        wait_for(lambda: server.started or not thread.is_alive(), 60, "uvicorn to start")
        assert server.started, "the server did not start"
        yield sock.getsockname()[1]
    finally:
        server.should_exit = True
        thread.join(30)
        sock.close()


def test_a_chunked_upload_over_the_cap_is_cut_off_without_being_buffered(site_index, searcher):
    cap, total, block = 50_000, 64 * 2**20, b"\xff" * 65_536
    app = create_app(load_settings({**site_index["env"], "IMGSEARCH_SERVE_MAX_UPLOAD_BYTES": str(cap)}),
                     searcher=searcher)
    read = 0

    async def counting(scope, receive, send):  # what uvicorn handed the application, before any middleware
        async def counted():
            nonlocal read
            message = await receive()
            read += len(message.get("body", b""))
            return message

        await app(scope, counted, send)

    head = (b'--cut\r\nContent-Disposition: form-data; name="image"; filename="big.jpg"\r\n'
            b"Content-Type: image/jpeg\r\n\r\n")
    with live_server(counting) as port, socket.create_connection(("127.0.0.1", port), timeout=30) as conn:
        conn.sendall(b"POST /api/search HTTP/1.1\r\nHost: 127.0.0.1\r\nTransfer-Encoding: chunked\r\n"
                     b"Content-Type: multipart/form-data; boundary=cut\r\n\r\n")
        sent = 0
        try:  # a client that sends everything before it reads: only the server closing the connection stops it
            for piece in itertools.chain([head], itertools.repeat(block, total // len(block))):
                conn.sendall(b"%x\r\n%s\r\n" % (len(piece), piece))
                sent += len(piece)
            conn.sendall(b"0\r\n\r\n")
        except (BrokenPipeError, ConnectionResetError):
            pass
        answer = b""
        conn.settimeout(10)
        try:
            while chunk := conn.recv(65_536):
                answer += chunk
        # Reset: the server closed with the rest of the upload unread (the answer came first); timed out: it kept
        # the connection open, which the assertions below report.
        except (ConnectionResetError, TimeoutError):
            pass
    # What the client got through is the cap plus the sockets' buffers, not the upload.
    assert sent < total // 2, f"the server took {sent} of {total} bytes without closing the connection"
    assert read < cap + 2**20, f"the application was handed {read} bytes for a cap of {cap}"
    headers, _, body = answer.partition(b"\r\n\r\n")
    assert headers.startswith(b"HTTP/1.1 413 "), answer[:300]
    assert b"connection: close" in headers.lower()
    assert json.loads(body)["kind"] == "too_large"


@pytest.mark.parametrize("request_kwargs, fragment", [
    ({"json": {}}, "exactly one of image"),
    ({"json": {"text": "a", "image_url": "https://example.org/a.jpg"}}, "got image_url, text"),
    ({"files": upload(photo(1)), "data": {"text": "a cat"}}, "got image, text"),
    ({"json": {"text": "a", "k": 0}}, "k: Input should be greater than or equal to 1"),
    ({"json": {"text": "a", "k": 1000}}, "k must be at most 100"),
    ({"json": {"text": "a", "num_candidates": 20000}}, "num_candidates"),
    ({"json": {"text": "a", "colour": "red"}}, "colour: Extra inputs are not permitted"),
    ({"data": {"text": "a", "colour": "red"}}, "unknown field(s): colour"),
    ({"json": {"text": "   "}}, "the text query is empty"),
    ({"json": {"text": "a", "since": "last tuesday"}}, "since must be an ISO date"),
    ({"content": b"{not json", "headers": {"content-type": "application/json"}}, "JSON"),
])
def test_bad_requests_get_one_plain_line(client, request_kwargs, fragment):
    assert_one_line_error(client.post("/api/search", **request_kwargs), 400, "bad_request", fragment)


def test_an_unknown_content_type_is_refused(client):
    response = client.post("/api/search", content=b"text=a", headers={"content-type": "text/plain"})
    assert_one_line_error(response, 415, "bad_request", "multipart form")


def test_a_missing_index_is_a_plain_503_for_the_api_the_page_and_the_health_check(site_index, searcher):
    with app_client(site_index, searcher, IMGSEARCH_INDEX="test-web-no-such-index") as client:
        answer = client.post("/api/search", json={"text": "a photo"})
        assert_one_line_error(answer, 503, "index_missing", "imgsearch index create --index test-web-no-such-index")
        health = client.get("/api/health")
        assert health.status_code == 503
        assert health.json()["status"] == "unavailable" and "does not exist" in health.json()["index"]["error"]
        page = client.get("/", params={"text": "a photo"}, headers=HTML)
        assert page.status_code == 503 and "The index does not exist" in page.text
        assert "Traceback" not in page.text


def test_an_unreachable_elasticsearch_is_named_without_its_credentials(site_index, searcher, caplog):
    from query.search import Searcher

    secret = {"ES_URL": "http://elastic:hunter2@127.0.0.1:9", "ES_PASSWORD": "hunter2"}
    settings = load_settings({**site_index["env"], **secret})
    down = Searcher(settings, embedder=searcher.embedder)
    caplog.set_level(logging.DEBUG)
    with TestClient(create_app(settings, searcher=down)) as client:
        answer = client.post("/api/search", json={"text": "a photo"})
        assert_one_line_error(answer, 503, "elasticsearch_unavailable", "unreachable at http://***@127.0.0.1:9")
        image = client.post("/api/search", files=upload(photo(3)))
        assert_one_line_error(image, 503, "elasticsearch_unavailable")
        health = client.get("/api/health")
        page = client.post("/", data={"text": "a photo"}, headers=HTML)
        detail = client.get("/images/" + "ab" * 32, headers=HTML)
    assert health.status_code == 503 and health.json()["elasticsearch"]["url"] == "http://***@127.0.0.1:9"
    assert page.status_code == 503 and "Elasticsearch is unreachable" in page.text
    assert detail.status_code == 503
    for text in (answer.text, image.text, health.text, page.text, detail.text, caplog.text):
        assert "hunter2" not in text
    down.close()


# -- the token ------------------------------------------------------------------------------------------------------
def test_a_token_is_required_on_every_request_when_set(site_index, searcher):
    token = "s3cret-token-for-tests"
    with app_client(site_index, searcher, IMGSEARCH_SERVE_TOKEN=token) as client:
        refused = client.post("/api/search", json={"text": "a photo"})
        assert_one_line_error(refused, 401, "unauthorized", "Bearer")
        assert refused.headers["www-authenticate"].startswith("Bearer")
        wrong = client.post("/api/search", json={"text": "a photo"}, headers={"authorization": "Bearer nope"})
        assert wrong.status_code == 401
        for path in ("/api/health", "/openapi.json", "/docs", "/thumbs/" + "ab" * 32 + ".jpg", "/images/x"):
            assert client.get(path).status_code == 401, path
        page = client.get("/", params={"text": "cat"}, headers=HTML, follow_redirects=False)
        assert page.status_code == 303 and page.headers["location"] == "/login?next=%2F%3Ftext%3Dcat"
        assert client.get("/static/style.css").status_code == 200  # the login page's own style is open
        good = client.post("/api/search", json={"text": "a photo", "k": 2},
                           headers={"authorization": f"Bearer {token}"})
        assert good.status_code == 200 and len(good.json()["results"]) == 2
        bad_login = client.post("/login", data={"token": "guess", "next": "/"}, headers=HTML)
        assert bad_login.status_code == 401 and "not the right one" in bad_login.text
        login = client.post("/login", data={"token": token, "next": "//evil.example/"}, headers=HTML,
                            follow_redirects=False)
        assert login.status_code == 303 and login.headers["location"] == "/"
        cookie = login.headers["set-cookie"].lower()
        assert "httponly" in cookie and "samesite=strict" in cookie
        assert client.get("/", headers=HTML).status_code == 200  # the browser's cookie now carries it
        assert client.get("/api/health").status_code == 200


def test_without_a_token_setting_nothing_asks_for_one(client):
    assert client.get("/api/health").status_code == 200
    assert client.get("/login", follow_redirects=False).status_code == 303


# -- the other endpoints --------------------------------------------------------------------------------------------
def test_health_gives_elasticsearch_the_index_counts_and_the_models(client, site_index, standin_models):
    response = client.get("/api/health")
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["status"] == "ok"
    assert body["elasticsearch"]["status"] in ("green", "yellow") and body["elasticsearch"]["version"]
    assert body["index"]["alias"] == site_index["env"]["IMGSEARCH_INDEX"]
    assert body["index"]["images"]["docs"] == PHOTOS
    assert body["index"]["sources"]["docs"] == PHOTOS + len(ON_BOTH_PAGES)
    assert body["models"]["image"] == str(standin_models[0]) and body["models"]["text"] == str(standin_models[1])


def test_an_image_with_all_its_sources(client, site_index):
    site = site_index["site"]
    image_id = image_id_of(client, 1)
    response = client.get(f"/api/images/{image_id}")
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["image"]["image_id"] == image_id and body["image"]["image_url"] == site.url + "/photos/w1.jpg"
    assert body["image"]["domains"] == ["127.0.0.1"] and body["image"]["width"] == 380
    assert body["sources_total"] == 2
    assert [s["page_title"] for s in body["sources"]] == ["Web gallery", "More photos"]
    assert [s["alt_text"] for s in body["sources"]] == ["photo 1", "again 1"]
    seen = [s["first_seen"] for s in body["sources"]]
    assert seen == sorted(seen)
    assert_one_line_error(client.get("/api/images/" + "0" * 64), 404, "not_found")
    assert_one_line_error(client.get("/api/images/not-an-id"), 404, "not_found")
    page = client.get(f"/images/{image_id}", headers=HTML)
    assert page.status_code == 200
    assert "More photos" in page.text and "Seen on 2 pages, oldest first" in page.text


def test_thumbnails_come_from_the_image_store(client, site_index):
    site = site_index["site"]
    image_id = image_id_of(client, 4)
    before = site.fetched("/photos/")
    response = client.get(f"/thumbs/{image_id}.jpg")
    assert response.status_code == 200 and response.headers["content-type"] == "image/jpeg"
    with Image.open(io.BytesIO(response.content)) as thumb:
        assert max(thumb.size) <= 256
    assert site.fetched("/photos/") == before, "a thumbnail never comes from the crawled site"
    assert client.get("/thumbs/" + "0" * 64 + ".jpg").status_code == 404
    assert client.get("/thumbs/..%2F..%2Fetc%2Fpasswd.jpg").status_code == 404


def test_a_store_without_thumbnails_makes_them_from_the_originals(tmp_path):
    data = photo(6)
    image_id = "ab" * 32
    (tmp_path / "full" / "ab").mkdir(parents=True)
    (tmp_path / "full" / "ab" / f"{image_id}.jpg").write_bytes(data)
    store = ImageStore(str(tmp_path), max_bytes=10**7, max_pixels=10**8)
    made = store.thumbnail(image_id)
    assert isinstance(made, bytes)
    with Image.open(io.BytesIO(made)) as thumb:
        assert thumb.format == "JPEG" and max(thumb.size) == 256
    assert store.original(image_id) == data
    assert ImageStore("s3://bucket/store", max_bytes=1, max_pixels=1).thumbnail(image_id) is None


def test_the_page_shows_results_with_thumbnails_from_this_server(client, site_index):
    site = site_index["site"]
    response = client.post("/", files=upload(photo(0)), data={"k": "6", "image_url": "", "text": ""}, headers=HTML)
    assert response.status_code == 200, response.text
    html = response.text
    assert html.count('class="result"') == 6
    assert html.index('data-match="exact"') < html.index('data-match="semantic"')
    assert f'href="{site.url}/"' in html and "Web gallery" in html and "More photos" in html
    sources = re.findall(r'<img[^>]* src="([^"]+)"', html)
    assert sources and all(s.startswith(("/thumbs/", "data:image/jpeg;base64,")) for s in sources), sources
    assert "content-security-policy" in response.headers and response.headers["x-content-type-options"] == "nosniff"
    text = client.get("/", params={"text": "a photo", "k": 3}, headers=HTML)
    assert text.status_code == 200 and text.text.count('class="result"') == 3
    assert "the text “a photo”" in text.text
    hostile = client.get("/", params={"text": '<script>alert("x")</script>', "k": 1}, headers=HTML)
    assert "&lt;script&gt;alert(&#34;x&#34;)&lt;/script&gt;" in hostile.text and "<script>alert" not in hostile.text


def test_the_page_says_plainly_what_is_wrong(client):
    response = client.post("/", files=upload(b"plain text, no picture", "notes.txt", "text/plain"), headers=HTML)
    assert response.status_code == 415
    assert "That is not an image we can read" in response.text and "Traceback" not in response.text
    nothing = client.post("/", data={"text": "", "image_url": ""}, headers=HTML)
    assert nothing.status_code == 400 and "choose, drop or paste an image" in nothing.text
    missing = client.get("/images/" + "0" * 64, headers=HTML)
    assert missing.status_code == 404 and "Not found" in missing.text


def test_the_api_is_documented_by_the_openapi_page(client):
    schema = client.get("/openapi.json").json()
    assert {"/api/search", "/api/images/{image_id}", "/api/health"} <= set(schema["paths"])
    assert "/" not in schema["paths"] and "/thumbs/{image_id}.jpg" not in schema["paths"]
    body = schema["paths"]["/api/search"]["post"]["requestBody"]["content"]
    assert {"application/json", "multipart/form-data"} == set(body)
    assert body["multipart/form-data"]["schema"]["properties"]["image"]["format"] == "binary"
    assert client.get("/docs").status_code == 200


def test_the_models_are_loaded_once_at_start(site_index, monkeypatch):
    import pipelines.embedding as embedding

    loads = []
    real = embedding.load_model
    monkeypatch.setattr(embedding, "load_model", lambda name, **kw: loads.append(name) or real(name, **kw))
    with TestClient(create_app(site_index["settings"])) as client:
        assert len(loads) == 2, "both models load before the first request"
        assert client.post("/api/search", files=upload(photo(7)), data={"k": "2"}).status_code == 200
        assert client.post("/api/search", json={"text": "a photo", "k": 2}).status_code == 200
    env = site_index["env"]
    assert sorted(loads) == sorted([env["IMGSEARCH_IMAGE_MODEL"], env["IMGSEARCH_TEXT_MODEL"]])
