"""Scrapy's robots.txt middleware, with every request that waits for a host's robots.txt getting its rules.

Since scrapy/scrapy#6802 (Scrapy 2.13), requests to a host whose robots.txt is still being downloaded all await
the same Deferred (`maybe_deferred_to_future(parser)`). A Deferred hands its result to the first waiter only (the
callback that resumes it returns None), so the others get None, which means "no robots.txt": they are let
through, however robots.txt disallows them. Concurrent requests to a new host (several source pages, images on
a CDN) are exactly that case. Here each waiter gets its own Deferred, fed from the shared one, as Scrapy did
before.

Replaces `scrapy.downloadermiddlewares.robotstxt.RobotsTxtMiddleware` at the same priority (100, in
crawler/settings.py); ROBOTSTXT_OBEY and the other ROBOTSTXT_* settings apply unchanged.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

from scrapy.downloadermiddlewares.robotstxt import RobotsTxtMiddleware as ScrapyRobotsTxtMiddleware
from scrapy.utils.defer import maybe_deferred_to_future
from scrapy.utils.httpobj import urlparse_cached
from twisted.internet.defer import Deferred

if TYPE_CHECKING:
    from scrapy import Request
    from scrapy.robotstxt import RobotParser



class _OneLine(logging.Filter):
    """Scrapy logs a robots.txt that cannot be downloaded (a dead host, a timeout) at ERROR with a traceback;
    it is an expected outcome, counted in robotstxt/exception_count/…: one line is enough."""

    def filter(self, record: logging.LogRecord) -> bool:
        if record.exc_info and record.exc_info[1] is not None:
            exc = record.exc_info[1]
            record.msg = f"{record.getMessage()} ({type(exc).__name__}); crawling it as if it had no robots.txt"
            record.args = None
            record.exc_info = None
            record.exc_text = None
            record.levelno, record.levelname = logging.WARNING, "WARNING"
        return True


logging.getLogger(ScrapyRobotsTxtMiddleware.__module__).addFilter(_OneLine())


class RobotsTxtMiddleware(ScrapyRobotsTxtMiddleware):
    """Scrapy's RobotsTxtMiddleware; a request waiting for robots.txt gets the parsed rules (see the module)."""

    async def robot_parser(self, request: Request) -> RobotParser | None:
        pending = self._parsers.get(urlparse_cached(request).netloc)
        if isinstance(pending, Deferred):
            mine: Deferred[RobotParser | None] = Deferred()

            def relay(parser: RobotParser | None) -> RobotParser | None:
                mine.callback(parser)
                return parser  # for the next waiter

            pending.addCallback(relay)
            return await maybe_deferred_to_future(mine)
        return await super().robot_parser(request)
