"""`imgsearch check-sources`: re-check the source pages and mark gone ones (the `check_sources` spider)."""

from __future__ import annotations

import argparse
import datetime as dt
import json
from collections.abc import Callable
from typing import Any

from cli import CliError, _check_cluster, _client, _settings
from cli.progress import Progress


def _reasons(stats: dict[str, Any], prefix: str) -> tuple[int, str]:
    found = {k[len(prefix):]: v for k, v in stats.items() if k.startswith(prefix)}
    detail = ", ".join(f"{k} {v}" for k, v in sorted(found.items(), key=lambda kv: -kv[1]))
    return sum(found.values()), f" ({detail})" if detail else ""


def summary(stats: dict[str, Any]) -> str:
    """One line: pages and sources checked, what was found, what could not be checked and why."""
    sources = {k.rsplit("/", 1)[-1]: v for k, v in stats.items() if k.startswith("imgsearch/check/sources/")}
    failed, failed_detail = _reasons(stats, "imgsearch/check/failed/")
    skipped, skipped_detail = _reasons(stats, "imgsearch/check/skipped/")
    return (f"pages {stats.get('imgsearch/check/pages', 0)} ({stats.get('imgsearch/check/not_modified', 0)} not "
            f"modified); sources live {sources.get('live', 0)}, gone now {sources.get('gone', 0)}, still gone "
            f"{sources.get('still_gone', 0)}, back {sources.get('back', 0)}, unchanged (304) "
            f"{sources.get('not_modified', 0)}, not checked {sources.get('unchecked', 0)}; pages failed "
            f"{failed}{failed_detail}, skipped {skipped}{skipped_detail}")


def cmd_check_sources(args: argparse.Namespace) -> int:
    from scrapy import signals

    from crawler import joblock
    from crawler.crawl import run_crawl
    from crawler.spiders.check_sources import sources_query
    from index_setup.indices import IndexConflict, IndexMissing, require_indices
    from index_setup.mappings import SOURCE_STATUS_FIELDS, sources_alias

    if args.older_than < 0:
        raise CliError("--older-than must be at least 0 days")
    settings = _settings(args)
    alias = settings.get("IMGSEARCH_INDEX")
    try:
        joblock.acquire(joblock.lock_path(settings, "check_sources", []), f"imgsearch check-sources --index {alias}")
    except joblock.JobLocked as exc:
        raise CliError(str(exc)) from exc
    client = _client(settings)
    _check_cluster(client, settings)
    now = dt.datetime.now(dt.timezone.utc)
    try:
        require_indices(client, alias)
        # A sources index made before these fields existed gets them (adding fields changes no document).
        client.indices.put_mapping(index=sources_alias(alias), properties=SOURCE_STATUS_FIELDS)
        total = client.count(index=sources_alias(alias), query=sources_query(args.older_than, now))["count"]
    except (IndexMissing, IndexConflict) as exc:
        raise CliError(str(exc)) from exc
    finally:
        client.close()
    progress = Progress(f"check-sources {alias}", total, unit="sources",
                        interval=settings.getfloat("IMGSEARCH_PROGRESS_SECONDS"))

    def item_done(item: Any, **_: Any) -> None:
        states = [s.get("live") for s in item["sources"]]
        progress.update(len(states), gone=states.count(False),
                        unchecked=len(states) if item["outcome"] in ("failed", "skipped") else 0)

    def on_crawler(crawler: Any) -> None:
        for signal in (signals.item_scraped, signals.item_dropped, signals.item_error):
            crawler.signals.connect(item_done, signal=signal, weak=False)

    try:
        stats = run_crawl(settings, "check_sources", on_crawler=on_crawler, older_than=args.older_than,
                          now=now.isoformat())
    finally:
        progress.finish()
    print(f"Checked the sources of {alias}: {summary(stats)}")
    if args.stats_file:
        with open(args.stats_file, "w", encoding="utf-8") as f:
            json.dump(stats, f, indent=1, sort_keys=True, default=str)
    failed_writes, _ = _reasons(stats, "imgsearch/check/write_failed/")
    if failed_writes:
        print(f"imgsearch: {failed_writes} source(s) could not be updated; the next check writes them again")
        return 1
    return 0 if stats.get("finish_reason") == "finished" else 1


def add_parser(commands: argparse._SubParsersAction, add_index_arg: Callable[[argparse.ArgumentParser], None]
               ) -> None:
    parser = commands.add_parser("check-sources", help="re-check the pages where images were seen; mark the "
                                                       "gone ones (kept, with when they went)")
    parser.add_argument("--older-than", type=float, default=0, metavar="DAYS",
                        help="only sources not checked, nor seen live by a crawl, in the last DAYS days "
                             "(default 0: every source)")
    parser.add_argument("--stats-file", metavar="FILE", help="write the check's final stats here as JSON")
    add_index_arg(parser)
    parser.set_defaults(func=cmd_check_sources)
