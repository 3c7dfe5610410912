"""What a query image can be: a file path, an http(s) URL, bytes, or a PIL image — always read as bytes.

URLs are fetched with requests, with a timeout, a size cap, a content-type check and the address guard at
every redirect hop (and the connection made to the address it checked).
"""

from __future__ import annotations

import io
import os
from pathlib import Path
from typing import Any
from urllib.parse import urljoin

from query.address_guard import AddressRefused, GuardedAdapter, Resolver, system_resolver

MAX_QUERY_BYTES = 20 * 1024 * 1024
FETCH_TIMEOUT = (5.0, 15.0)
MAX_REDIRECTS = 5


class QueryInputError(Exception):
    """The query image cannot be read (missing file, refused URL, too large, not an image)."""


def _from_pil(image: Any) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")  # lossless: the query sees exactly these pixels
    return buffer.getvalue()


def fetch_url(url: str, *, allow_private: bool = False, max_bytes: int = MAX_QUERY_BYTES,
              resolver: Resolver = system_resolver, adapter: GuardedAdapter | None = None) -> bytes:
    """GET an image URL, refusing internal addresses (at every hop), non-images and oversize bodies.

    `adapter` replaces the guarded connection layer (tests: canned answers, nothing sent)."""
    import requests

    with requests.Session() as http:  # closed at once: its pooled sockets are not left to the collector
        http.trust_env = False  # direct connections only: see query.address_guard
        guard = adapter or GuardedAdapter(allow_private=allow_private, resolver=resolver)
        http.mount("http://", guard)
        http.mount("https://", guard)
        current = url
        for _ in range(MAX_REDIRECTS + 1):
            if not current.lower().startswith(("http://", "https://")):
                raise QueryInputError(f"not an http(s) URL: {current}")
            try:
                response = http.get(current, stream=True, timeout=FETCH_TIMEOUT, allow_redirects=False,
                                    headers={"Accept": "image/*"})
            except (AddressRefused, ValueError) as exc:
                raise QueryInputError(str(exc)) from exc
            except requests.RequestException as exc:
                raise QueryInputError(f"cannot fetch {current}: {type(exc).__name__}") from exc
            with response:
                if response.is_redirect:
                    current = urljoin(current, response.headers.get("Location", ""))
                    continue
                if response.status_code != 200:
                    raise QueryInputError(f"cannot fetch {current}: HTTP {response.status_code}")
                content_type = response.headers.get("Content-Type", "").split(";")[0].strip().lower()
                is_image = content_type.startswith("image/") or content_type == "application/octet-stream"
                if content_type and not is_image:
                    raise QueryInputError(f"{current} is not an image (Content-Type {content_type})")
                declared = response.headers.get("Content-Length")
                if declared and declared.isdigit() and int(declared) > max_bytes:
                    raise QueryInputError(f"{current} is too large ({int(declared)} bytes, limit {max_bytes})")
                chunks, size = [], 0
                for chunk in response.iter_content(64 * 1024):
                    size += len(chunk)
                    if size > max_bytes:
                        raise QueryInputError(f"{current} is too large (over {max_bytes} bytes)")
                    chunks.append(chunk)
                return b"".join(chunks)
        raise QueryInputError(f"{url}: more than {MAX_REDIRECTS} redirects")


def read_source(source: Any, *, allow_private: bool = False, max_bytes: int = MAX_QUERY_BYTES) -> bytes:
    """The bytes of a query image given as a path, an http(s) URL, bytes or a PIL image."""
    if isinstance(source, (bytes, bytearray, memoryview)):
        return bytes(source)
    if hasattr(source, "save") and hasattr(source, "size"):
        return _from_pil(source)
    if isinstance(source, str) and source.lower().startswith(("http://", "https://")):
        return fetch_url(source, allow_private=allow_private, max_bytes=max_bytes)
    if isinstance(source, (str, os.PathLike)):
        path = Path(source).expanduser()
        try:
            size = path.stat().st_size
            if size > max_bytes:
                raise QueryInputError(f"{path} is too large ({size} bytes, limit {max_bytes})")
            return path.read_bytes()
        except FileNotFoundError as exc:
            raise QueryInputError(f"{path}: no such file") from exc
        except IsADirectoryError as exc:
            raise QueryInputError(f"{path} is a folder, not an image file") from exc
        except OSError as exc:
            raise QueryInputError(f"cannot read {path}: {exc.strerror or exc}") from exc
    raise QueryInputError(f"cannot use a {type(source).__name__} as a query image")
