"""Images from the store the crawl kept (FILES_STORE), never from the crawled sites.

The crawl writes each original at `full/<sha[:2]>/<sha>.<ext>` and a small JPEG at `thumbs/<sha[:2]>/<sha>.jpg`
(pipelines.fetch). A result's thumbnail is that JPEG; for an image crawled before thumbnails were kept, one is
made from the original (and remembered, a bounded number of them). A store that is not a local folder (s3://)
has no thumbnails here: the page then shows the image's name instead.
"""

from __future__ import annotations

import functools
import io
from pathlib import Path

from pipelines import imaging
from pipelines.fetch import thumbnail, thumbnail_path_for
from pipelines.store import IMAGE_ID, local_store

MADE_THUMBNAILS_KEPT = 256


class ImageStore:
    def __init__(self, files_store: str, *, max_bytes: int, max_pixels: int) -> None:
        self.root = local_store(files_store)
        self.max_bytes = max_bytes
        self.max_pixels = max_pixels
        self._made = functools.lru_cache(maxsize=MADE_THUMBNAILS_KEPT)(self._make_thumbnail)

    def original_path(self, image_id: str) -> Path | None:
        """The original file of an image (its id is the SHA-256 of its bytes), if the store is local and has it."""
        if self.root is None or not IMAGE_ID.match(image_id):
            return None
        folder = self.root / "full" / image_id[:2]
        return next(iter(sorted(folder.glob(f"{image_id}.*"))), None)

    def original(self, image_id: str) -> bytes | None:
        path = self.original_path(image_id)
        try:
            return path.read_bytes() if path is not None else None
        except OSError:
            return None

    def thumbnail(self, image_id: str) -> Path | bytes | None:
        """The kept thumbnail's path, else a JPEG made from the original, else None. Blocking: call it off the
        event loop."""
        if self.root is None or not IMAGE_ID.match(image_id):
            return None
        kept = self.root / thumbnail_path_for(image_id)
        if kept.is_file():
            return kept
        original = self.original_path(image_id)
        return self._made(original) if original is not None else None

    def _make_thumbnail(self, original: Path) -> bytes | None:
        try:
            loaded = imaging.load_image(original.read_bytes(), max_bytes=self.max_bytes, max_pixels=self.max_pixels,
                                        min_width=1, min_height=1)
        except (OSError, imaging.ImageRejected):
            return None
        return thumbnail(loaded.image)


def query_preview(data: bytes, *, max_bytes: int, max_pixels: int, side: int = 160) -> bytes | None:
    """A small JPEG of the user's own query image, for the page to show what was searched for."""
    try:
        loaded = imaging.load_image(data, max_bytes=max_bytes, max_pixels=max_pixels, min_width=1, min_height=1)
    except imaging.ImageRejected:
        return None
    small = loaded.image.copy()
    small.thumbnail((side, side))
    buffer = io.BytesIO()
    small.save(buffer, format="JPEG", quality=80)
    return buffer.getvalue()
