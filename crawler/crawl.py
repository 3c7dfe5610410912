"""Run a crawl in this process (what `imgsearch crawl` and the demo call) and return its stats."""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

from scrapy.crawler import Crawler, CrawlerProcess
from scrapy.settings import Settings


def run_crawl(settings: Settings, spider: str, *, on_crawler: Callable[[Crawler], None] | None = None,
              **spider_args: Any) -> dict[str, Any]:
    """Crawl with the named spider (`site`, `urls` or `check_sources`) until done; returns the crawl's final
    stats. `on_crawler(crawler)` is called before the crawl starts (to connect signals, e.g. for progress)."""
    # The caller (the CLI) has set up logging; Scrapy's own root handler would print every line twice.
    settings = settings.copy()
    settings.set("LOG_INSTALL_ROOT_HANDLER", False, priority="cmdline")
    process = CrawlerProcess(settings)
    # Scrapy sets its own loggers to DEBUG and the root logger to NOTSET when it leaves the handler to us.
    for name in ("", "scrapy", "twisted", "crawler", "pipelines"):
        logging.getLogger(name).setLevel(settings.get("LOG_LEVEL"))
    crawler = process.create_crawler(spider)
    if on_crawler is not None:
        on_crawler(crawler)
    process.crawl(crawler, **spider_args)
    process.start()
    return dict(crawler.stats.get_stats())
