"""The one reader of imgsearch's settings: crawler/settings.py's defaults, then the environment, then overrides.

The defaults that depend on other settings (replicas on ES_URL, the embed batch size on the device, the folders)
are derived by `resolve` from the values in force once every override is known: for the CLI and the code outside
a crawl in `load_settings`, for every crawl (`imgsearch crawl`, `scrapy crawl -s`, a Scrapyd job) in the
`ResolvedSettings` add-on, which Scrapy runs after the command line's and the spider's settings are applied.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from scrapy.settings import BaseSettings, Settings

from crawler import settings as settings_module
from crawler.settings import default_cache_dir, default_data_dir, default_replicas, embed_batch_size

# Unset (None, or empty), these are derived from the settings in force.
DERIVED: dict[str, Callable[[BaseSettings], Any]] = {
    "IMGSEARCH_CACHE_DIR": lambda s: str(default_cache_dir()),
    "FILES_STORE": lambda s: str(default_data_dir() / "store"),
    "IMGSEARCH_INDEX_DEAD_LETTER_DIR": lambda s: str(default_data_dir() / "dead-letter"),
    "IMGSEARCH_REPLICAS": lambda s: default_replicas(s.get("ES_URL")),
    "IMGSEARCH_EMBED_BATCH_SIZE": lambda s: embed_batch_size(s.get("IMGSEARCH_EMBED_DEVICE"),
                                                             s.getint("IMGSEARCH_EMBED_BATCH_SIZE_CPU"),
                                                             s.getint("IMGSEARCH_EMBED_BATCH_SIZE_GPU")),
}
# A value must read as its default's type, with the getter its readers use.
_READS = {bool: ("getbool", "true or false"), int: ("getint", "a whole number"), float: ("getfloat", "a number")}
TYPES: dict[str, type] = {**{name: type(value) for name, value in settings_module.defaults.items()
                             if type(value) in _READS},
                          "IMGSEARCH_REPLICAS": int, "IMGSEARCH_EMBED_BATCH_SIZE": int}


class SettingsError(ValueError):
    """A setting's value that cannot be used, in one line naming the setting and what it takes."""


def _empty(value: Any) -> bool:
    return isinstance(value, str) and not value.strip()


def resolve(settings: BaseSettings) -> None:
    """Check each typed setting and derive the unset ones of DERIVED; an empty value means the default."""
    for name in TYPES.keys() | DERIVED.keys():
        if _empty(settings.get(name)):
            settings.set(name, settings_module.defaults.get(name), priority=settings.getpriority(name) or "project")
    for name, kind in TYPES.items():
        getter, expected = _READS[kind]
        value = settings.get(name)
        try:
            if value is not None:
                getattr(settings, getter)(name)
        except (TypeError, ValueError):
            raise SettingsError(f"{name}={value!r}: expected {expected}") from None
    for name, derive in DERIVED.items():
        if settings.get(name) is None:
            settings.set(name, derive(settings), priority=settings.getpriority(name) or "project")


class ResolvedSettings:
    """Scrapy add-on (ADDONS): `resolve` on the crawl's settings, with every override already in them."""

    def update_settings(self, settings: BaseSettings) -> None:
        resolve(settings)


def load_settings(overrides: dict[str, Any] | None = None) -> Settings:
    """The settings outside a crawl: the defaults, the environment as it is now, then `overrides` (None: not given),
    resolved. Raises SettingsError for a value that cannot be used."""
    settings = Settings()
    settings.setdict({**settings_module.defaults, **settings_module.environment(settings_module.defaults)},
                     priority="project")
    settings.setdict({name: value for name, value in (overrides or {}).items() if value is not None},
                     priority="cmdline")
    resolve(settings)
    return settings
