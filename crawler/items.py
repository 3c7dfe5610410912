"""The one item that flows through the pipeline: an image URL found on a page, filled in stage by stage."""

from __future__ import annotations

import scrapy


class ImageItem(scrapy.Item):
    # Found by the spider (crawler.extract).
    page_url = scrapy.Field()
    page_title = scrapy.Field()
    alt_text = scrapy.Field()
    image_url = scrapy.Field()
    # Filled by the fetch stage (pipelines.fetch).
    image_id = scrapy.Field()  # SHA-256 of the image bytes, also the image document id
    image_name = scrapy.Field()  # file name from the URL path
    relative_path = scrapy.Field()  # where the original bytes are kept, inside FILES_STORE
    thumbnail_path = scrapy.Field()  # a JPEG thumbnail (longest side THUMBNAIL_SIDE), inside FILES_STORE
    width = scrapy.Field()
    height = scrapy.Field()
    format = scrapy.Field()  # Pillow format name, lower case: jpeg, png, gif, webp, bmp, tiff
    bytes = scrapy.Field()
    known = scrapy.Field()  # True when the image is already indexed: embedding and the image write are skipped
    phash = scrapy.Field()  # the whole image's perceptual hash, 16 hex digits (pipelines.phash)
    phash_crops = scrapy.Field()  # [{"crop": name, "hash": hex}]: the whole image and its crops
    # Set when this URL was downloaded or revalidated now: the index stage records it in the urls index.
    url_checked = scrapy.Field()
    http_etag = scrapy.Field()
    http_last_modified = scrapy.Field()
    # Decoded, shrunk RGB image handed from fetch to embed; removed as soon as it is embedded.
    image = scrapy.Field()
    # Filled by the embed stage (pipelines.embedding).
    image_embedding = scrapy.Field()  # L2-normalised float32 vector
    model = scrapy.Field()


class SourceCheckItem(scrapy.Item):
    """A source page re-checked by the `check_sources` spider; written by pipelines.source_status."""

    page_url = scrapy.Field()
    outcome = scrapy.Field()  # checked | not_modified | gone | failed | skipped
    reason = scrapy.Field()  # http_404, http_410 (the page is gone), or why it could not be checked
    # One per source (occurrence) of the page: {"id", "image_url", "gone_since", "live": bool | None}; live is
    # None when the page could not be checked or was not modified.
    sources = scrapy.Field()
    page_etag = scrapy.Field()  # the answer's validators, for the next check's conditional request
    page_last_modified = scrapy.Field()
