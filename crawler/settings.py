"""Scrapy settings for the imgsearch crawler, and the one place every imgsearch setting is defined.

Every name in this module can be overridden by an environment variable of the same name (see the end of
the file), so `IMGSEARCH_INDEX=photos imgsearch crawl ...`, a cron job and a Scrapyd job all configure the
same way. Command-line flags (and `-s NAME=VALUE`) override both; an empty value means the default.
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from pathlib import Path

BOT_NAME = "imgsearch"
SPIDER_MODULES = ["crawler.spiders"]
NEWSPIDER_MODULE = "crawler.spiders"

# --- Politeness: a crawl must be gentle with the sites it visits -------------------------------------------
ROBOTSTXT_OBEY = True
USER_AGENT = "imgsearch/0.1 (+https://github.com/imgsearch/imgsearch)"
CONCURRENT_REQUESTS = 16
CONCURRENT_REQUESTS_PER_DOMAIN = 4
# Applies it to the images the fetch stage queues too (see crawler/downloader.py).
DOWNLOADER = "crawler.downloader.Downloader"
DOWNLOAD_DELAY = 0.25
AUTOTHROTTLE_ENABLED = True
AUTOTHROTTLE_START_DELAY = 0.5
AUTOTHROTTLE_TARGET_CONCURRENCY = 2.0
DOWNLOAD_TIMEOUT = 30.0
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
ADDONS = {
    # The defaults that depend on other settings, derived once every override is in, and each value checked
    # (crawler/config.py): first, so that the add-ons after it read checked values.
    "crawler.config.ResolvedSettings": 0,
    # With IMGSEARCH_REDIS_URL set, a crawl frontier shared by several crawl processes replaces that scheduler
    # (crawler/frontier.py); without it, this add-on changes nothing.
    "crawler.frontier.SharedFrontier": 10,
}
# Before Scrapy's RetryMiddleware (550) sees a 429 or 503: wait out its Retry-After. And Scrapy's robots.txt
# middleware replaced by one that gives its rules to every request waiting for them (crawler/robots.py).
# Scrapy's redirect middlewares replaced by ones that count a redirect loop and an endless chain under reasons
# of their own; a page whose markup declares UTF-16 read as UTF-8 once decompressed (590), before its meta
# refresh is read (580). See crawler/middlewares.py.
DOWNLOADER_MIDDLEWARES = {
    "crawler.middlewares.RetryAfterMiddleware": 560,
    "scrapy.downloadermiddlewares.robotstxt.RobotsTxtMiddleware": None,
    "crawler.robots.RobotsTxtMiddleware": 100,
    "scrapy.downloadermiddlewares.redirect.RedirectMiddleware": None,
    "crawler.middlewares.RedirectMiddleware": 600,
    "scrapy.downloadermiddlewares.redirect.MetaRefreshMiddleware": None,
    "crawler.middlewares.MetaRefreshMiddleware": 580,
    "crawler.middlewares.MarkupEncodingMiddleware": 585,
}
# One response's worth of items at a time keeps memory bounded: each item may hold a decoded image.
CONCURRENT_ITEMS = 64
FEED_EXPORT_ENCODING = "utf-8"

# Seconds between progress lines during a crawl (0: none).
IMGSEARCH_PROGRESS_SECONDS = 10.0
# The crawl's progress on the command line's display (a bar with rate and ETA on a terminal, plain lines
# otherwise) instead of log lines; `imgsearch crawl` sets it when stderr is a terminal.
IMGSEARCH_PROGRESS_BAR = False

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
# Check the cluster's TLS certificate (against ES_CA_CERTS, else the system's CAs). false turns the check off for
# a throwaway cluster, never silently: every client built so warns.
ES_VERIFY_CERTS = True
# Seconds to wait for one Elasticsearch request.
ES_REQUEST_TIMEOUT = 30.0
# HTTP port of the local node started by `imgsearch es start`.
IMGSEARCH_ES_PORT = 9200
# JVM heap of the local node.
IMGSEARCH_ES_HEAP = "1g"
# Folder for the downloaded Elasticsearch, the local node's data and logs, and other caches.
IMGSEARCH_CACHE_DIR = None
# Alias of the image index; the sources index is this name plus "-sources".
IMGSEARCH_INDEX = "my-image-embeddings"
# Primary shards of newly created indices.
IMGSEARCH_SHARDS = 1
# Replicas of newly created indices; unset: 1 when ES_URL names several nodes, else 0.
IMGSEARCH_REPLICAS = None

# --- imgsearch: shared crawl frontier (crawler/frontier.py, the [distributed] extra) ----------------------------
# Redis (redis://[:password@]host:6379/0) holding one crawl's page queue and seen pages for several crawl
# processes (`imgsearch crawl --redis URL`); unset: each crawl process has its own.
IMGSEARCH_REDIS_URL = None
# Prefix of the shared crawl's Redis keys; unset: imgsearch:<IMGSEARCH_INDEX> (one shared crawl per index).
IMGSEARCH_REDIS_KEY = None
# Join the crawl already started on the frontier (`imgsearch crawl --join`) instead of starting one.
IMGSEARCH_REDIS_JOIN = False
# A worker leaves after this many seconds with nothing to crawl while no other worker is busy.
IMGSEARCH_REDIS_IDLE_SECONDS = 30.0

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
# Images in the pipeline (downloaded, embedded or being indexed) at once; more wait before downloading, so a
# slow model or Elasticsearch bounds memory instead of filling it.
IMGSEARCH_FETCH_MAX_IN_FLIGHT = 400
# Pages and images marked noai, noimageai or noimageindex (X-Robots-Tag, robots meta) are not indexed, except
# on these domains (comma-separated, subdomains included): an owner indexing their own site.
IMGSEARCH_NOAI_EXEMPT_DOMAINS = ""
# A 429 or 503 answer's Retry-After (seconds or a date) is waited out, up to this many seconds, and the site's
# download delay raised to it, before Scrapy's retry.
IMGSEARCH_RETRY_AFTER_MAX = 300.0
# A re-crawl does not download an indexed image URL fetched (or confirmed unchanged) less than this many days
# ago; an older one is asked for with its ETag / Last-Modified. 0: always ask.
IMGSEARCH_REFRESH_DAYS = 30.0

# --- imgsearch: embed stage ---------------------------------------------------------------------------------
# Image model (hub name or local folder); indexing and image queries both use it.
IMGSEARCH_IMAGE_MODEL = "sentence-transformers/clip-ViT-B-32"
# Text model for text queries (hub name or local folder), mapping into the image model's space.
IMGSEARCH_TEXT_MODEL = "sentence-transformers/clip-ViT-B-32-multilingual-v1"
# auto (CUDA when present, else CPU), cpu, or cuda[:N].
IMGSEARCH_EMBED_DEVICE = "auto"
# Images per model call; a batch is sent early after IMGSEARCH_EMBED_FLUSH_SECONDS, or at once when a model place
# is free and no image is being fetched (pipelines/batching.py). Unset: the size below
# for the device that IMGSEARCH_EMBED_DEVICE names (auto: a GPU when one is visible).
IMGSEARCH_EMBED_BATCH_SIZE = None
IMGSEARCH_EMBED_FLUSH_SECONDS = 0.5
# Images per model call on a CPU (where two batches run at once) and on a GPU.
IMGSEARCH_EMBED_BATCH_SIZE_CPU = 32
IMGSEARCH_EMBED_BATCH_SIZE_GPU = 256
# bf16 on CPUs that support it, when its embeddings stay within this cosine of fp32 (0 disables bf16).
IMGSEARCH_EMBED_BF16_MIN_COSINE = 0.99

# --- imgsearch: index stage ---------------------------------------------------------------------------------
# Images per bulk request; a bulk is sent early after IMGSEARCH_INDEX_FLUSH_SECONDS, or at once when a bulk place
# is free and no image is being fetched or embedded.
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

# --- imgsearch: serve ---------------------------------------------------------------------------------------
# Address `imgsearch serve` listens on: loopback, so only this machine reaches it unless told otherwise.
IMGSEARCH_SERVE_HOST = "127.0.0.1"
# Its TCP port.
IMGSEARCH_SERVE_PORT = 8000
# When set, every request needs "Authorization: Bearer <token>" (a browser gives it once, on the token page).
IMGSEARCH_SERVE_TOKEN = None
# Uploaded query images larger than this many bytes are refused (413) before they are read whole.
IMGSEARCH_SERVE_MAX_UPLOAD_BYTES = 20 * 1024 * 1024
# Results per query when a request names no k, and the most a request may ask for.
IMGSEARCH_SERVE_DEFAULT_K = 12
IMGSEARCH_SERVE_MAX_K = 100
# Sources listed on an image's detail view at most (the total is always shown).
IMGSEARCH_SERVE_MAX_SOURCES = 500


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


def gpu_visible() -> bool:
    """Whether an NVIDIA GPU is visible to this process, told without importing torch (what `auto` picks when
    torch has CUDA, as PyPI's Linux builds do)."""
    if os.environ.get("CUDA_VISIBLE_DEVICES", "unset").strip() in ("", "-1", "none", "NoDevFiles"):
        return False
    gpus = Path("/proc/driver/nvidia/gpus")
    return gpus.is_dir() and any(gpus.iterdir())


def embed_batch_size(device: str, cpu: int, gpu: int) -> int:
    """The batch size for IMGSEARCH_EMBED_DEVICE: `cpu` for cpu, `gpu` for cuda[:N] (and other accelerators)."""
    device = str(device or "auto").strip().lower()
    on_gpu = gpu_visible() if device == "auto" else device != "cpu"
    return int(gpu if on_gpu else cpu)


def default_replicas(es_url: str | None) -> int:
    """One replica when ES_URL names several nodes (a cluster can place it), none for a single node."""
    return 1 if es_url and len([u for u in str(es_url).split(",") if u.strip()]) > 1 else 0


def environment(names: Iterable[str]) -> dict[str, str]:
    """The environment's value of each named setting that has one. An empty variable is an unset one: `NAME=` in a
    shell, a unit file or a compose file means "no value" far more often than an empty one."""
    return {name: os.environ[name] for name in names if os.environ.get(name, "").strip()}


# The defaults before the environment: what an empty value means, and the type a value must read as.
defaults = {name: value for name, value in globals().items() if name.isupper()}
# Scrapy reads this module as it is (get_project_settings); the defaults derived from other settings are filled
# in where a crawl starts or the CLI loads its settings, once every override is known (crawler/config.py).
globals().update(environment(defaults))
