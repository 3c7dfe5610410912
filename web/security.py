"""What makes the server safe to leave running: the token check, the upload cap and the pages' security headers.

Three small ASGI middlewares, outermost first:

- `RequireToken`: with IMGSEARCH_SERVE_TOKEN set, a request passes only with "Authorization: Bearer <token>",
  or with the cookie a browser gets by giving the token once on /login (browsers cannot add a header to a
  page load or an <img>). The stylesheet, the script and /login itself are open; everything else, the API,
  thumbnails and the OpenAPI page included, answers 401 (API) or leads to /login (pages).
- `BodyLimit`: a request body over the cap is refused with 413 before it is read whole: at once when its
  Content-Length says so, else as soon as the bytes received pass the cap (a chunked upload). Either way the
  answer closes the connection, so the server stops reading the rest of the body.
- `SecurityHeaders`: a strict Content-Security-Policy (own scripts and styles only; images from this server,
  or data: and blob: URLs of the user's own query image) and no Referer to the crawled sites the results link to.
"""

from __future__ import annotations

import hmac
import json
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any
from urllib.parse import quote

from starlette.datastructures import Headers, MutableHeaders
from starlette.exceptions import HTTPException

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]

COOKIE = "imgsearch_token"
OPEN_PATHS = ("/login", "/static/")
# Multipart framing and the form's small fields, on top of the image itself.
FORM_OVERHEAD = 64 * 1024
# Pages that load their assets from elsewhere: FastAPI's own documentation pages.
FRAMEWORK_PAGES = ("/docs", "/redoc")
CSP = ("default-src 'self'; img-src 'self' data: blob:; style-src 'self'; script-src 'self'; object-src 'none'; "
       "base-uri 'none'; form-action 'self'; frame-ancestors 'none'")


def wants_json(scope: Scope) -> bool:
    """API paths and clients that ask for JSON get JSON errors; browsers loading a page get HTML."""
    path = scope.get("path", "")
    if path.startswith("/api/") or path == "/openapi.json":
        return True
    accept = Headers(scope=scope).get("accept", "")
    return "text/html" not in accept


def token_matches(given: str | None, token: str) -> bool:
    return bool(given) and hmac.compare_digest(given.encode(), token.encode())


def request_token(headers: Headers) -> str | None:
    """The bearer token of the Authorization header, else the login cookie's."""
    scheme, _, value = headers.get("authorization", "").partition(" ")
    if scheme.lower() == "bearer" and value.strip():
        return value.strip()
    for part in headers.get("cookie", "").split(";"):
        name, _, value = part.strip().partition("=")
        if name == COOKIE and value:
            return value
    return None


async def _send_simple(send: Send, status: int, body: bytes, content_type: str,
                       extra: list[tuple[bytes, bytes]] | None = None) -> None:
    headers = [(b"content-type", content_type.encode()), (b"content-length", str(len(body)).encode()),
               *(extra or [])]
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})


class RequireToken:
    def __init__(self, app: ASGIApp, token: str | None) -> None:
        self.app = app
        self.token = token or None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or self.token is None or scope["path"].startswith(OPEN_PATHS):
            await self.app(scope, receive, send)
            return
        if token_matches(request_token(Headers(scope=scope)), self.token):
            await self.app(scope, receive, send)
            return
        if wants_json(scope) or scope["method"] not in ("GET", "HEAD"):
            body = json.dumps({"error": "this server requires a token: send 'Authorization: Bearer <token>'",
                               "kind": "unauthorized"}).encode()
            await _send_simple(send, 401, body, "application/json",
                               [(b"www-authenticate", b'Bearer realm="imgsearch"')])
            return
        target = scope["path"] + (f"?{scope['query_string'].decode('latin-1')}" if scope.get("query_string") else "")
        location = f"/login?next={quote(target, safe='')}"
        await _send_simple(send, 303, b"", "text/plain", [(b"location", location.encode())])


class BodyLimit:
    def __init__(self, app: ASGIApp, max_bytes: int) -> None:
        self.app = app
        self.max_bytes = max_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["method"] not in ("POST", "PUT", "PATCH"):
            await self.app(scope, receive, send)
            return
        declared = Headers(scope=scope).get("content-length", "")
        if declared.isdigit() and int(declared) > self.max_bytes:
            await self._refuse(scope, send, f"the request is too large ({int(declared)} bytes, limit "
                                            f"{self.max_bytes})")
            return
        received = 0
        over = False

        async def limited() -> Message:
            nonlocal received, over
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > self.max_bytes:
                    over = True
                    # Raised into whatever reads the body; the app's handler turns it into the 413 answer.
                    raise HTTPException(413, f"the request is too large (over {self.max_bytes} bytes)")
            return message

        async def closing(message: Message) -> None:
            # On a connection kept alive the server would go on reading, and discarding, the rest of the body
            # (however long the client sends); closing it ends the upload with the answer.
            if over and message["type"] == "http.response.start":
                MutableHeaders(scope=message)["connection"] = "close"
            await send(message)

        await self.app(scope, limited, closing)

    @staticmethod
    async def _refuse(scope: Scope, send: Send, message: str) -> None:
        if wants_json(scope):
            body = json.dumps({"error": message, "kind": "too_large"}).encode()
            await _send_simple(send, 413, body, "application/json", [(b"connection", b"close")])
        else:
            await _send_simple(send, 413, f"{message}\n".encode(), "text/plain; charset=utf-8",
                               [(b"connection", b"close")])


class SecurityHeaders:
    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        framework_page = scope["path"] in FRAMEWORK_PAGES

        async def with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                headers = MutableHeaders(scope=message)
                headers.setdefault("x-content-type-options", "nosniff")
                headers.setdefault("referrer-policy", "no-referrer")
                if not framework_page:
                    headers.setdefault("content-security-policy", CSP)
                    headers.setdefault("x-frame-options", "DENY")
            await send(message)

        await self.app(scope, receive, with_headers)
