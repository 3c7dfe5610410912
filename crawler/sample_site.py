"""A small website served on 127.0.0.1, for the demo and the tests: generated photo-like images on a few pages.

`SiteServer` serves a dict of routes from a background thread and records every request path, so tests can
assert what was (and was not) fetched.
"""

from __future__ import annotations

import html
import io
import threading
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import numpy as np
from PIL import Image, ImageDraw


@dataclass
class Route:
    body: bytes | Callable[[], bytes]
    content_type: str = "text/html; charset=utf-8"
    status: int = 200
    headers: dict[str, str] | None = None  # an ETag or Last-Modified here is honoured in conditional requests
    delay: float = 0.0  # seconds before answering (a slow site)
    gate: threading.Event | None = None  # answered once it is set (a site held still while a test looks); 60 s at most
    then: Route | None = None  # served once, then replaced by `then` (e.g. a 429, then the page)


class SiteServer:
    """Serve routes ({path: Route}) on 127.0.0.1 at a free port; use as a context manager."""

    def __init__(self, routes: dict[str, Route] | None = None, host: str = "127.0.0.1", port: int = 0) -> None:
        self.routes: dict[str, Route] = dict(routes or {})
        self.requests: Counter[str] = Counter()
        self.not_modified: Counter[str] = Counter()  # 304 answers per path
        self.times: dict[str, list[float]] = {}  # path -> time.monotonic() of each request
        self.answering = 0  # requests being answered now
        self.most_at_once = 0  # the most requests answered at the same time
        self._lock = threading.Lock()
        server = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def do_GET(self) -> None:  # noqa: N802 (http.server's naming)
                with server._lock:
                    server.answering += 1
                    server.most_at_once = max(server.most_at_once, server.answering)
                try:
                    self._answer()
                finally:
                    with server._lock:
                        server.answering -= 1

            def _answer(self) -> None:
                path = self.path.split("#", 1)[0]
                with server._lock:
                    server.requests[path] = server.requests[path] + 1
                    server.times.setdefault(path, []).append(time.monotonic())
                    key = path if path in server.routes else path.split("?", 1)[0]
                    route = server.routes.get(key)
                    if route is not None and route.then is not None:
                        server.routes[key] = route.then
                if route is None:
                    route = Route(b"<html><body>not found</body></html>", status=404)
                if route.delay:
                    time.sleep(route.delay)
                if route.gate is not None:
                    route.gate.wait(60)
                headers = route.headers or {}
                if route.status == 200 and self._unchanged(headers):
                    with server._lock:
                        server.not_modified[path] += 1
                    self.send_response(304)
                    for name in ("ETag", "Last-Modified"):
                        if name in headers:
                            self.send_header(name, headers[name])
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                    return
                body = route.body() if callable(route.body) else route.body
                self.send_response(route.status)
                self.send_header("Content-Type", route.content_type)
                self.send_header("Content-Length", str(len(body)))
                for name, value in (route.headers or {}).items():
                    self.send_header(name, value)
                self.end_headers()
                self.wfile.write(body)

            def _unchanged(self, headers: dict[str, str]) -> bool:
                etag, since = self.headers.get("If-None-Match"), self.headers.get("If-Modified-Since")
                if etag is not None and "ETag" in headers:
                    return etag == headers["ETag"]
                return since is not None and since == headers.get("Last-Modified")

            def log_message(self, format: str, *args: object) -> None:  # noqa: A002
                pass

        self.httpd = ThreadingHTTPServer((host, port), Handler)
        self.httpd.daemon_threads = True
        self.port = self.httpd.server_address[1]
        self.url = f"http://{host}:{self.port}"
        self._thread = threading.Thread(target=self.httpd.serve_forever, name=f"site-{self.port}", daemon=True)

    def __enter__(self) -> SiteServer:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()

    def fetched(self, prefix: str) -> int:
        with self._lock:
            return sum(n for path, n in self.requests.items() if path.startswith(prefix))


def photo_like(seed: int, width: int = 480, height: int = 360) -> Image.Image:
    """A deterministic, varied picture: smooth colour fields, shapes and grain, unlike any other seed's."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:height, 0:width].astype(np.float32)
    channels = []
    for _ in range(3):
        fx, fy = rng.uniform(0.5, 4, 2)
        phase = rng.uniform(0, 6.28)
        channels.append(np.sin(x / width * fx * 6.28 + phase) * np.cos(y / height * fy * 6.28) * 0.5 + 0.5)
    pixels = np.stack(channels, axis=-1) * rng.uniform(120, 255, 3)
    image = Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8), "RGB")
    draw = ImageDraw.Draw(image)
    for _ in range(int(rng.integers(3, 9))):
        x0, y0 = rng.integers(0, width), rng.integers(0, height)
        x1, y1 = x0 + rng.integers(2, max(3, width // 2)), y0 + rng.integers(2, max(3, height // 2))
        colour = tuple(int(c) for c in rng.integers(0, 256, 3))
        (draw.ellipse if rng.random() < 0.5 else draw.rectangle)([x0, y0, x1, y1], fill=colour)
    grain = rng.normal(0, 6, (height, width, 3))
    return Image.fromarray(np.clip(np.asarray(image, dtype=np.float32) + grain, 0, 255).astype(np.uint8), "RGB")


def encode(image: Image.Image, fmt: str = "JPEG", **options: object) -> bytes:
    buffer = io.BytesIO()
    if fmt.upper() in ("JPEG", "JPG") and "quality" not in options:
        options["quality"] = 88
    image.save(buffer, format=fmt, **options)
    return buffer.getvalue()


def page(title: str, body: str, head: str = "") -> Route:
    return Route(f"<!doctype html><html><head><title>{html.escape(title)}</title>{head}</head>"
                 f"<body>{body}</body></html>".encode())


def demo_site(images: int = 36, pages: int = 4) -> dict[str, Route]:
    """The demo's site: `images` distinct pictures over `pages` gallery pages and an index page."""
    routes: dict[str, Route] = {}
    per_page = max(1, images // pages)
    links = []
    for p in range(pages):
        cells = []
        for i in range(p * per_page, min(images, (p + 1) * per_page)):
            path = f"/images/photo-{i:03d}.jpg"
            routes[path] = Route(encode(photo_like(i, 480 + (i % 5) * 40, 360)), "image/jpeg")
            cells.append(f'<figure><img src="{path}" alt="Photo {i}"><figcaption>Photo {i}</figcaption></figure>')
        routes[f"/gallery/{p + 1}.html"] = page(f"Gallery {p + 1}", "".join(cells))
        links.append(f'<li><a href="/gallery/{p + 1}.html">Gallery {p + 1}</a></li>')
    routes["/"] = page("Sample photo site", f"<h1>Sample photo site</h1><ul>{''.join(links)}</ul>")
    routes["/robots.txt"] = Route(b"User-agent: *\nAllow: /\n", "text/plain")
    return routes
