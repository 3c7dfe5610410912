"""Settings for code that runs outside a Scrapy crawl (the CLI, the query package, tests).

They come from the same module as the crawl's (crawler.settings), with the same environment overrides.
"""

from __future__ import annotations

import os
from typing import Any

from scrapy.settings import Settings

from crawler import settings as settings_module


def load_settings(overrides: dict[str, Any] | None = None) -> Settings:
    settings = Settings()
    settings.setmodule(settings_module, priority="project")
    for name in dir(settings_module):
        if name.isupper() and name in os.environ:
            settings.set(name, os.environ[name], priority="project")
    for name, value in (overrides or {}).items():
        if value is not None:
            settings.set(name, value, priority="cmdline")
    return settings
