"""Run a crawl in this process (what `imgsearch crawl` and the demo call) and return its stats."""

from __future__ import annotations

import logging
from typing import Any

from scrapy.crawler import CrawlerProcess
from scrapy.settings import Settings


def run_crawl(settings: Settings, spider: str, **spider_args: Any) -> dict[str, Any]:
    """Crawl with the named spider (`site` or `urls`) until done; returns the crawl's final stats."""
    # The caller (the CLI) has set up logging; Scrapy's own root handler would print every line twice.
    process = CrawlerProcess(settings, install_root_handler=False)
    logging.root.setLevel(settings.get("LOG_LEVEL"))  # Scrapy resets it to NOTSET when it leaves the handler alone
    crawler = process.create_crawler(spider)
    process.crawl(crawler, **spider_args)
    process.start()
    return dict(crawler.stats.get_stats())
