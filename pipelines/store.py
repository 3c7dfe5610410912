"""Where the crawl keeps the originals and thumbnails: the one reader of FILES_STORE, for the crawl, the page,
`index upgrade` and `reembed` alike (they read what the crawl wrote)."""

from __future__ import annotations

import re
from pathlib import Path

# An image's id: the SHA-256 of its bytes, as the store and the index name it.
IMAGE_ID = re.compile(r"^[0-9a-f]{64}$")


def local_store(files_store: str) -> Path | None:
    """The store's folder as an absolute path, or None for a remote store (s3://, gs://, ftp://).

    A plain path or a file:// URL (file:///srv/store is /srv/store), with `~` expanded: Scrapy's own store takes
    `~` literally, as a folder of that name below the working directory.
    """
    if "://" in files_store:
        scheme, rest = files_store.split("://", 1)
        if scheme.lower() != "file":
            return None
        files_store = rest
    return Path(files_store).expanduser().absolute()
