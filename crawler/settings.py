"""Scrapy settings for the imgsearch crawler, and the one place every imgsearch setting is defined.

Every name in this module can be overridden by an environment variable of the same name (see the end of
the file), so `IMGSEARCH_INDEX=photos imgsearch crawl ...`, a cron job and a Scrapyd job all configure the
same way. Command-line flags override both.
"""

from __future__ import annotations

import os
from pathlib import Path

BOT_NAME = "imgsearch"
SPIDER_MODULES = ["crawler.spiders"]
NEWSPIDER_MODULE = "crawler.spiders"

# --- Politeness: a crawl must be gentle with the sites it visits -------------------------------------------
ROBOTSTXT_OBEY = True
USER_AGENT = "imgsearch/0.1 (+https://github.com/imgsearch/imgsearch)"
CONCURRENT_REQUESTS = 16
CONCURRENT_REQUESTS_PER_DOMAIN = 4
DOWNLOAD_DELAY = 0.25
AUTOTHROTTLE_ENABLED = True
AUTOTHROTTLE_START_DELAY = 0.5
AUTOTHROTTLE_TARGET_CONCURRENCY = 2.0
DOWNLOAD_TIMEOUT = 30
RETRY_TIMES = 2
REDIRECT_MAX_TIMES = 10
# Pages bigger than this are not worth parsing; images have their own cap (IMGSEARCH_FETCH_MAX_BYTES).
DOWNLOAD_MAXSIZE = 20 * 1024 * 1024
DOWNLOAD_WARNSIZE = 0
COOKIES_ENABLED = False
TELNETCONSOLE_ENABLED = False
LOG_LEVEL = "INFO"
# Let images on other hosts (CDNs) through the offsite middleware: the fetch stage sets allow_offsite on
# image requests, and the spiders' allowed_domains still bound which pages are followed.
ITEM_PIPELINES = {
    "pipelines.fetch.FetchPipeline": 100,
    "pipelines.embedding.EmbedPipeline": 200,
    "pipelines.indexing.IndexPipeline": 300,
}
EXTENSIONS = {
    "crawler.joblock.JobLock": 0,
    "crawler.progress.Progress": 500,
}
# With a job directory (JOBDIR, `imgsearch crawl --job-dir`), a page journal that survives SIGKILL: a resumed
# crawl finishes every page that was scheduled, none lost (see crawler/jobstate.py).
SCHEDULER = "crawler.jobstate.JournalScheduler"
SPIDER_MIDDLEWARES = {
    "crawler.jobstate.PageTracker": 10,
}
# Before Scrapy's RetryMiddleware (550) sees a 429 or 503: wait out its Retry-After.
DOWNLOADER_MIDDLEWARES = {
    "crawler.middlewares.RetryAfterMiddleware": 560,
}
# One response's worth of items at a time keeps memory bounded: each item may hold a decoded image.
CONCURRENT_ITEMS = 64
FEED_EXPORT_ENCODING = "utf-8"

# Seconds between progress lines during a crawl (0: none).
IMGSEARCH_PROGRESS_SECONDS = 10

# --- imgsearch: Elasticsearch -------------------------------------------------------------------------------
# Cluster to use; unset means the local node managed by `imgsearch es start`. Comma-separated for several nodes.
ES_URL = None
# API key (base64 "id:key" form) for ES_URL; takes precedence over ES_USERNAME/ES_PASSWORD.
ES_API_KEY = None
# Basic-auth user and password for ES_URL.
ES_USERNAME = None
ES_PASSWORD = None
# CA bundle that signed the cluster's certificate, for https ES_URL.
ES_CA_CERTS = None
# Seconds to wait for one Elasticsearch request.
ES_REQUEST_TIMEOUT = 30
# HTTP port of the local node started by `imgsearch es start`.
IMGSEARCH_ES_PORT = 9200
# JVM heap of the local node.
IMGSEARCH_ES_HEAP = "1g"
# Folder for the downloaded Elasticsearch, the local node's data and logs, and other caches.
IMGSEARCH_CACHE_DIR = None
# Alias of the image index; the sources index is this name plus "-sources".
IMGSEARCH_INDEX = "my-image-embeddings"
# Primary shards and replicas of newly created indices (one node: 1 shard, 0 replicas).
IMGSEARCH_SHARDS = 1
IMGSEARCH_REPLICAS = 0

# --- imgsearch: fetch stage ---------------------------------------------------------------------------------
# Where the original image bytes are kept (a folder or s3://bucket/prefix); relative_path is inside it.
FILES_STORE = None
# Images larger than this many bytes are not downloaded.
IMGSEARCH_FETCH_MAX_BYTES = 20 * 1024 * 1024
# Images with more pixels than this are refused before decoding (decompression-bomb guard).
IMGSEARCH_FETCH_MAX_PIXELS = 50_000_000
# Images smaller than this (icons, spacers, tracking pixels) are skipped.
IMGSEARCH_FETCH_MIN_WIDTH = 32
IMGSEARCH_FETCH_MIN_HEIGHT = 32
# Recently fetched image URLs remembered in memory, so an image shown on many pages is downloaded once.
IMGSEARCH_FETCH_SEEN_URLS = 100_000
# Pages and images marked noai, noimageai or noimageindex (X-Robots-Tag, robots meta) are not indexed, except
# on these domains (comma-separated, subdomains included): an owner indexing their own site.
IMGSEARCH_NOAI_EXEMPT_DOMAINS = ""
# A 429 or 503 answer's Retry-After (seconds or a date) is waited out, up to this many seconds, and the site's
# download delay raised to it, before Scrapy's retry.
IMGSEARCH_RETRY_AFTER_MAX = 300
# A re-crawl does not download an indexed image URL fetched (or confirmed unchanged) less than this many days
# ago; an older one is asked for with its ETag / Last-Modified. 0: always ask.
IMGSEARCH_REFRESH_DAYS = 30

# --- imgsearch: embed stage ---------------------------------------------------------------------------------
# Image model (hub name or local folder); indexing and image queries both use it.
IMGSEARCH_IMAGE_MODEL = "sentence-transformers/clip-ViT-B-32"
# Text model for text queries (hub name or local folder), mapping into the image model's space.
IMGSEARCH_TEXT_MODEL = "sentence-transformers/clip-ViT-B-32-multilingual-v1"
# auto (CUDA when present, else CPU), cpu, or cuda[:N].
IMGSEARCH_EMBED_DEVICE = "auto"
# Images in the pipeline (downloaded, embedded or being indexed) at once; more wait before downloading, so a
# slow model or Elasticsearch bounds memory instead of filling it.
IMGSEARCH_FETCH_MAX_IN_FLIGHT = 400
# Images per model call; a batch is sent early after IMGSEARCH_EMBED_FLUSH_SECONDS.
IMGSEARCH_EMBED_BATCH_SIZE = 32
IMGSEARCH_EMBED_FLUSH_SECONDS = 0.5
# bf16 on CPUs that support it, when its embeddings stay within this cosine of fp32 (0 disables bf16).
IMGSEARCH_EMBED_BF16_MIN_COSINE = 0.99

# --- imgsearch: index stage ---------------------------------------------------------------------------------
# Images per bulk request; a bulk is sent early after IMGSEARCH_INDEX_FLUSH_SECONDS.
IMGSEARCH_INDEX_BATCH_SIZE = 200
IMGSEARCH_INDEX_FLUSH_SECONDS = 1.0
# Retries (exponential backoff) of a bulk or a document on 429, 5xx and connection errors.
IMGSEARCH_INDEX_MAX_RETRIES = 5
IMGSEARCH_INDEX_RETRY_BACKOFF = 1.0
# Documents that still fail are written here (JSON lines) for `imgsearch replay`.
IMGSEARCH_INDEX_DEAD_LETTER_DIR = None

# --- imgsearch: query ---------------------------------------------------------------------------------------
# kNN candidates are re-ranked with the full-precision vectors, oversample x k of them: int8 quantisation alone
# orders close neighbours too roughly (see bench/query.py).
IMGSEARCH_QUERY_OVERSAMPLE = 3.0
# A near duplicate is an image with a perceptual hash (whole or of a crop) at most this many bits (of 64) from
# the query's: edited copies measure within 10, different pictures almost never (bench/copies.py).
IMGSEARCH_QUERY_NEAR_BITS = 10


def _user_dir(env: str, fallback: str) -> Path:
    return Path(os.environ.get(env) or Path.home() / fallback) / "imgsearch"


def default_cache_dir() -> Path:
    # The local node runs as an unprivileged user when we are root, and it cannot enter /root: root's
    # cache therefore lives in /var/cache.
    if hasattr(os, "geteuid") and os.geteuid() == 0 and not os.environ.get("XDG_CACHE_HOME"):
        return Path("/var/cache/imgsearch")
    return _user_dir("XDG_CACHE_HOME", ".cache")


def default_data_dir() -> Path:
    return _user_dir("XDG_DATA_HOME", ".local/share")


def _apply_environment(namespace: dict) -> None:
    """Let an environment variable of the same name override each setting above."""
    for name in [n for n in namespace if n.isupper()]:
        if name in os.environ:
            namespace[name] = os.environ[name]


_apply_environment(globals())
IMGSEARCH_CACHE_DIR = IMGSEARCH_CACHE_DIR or str(default_cache_dir())
FILES_STORE = FILES_STORE or str(default_data_dir() / "store")
IMGSEARCH_INDEX_DEAD_LETTER_DIR = IMGSEARCH_INDEX_DEAD_LETTER_DIR or str(default_data_dir() / "dead-letter")
