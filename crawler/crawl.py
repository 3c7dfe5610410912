"""Run a crawl in this process (what `imgsearch crawl` and the demo call) and return its stats."""

from __future__ import annotations

import logging
from typing import Any

from scrapy.crawler import CrawlerProcess
from scrapy.settings import Settings


def run_crawl(settings: Settings, spider: str, **spider_args: Any) -> dict[str, Any]:
    """Crawl with the named spider (`site` or `urls`) until done; returns the crawl's final stats."""
    # The caller (the CLI) has set up logging; Scrapy's own root handler would print every line twice.
    settings = settings.copy()
    settings.set("LOG_INSTALL_ROOT_HANDLER", False, priority="cmdline")
    process = CrawlerProcess(settings)
    # Scrapy sets its own loggers to DEBUG and the root logger to NOTSET when it leaves the handler to us.
    for name in ("", "scrapy", "twisted", "crawler", "pipelines"):
        logging.getLogger(name).setLevel(settings.get("LOG_LEVEL"))
    crawler = process.create_crawler(spider)
    process.crawl(crawler, **spider_args)
    process.start()
    return dict(crawler.stats.get_stats())
