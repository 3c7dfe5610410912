"""The `imgsearch` command line: the parser, the commands that live here, and one error contract.

Every error a user can cause or meet (Elasticsearch unreachable, an index missing, a bad file) ends as one
line on stderr and exit status 2, never a traceback.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import sys
import time
from collections.abc import Callable, Iterator, Sequence

from crawler.config import SettingsError, load_settings

logger = logging.getLogger("imgsearch")


class CliError(Exception):
    """A problem to report to the user in one line, with exit status 2."""


def _settings(args: argparse.Namespace, **extra):
    overrides = {"IMGSEARCH_INDEX": getattr(args, "index", None), **extra}
    try:
        return load_settings(overrides)
    except SettingsError as exc:
        raise CliError(str(exc)) from exc


def _client(settings):
    from index_setup.client import es_client

    return es_client(settings)


def _check_cluster(client, settings) -> dict:
    from index_setup.client import ClusterError, cluster_info

    try:
        return cluster_info(client, settings)
    except ClusterError as exc:
        raise CliError(str(exc)) from exc


def _local_node(settings, args: argparse.Namespace | None = None, *, secure: bool = False):
    from index_setup.local_node import LocalNode

    port = getattr(args, "port", None) or settings.getint("IMGSEARCH_ES_PORT")
    return LocalNode(settings.get("IMGSEARCH_CACHE_DIR"), port=port, heap=settings.get("IMGSEARCH_ES_HEAP"),
                     distribution=getattr(args, "distribution", None), secure=secure)


def _secure_local_port(settings) -> int | None:
    """The port of the secure local node when ES_URL is the URL that `es start --secure` printed for it, so that
    `es start --secure` and `es stop` keep working in a shell that took those settings."""
    from urllib.parse import urlsplit

    from index_setup.local_node import LocalNode

    url = str(settings.get("ES_URL") or "").strip().rstrip("/")
    port = urlsplit(url).port if url.startswith("https://") and "," not in url else None
    if port is None:
        return None
    credentials = LocalNode(settings.get("IMGSEARCH_CACHE_DIR"), port=port).credentials()
    return port if credentials is not None and credentials.url == url else None


def ensure_local_node(settings) -> str:
    """Start the local node unless ES_URL names a cluster; returns the URL in use (for display)."""
    from index_setup.client import display_url
    from index_setup.local_node import NodeError

    if settings.get("ES_URL"):
        return display_url(settings)
    try:
        return _local_node(settings).start().url
    except NodeError as exc:
        raise CliError(str(exc)) from exc


# -- es ---------------------------------------------------------------------------------------------------------
def cmd_es_start(args: argparse.Namespace) -> int:
    from index_setup.client import display_url
    from index_setup.local_node import NodeError

    settings = _settings(args, IMGSEARCH_ES_PORT=args.port)
    if args.secure:
        return _start_secure(settings, args)
    if settings.get("ES_URL"):
        info = _check_cluster(_client(settings), settings)
        print(f"Using the cluster at {display_url(settings)} (ES_URL): Elasticsearch {info['version']}, "
              f"health {info['status']}; nothing started.")
        return 0
    cluster = _local_cluster(settings, args)
    node = cluster or _local_node(settings, args)
    started = time.monotonic()
    try:
        status = node.start()
    except NodeError as exc:
        raise CliError(str(exc)) from exc
    if cluster is not None:
        _print_cluster(status)
        print(f"Started in {time.monotonic() - started:.1f} s (files in {cluster.cluster_dir}). Use it with:\n"
              f"  export ES_URL={cluster.es_url}")
        return 0
    print(f"Elasticsearch {status.version} at {status.url}, health {status.health} "
          f"(pid {status.pid}, {time.monotonic() - started:.1f} s; files in {node.node_dir})")
    return 0


def _start_secure(settings, args: argparse.Namespace) -> int:
    """Start (or reuse) the local node with security on; print the settings to reach it as NAME=value lines
    (everything else as # comments), so that a shell can eval or source the output."""
    from index_setup.client import display_url
    from index_setup.local_node import NodeError

    if args.nodes is not None and args.nodes > 1:
        raise CliError("--secure starts a single node: leave out --nodes")
    if settings.get("ES_URL"):
        port = _secure_local_port(settings)
        if port is None:
            raise CliError(f"ES_URL names a cluster ({display_url(settings)}) and --secure starts a local node: "
                           f"unset ES_URL to start one")
        args.port = args.port or port
    node = _local_node(settings, args, secure=True)
    started = time.monotonic()
    try:
        status = node.start()
    except NodeError as exc:
        raise CliError(str(exc)) from exc
    credentials = node.credentials()
    if credentials is None:
        raise CliError(f"the node at {status.url} started without its credentials file {node.credentials_file}")
    print(f"# Elasticsearch {status.version} at {status.url}, health {status.health} (pid {status.pid}, "
          f"{time.monotonic() - started:.1f} s; files in {node.node_dir}; these settings are also in "
          f"{node.credentials_file})")
    print("\n".join(credentials.env_lines()))
    return 0


def _local_cluster(settings, args: argparse.Namespace):
    """The local cluster that `--nodes N` (N > 1) names, or, without --nodes, the one last started at the port
    (for `start`, only while it runs: otherwise `start` means one node)."""
    from index_setup.local_node import LocalCluster

    port = getattr(args, "port", None) or settings.getint("IMGSEARCH_ES_PORT")
    nodes = getattr(args, "nodes", None)
    if nodes is not None and nodes < 1:
        raise CliError("--nodes must be at least 1")
    found = nodes is None
    if found:
        nodes = LocalCluster.size_at(settings.get("IMGSEARCH_CACHE_DIR"), port)
    if not nodes or nodes < 2:
        return None
    cluster = LocalCluster(settings.get("IMGSEARCH_CACHE_DIR"), nodes=nodes, port=port,
                           heap=settings.get("IMGSEARCH_ES_HEAP"), distribution=getattr(args, "distribution", None))
    if found and args.es == "start" and not cluster.status().running:
        return None
    return cluster


def _print_cluster(status) -> None:
    print(f"Local cluster {status.name}: health {status.health or 'unknown'}, {status.number_of_nodes} node(s) "
          f"joined" + (f", shards {status.shards.get('active', 0)} active / {status.shards.get('unassigned', 0)} "
                       f"unassigned" if status.shards else ""))
    for node in status.nodes:
        role = " (elected master)" if node.url == status.master else ""
        state = (f"Elasticsearch {node.version}, pid {node.pid}{role}" if node.version else
                 f"running (pid {node.pid}), not in the cluster" if node.running else "not running")
        print(f"  {node.url}: {state}")


def cmd_es_stop(args: argparse.Namespace) -> int:
    settings = _settings(args, IMGSEARCH_ES_PORT=args.port)
    if settings.get("ES_URL"):
        port = _secure_local_port(settings)
        if port is None:
            print("ES_URL is set: that cluster is not managed here; nothing stopped.")
            return 0
        args.port = args.port or port
    cluster = _local_cluster(settings, args)
    if cluster is not None:
        stopped = cluster.stop()
        print(f"Stopped {stopped} node(s) of the local cluster {cluster.name} ({cluster.es_url})." if stopped
              else f"No node of the local cluster {cluster.name} was running.")
        if args.nodes:
            return 0
    node = _local_node(settings, args)
    print(f"Stopped Elasticsearch at {node.url}." if node.stop() else f"No local Elasticsearch at {node.url}.")
    return 0


def cmd_es_status(args: argparse.Namespace) -> int:
    settings = _settings(args, IMGSEARCH_ES_PORT=args.port)
    if settings.get("ES_URL"):
        info = _check_cluster(_client(settings), settings)
        print(f"{info['url']}: Elasticsearch {info['version']}, cluster {info['cluster_name']}, "
              f"health {info['status']}, {info['number_of_nodes']} node(s)")
        return 0
    cluster = _local_cluster(settings, args)
    if cluster is not None and (args.nodes or cluster.status().running):
        cluster_status = cluster.status()
        _print_cluster(cluster_status)
        return 0 if cluster_status.running else 1
    status = _local_node(settings, args).status()
    if not status.running:
        print(f"No local Elasticsearch running at {status.url} (start it with `imgsearch es start`).")
        return 1
    print(f"{status.url}: Elasticsearch {status.version}, health {status.health}, pid {status.pid}")
    return 0


# -- index ------------------------------------------------------------------------------------------------------
def cmd_index_create(args: argparse.Namespace) -> int:
    from functools import partial

    from index_setup.indices import IndexConflict, ensure_indices
    from pipelines.embedding import ModelUnavailable, model_dims

    settings = _settings(args)
    client = _client(settings)
    _check_cluster(client, settings)
    model = settings.get("IMGSEARCH_IMAGE_MODEL")
    try:
        outcome = ensure_indices(client, settings.get("IMGSEARCH_INDEX"), dims=partial(model_dims, model),
                                 model=model, shards=settings.getint("IMGSEARCH_SHARDS"),
                                 replicas=settings.getint("IMGSEARCH_REPLICAS"))
    except (IndexConflict, ModelUnavailable) as exc:
        raise CliError(str(exc)) from exc
    for name, what in outcome.items():
        print(f"{name}: {what}")
    return 0


def cmd_index_upgrade(args: argparse.Namespace) -> int:
    from index_setup.indices import IndexConflict, IndexMissing, upgrade_indices
    from pipelines.fetch import StoredHashes
    from pipelines.store import local_store

    settings = _settings(args)
    client = _client(settings)
    _check_cluster(client, settings)
    store = settings.get("FILES_STORE")
    root = local_store(store)
    hashes = None if root is None else StoredHashes(root, max_pixels=settings.getint("IMGSEARCH_FETCH_MAX_PIXELS"))
    try:
        outcome = upgrade_indices(client, settings.get("IMGSEARCH_INDEX"), shards=settings.getint("IMGSEARCH_SHARDS"),
                                  replicas=settings.getint("IMGSEARCH_REPLICAS"), transform_image=hashes,
                                  progress=print)
    except (IndexConflict, IndexMissing) as exc:
        raise CliError(str(exc)) from exc
    for name, what in outcome.items():
        print(f"{name}: {what}")
    if hashes is None:
        print(f"The image store {store} is not a local folder: upgraded images have no perceptual hashes until "
              f"they are crawled again.")
    elif hashes.missing:
        print(f"{hashes.missing} image(s) had no readable original in {store}: they get perceptual hashes when "
              f"they are crawled again.")
    return 0


def cmd_index_info(args: argparse.Namespace) -> int:
    from index_setup.indices import index_info

    settings = _settings(args)
    client = _client(settings)
    _check_cluster(client, settings)
    rows = index_info(client, settings.get("IMGSEARCH_INDEX"))
    if args.json:
        print(json.dumps(rows, indent=2))
        return 0
    for row in rows:
        if row["index"] is None:
            print(f"{row['alias']}: missing (create it with `imgsearch index create`)")
            continue
        meta = row["meta"]
        extra = f", model {meta['model']}, {meta['dims']} dims" if meta.get("model") else ""
        print(f"{row['alias']} -> {row['index']}: {row['docs']} documents, {row['size_bytes'] / 1e6:.1f} MB, "
              f"schema v{meta.get('schema_version')}{extra}")
    return 0


def cmd_index_delete(args: argparse.Namespace) -> int:
    from index_setup.indices import delete_indices

    settings = _settings(args)
    alias = settings.get("IMGSEARCH_INDEX")
    if not args.yes:
        if not sys.stdin.isatty():
            raise CliError(f"refusing to delete {alias}, {alias}-sources and {alias}-urls without --yes")
        if input(f"Delete {alias}, {alias}-sources and {alias}-urls with all their documents? [y/N] "
                 ).strip().lower() != "y":
            return 1
    client = _client(settings)
    _check_cluster(client, settings)
    deleted = delete_indices(client, alias)
    print(f"Deleted {', '.join(deleted)}." if deleted else f"No index behind {alias}.")
    return 0


# -- crawl ------------------------------------------------------------------------------------------------------
def prepare_crawl(settings) -> None:
    """Fail before crawling, in one line, when Elasticsearch, the indices or the model are not usable."""
    from functools import partial

    from index_setup.indices import IndexConflict, ensure_indices
    from pipelines.embedding import ModelUnavailable, check_model, model_dims

    client = _client(settings)
    _check_cluster(client, settings)
    model = settings.get("IMGSEARCH_IMAGE_MODEL")
    try:
        ensure_indices(client, settings.get("IMGSEARCH_INDEX"), dims=partial(model_dims, model), model=model,
                       shards=settings.getint("IMGSEARCH_SHARDS"), replicas=settings.getint("IMGSEARCH_REPLICAS"))
        check_model(model, "IMGSEARCH_IMAGE_MODEL")
    except (IndexConflict, ModelUnavailable) as exc:
        raise CliError(str(exc)) from exc
    finally:
        client.close()


def crawl_exit_status(stats: dict) -> int:
    dead = stats.get("imgsearch/index/dead_lettered", 0)
    if dead:
        path = stats.get("imgsearch/index/dead_letter_file")
        print(f"imgsearch: {dead} writes could not be made; send them again with `imgsearch replay {path}`",
              file=sys.stderr)
        return 1
    if stats.get("finish_reason") not in ("finished", "closespider_itemcount", "closespider_pagecount"):
        return 1
    return 0


def _setting_pairs(pairs: list[str] | None) -> dict[str, str]:
    """`-s NAME=VALUE` options as a dict, as `scrapy crawl -s` takes them."""
    settings = {}
    for pair in pairs or []:
        name, equals, value = pair.partition("=")
        if not equals or not name.strip():
            raise CliError(f"-s {pair!r}: give a setting as NAME=VALUE")
        settings[name.strip()] = value
    return settings


def check_store(files_store: str) -> None:
    """A remote FILES_STORE whose client library is missing is refused before the crawl, not item by item."""
    import importlib.util

    from pipelines.store import local_store

    if local_store(files_store) is not None:
        return
    scheme = files_store.split("://", 1)[0].lower()
    needs = {"s3": ("botocore", "pip install 'imgsearch[s3]'"),
             "gs": ("google.cloud.storage", "pip install google-cloud-storage")}.get(scheme)
    if scheme not in ("s3", "gs", "ftp"):
        raise CliError(f"FILES_STORE {files_store}: a folder, or an s3://, gs:// or ftp:// URL")
    if needs and importlib.util.find_spec(needs[0].split(".")[0]) is None:
        raise CliError(f"FILES_STORE {files_store} needs {needs[0]}, which is not installed ({needs[1]})")


def _not_scrapy_info(record: logging.LogRecord) -> bool:
    return record.levelno >= logging.WARNING or not record.name.startswith(("scrapy", "twisted"))


@contextlib.contextmanager
def _scrapy_info_hidden(enabled: bool) -> Iterator[None]:
    """Scrapy's and Twisted's info lines (middlewares enabled, telnet, stats dumps) left out of the log: the
    crawl's own progress lines and summary say what matters; `-v` shows everything."""
    handlers = logging.getLogger().handlers if enabled else []
    for handler in handlers:
        handler.addFilter(_not_scrapy_info)
    try:
        yield
    finally:
        for handler in handlers:
            handler.removeFilter(_not_scrapy_info)


def cmd_crawl(args: argparse.Namespace) -> int:
    from pathlib import Path

    from crawler import joblock
    from crawler.crawl import run_crawl
    from crawler.spiders.site import site_arguments

    # The input first: nothing is locked, created or started for a crawl that cannot run.
    if args.urls:
        try:
            site_arguments(args.urls, args.allow, args.deny)
        except ValueError as exc:
            raise CliError(str(exc)) from exc
    if args.urls_file and not Path(args.urls_file).is_file():
        raise CliError(f"--urls-file {args.urls_file}: no such file")
    overrides = {**_setting_pairs(args.set), "FILES_STORE": args.store, "IMGSEARCH_REDIS_URL": args.redis,
                 "IMGSEARCH_REDIS_JOIN": True if args.join else None,
                 # On a terminal, a bar (see crawler/progress.py); elsewhere the progress log lines.
                 "IMGSEARCH_PROGRESS_BAR": True if sys.stderr.isatty() else None}
    if args.job_dir:
        overrides["JOBDIR"] = args.job_dir
    settings = _settings(args, **overrides)
    check_store(settings.get("FILES_STORE"))
    shared = bool(settings.get("IMGSEARCH_REDIS_URL"))
    joining = shared and settings.getbool("IMGSEARCH_REDIS_JOIN")
    if args.join and not shared:
        raise CliError("--join needs the shared frontier's Redis: --redis URL (or IMGSEARCH_REDIS_URL)")
    if joining and (args.urls or args.urls_file):
        raise CliError("--join takes no start URLs or --urls-file: the worker crawls what the running crawl finds")
    if shared and settings.get("JOBDIR"):
        raise CliError("--job-dir and --redis exclude each other: a shared frontier keeps the crawl's state in Redis")
    # First of all, so that an overlapping run of a scheduled job exits at once.
    spider, targets = ("urls", [str(Path(args.urls_file).resolve())]) if args.urls_file else ("site", args.urls)
    try:
        # Workers of a shared frontier run side by side by design; the frontier refuses a second start.
        if not shared:
            joblock.acquire(joblock.lock_path(settings, spider, targets), f"imgsearch crawl {' '.join(targets)}")
    except joblock.JobLocked as exc:
        raise CliError(str(exc)) from exc
    spider_args: dict = {}
    if args.urls_file:
        spider_args = {"file": targets[0]}
    elif args.urls:
        # Lists, never joined with commas: a regular expression or a URL may hold one.
        spider_args = {"start_urls": list(args.urls), "depth": args.depth, "max_pages": args.max_pages or 0,
                       "allowed_domains": list(args.allowed_domain or []), "allow": list(args.allow or []),
                       "deny": list(args.deny or [])}
    elif not joining:
        raise CliError("give start URLs, or --urls-file FILE" + (", or --join" if shared else ""))
    if shared:
        from crawler.frontier import FrontierError, prepare, withdraw

        try:
            spider, spider_args = prepare(settings, spider, spider_args)
        except FrontierError as exc:
            raise CliError(str(exc)) from exc
    try:
        if not settings.get("ES_URL"):
            ensure_local_node(settings)
        prepare_crawl(settings)
        from cli.progress import warnings_only_on_terminal

        with warnings_only_on_terminal(enabled=not args.verbose), _scrapy_info_hidden(not args.verbose):
            stats = run_crawl(settings, spider, **spider_args)
    finally:
        if shared:
            withdraw(settings)
    print(stats.get("imgsearch/summary", "crawl ended before it started"))
    if args.stats_file:
        with open(args.stats_file, "w", encoding="utf-8") as f:
            json.dump(stats, f, indent=1, sort_keys=True, default=str)
    return crawl_exit_status(stats)


def cmd_replay(args: argparse.Namespace) -> int:
    import asyncio
    from pathlib import Path

    from cli.progress import Progress
    from index_setup.client import async_es_client
    from pipelines.indexing import replay

    settings = _settings(args)
    client = _client(settings)
    _check_cluster(client, settings)
    client.close()
    progress = Progress(f"replay {Path(args.file).name}", unit="records",
                        interval=settings.getfloat("IMGSEARCH_PROGRESS_SECONDS"),
                        counts=("written", "failed"))

    async def run():
        async_client = async_es_client(settings)
        try:
            return await replay(async_client, args.file,
                                dead_letter_dir=settings.get("IMGSEARCH_INDEX_DEAD_LETTER_DIR"),
                                max_retries=settings.getint("IMGSEARCH_INDEX_MAX_RETRIES"),
                                backoff=settings.getfloat("IMGSEARCH_INDEX_RETRY_BACKOFF"),
                                set_total=progress.set_total, advance=progress.update)
        finally:
            await async_client.close()

    try:
        written, failed, path = asyncio.run(run())
    except (OSError, ValueError) as exc:
        raise CliError(str(exc)) from exc
    finally:
        if progress.total is not None:  # known once the file is checked: sending began
            progress.finish()
    print(f"Replayed {args.file}: {written} written, {failed} still failing" + (f" (kept in {path})" if failed else ""))
    return 1 if failed else 0


# -- search ---------------------------------------------------------------------------------------------------
def _searcher(settings):
    from query.search import Searcher

    return Searcher(settings)


def run_query(searcher, args: argparse.Namespace) -> dict:
    """Run an image or text query, turning every expected failure into a CliError."""
    from index_setup.client import ClusterError
    from index_setup.indices import IndexConflict, IndexMissing
    from pipelines.embedding import ModelUnavailable
    from query.inputs import QueryInputError

    try:
        filters = {"domains": args.domain, "since": args.since, "until": args.until, "min_width": args.min_width,
                   "min_height": args.min_height, "formats": args.format, "min_score": args.min_score}
        if args.image:
            return searcher.search_image(args.image, args.k, args.num_candidates, index=args.index,
                                         allow_private=args.allow_private, sort=args.sort, **filters)
        return searcher.search_text(args.text, args.k, args.num_candidates, index=args.index, sort=args.sort,
                                    **filters)
    except (QueryInputError, IndexMissing, IndexConflict, ClusterError, ModelUnavailable) as exc:
        raise CliError(str(exc)) from exc


def cmd_sources(args: argparse.Namespace) -> int:
    from cli.tables import sources_table
    from index_setup.client import ClusterError
    from index_setup.indices import IndexMissing
    from query.inputs import QueryInputError

    if args.limit < 1:
        raise CliError("--limit must be at least 1")
    from pathlib import Path

    from pipelines.store import IMAGE_ID

    settings = _settings(args)
    # An image id from a search's results, unless a file of that name exists.
    image_id = args.image if IMAGE_ID.match(args.image) and not Path(args.image).exists() else None
    searcher = _searcher(settings)
    try:
        response = searcher.find_sources(None if image_id else args.image, args.index, args.limit,
                                         allow_private=args.allow_private, image_id=image_id)
    except (QueryInputError, IndexMissing, ClusterError) as exc:
        raise CliError(str(exc)) from exc
    finally:
        searcher.close()
    print(json.dumps(response, indent=2, ensure_ascii=False) if args.json else sources_table(response))
    return 0


def cmd_search(args: argparse.Namespace) -> int:
    from cli.tables import results_table

    if args.k < 1 or args.num_candidates < 1:
        raise CliError("--k and --num-candidates must be at least 1")
    settings = _settings(args)
    searcher = _searcher(settings)
    try:
        response = run_query(searcher, args)
    finally:
        searcher.close()
    print(json.dumps(response, indent=2, ensure_ascii=False) if args.json else results_table(response))
    return 0


# -- parser -----------------------------------------------------------------------------------------------------
def _add_index_arg(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--index", help="image index alias (default: IMGSEARCH_INDEX, my-image-embeddings); "
                                        "the sources index is this name plus -sources")


DESCRIPTION = ("Crawl the images of websites into Elasticsearch, embedded with CLIP, and find which indexed images "
               "look like an image or match a text, and on which pages an image or a copy of it appeared first.")


def _add_verbosity(parser: argparse.ArgumentParser, default: object) -> None:
    group = parser.add_mutually_exclusive_group()
    group.add_argument("-v", "--verbose", action="store_true", default=default, help="log everything (debug)")
    group.add_argument("-q", "--quiet", action="store_true", default=default, help="warnings and errors only")


def _every_subparser(parser: argparse.ArgumentParser) -> Iterator[argparse.ArgumentParser]:
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for sub in dict.fromkeys(action.choices.values()):  # aliases name one parser twice
                yield sub
                yield from _every_subparser(sub)


def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("imgsearch")
    except PackageNotFoundError:
        return "unknown (not installed)"


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="imgsearch", description=DESCRIPTION)
    parser.add_argument("--version", action="version", version=f"imgsearch {_version()}")
    _add_verbosity(parser, False)
    commands = parser.add_subparsers(dest="command", required=True)

    es = commands.add_parser("es", help="the local Elasticsearch node").add_subparsers(dest="es", required=True)
    for name, func, text in (("start", cmd_es_start, "start (or reuse) the local node; no-op with ES_URL"),
                             ("stop", cmd_es_stop, "stop the local node"),
                             ("status", cmd_es_status, "URL, version and health")):
        sub = es.add_parser(name, help=text)
        sub.add_argument("--port", type=int, help="HTTP port of the local node (default IMGSEARCH_ES_PORT, 9200)")
        sub.add_argument("--nodes", type=int, metavar="N",
                         help="a local cluster of N nodes on loopback: HTTP ports PORT to PORT+N-1, transport "
                              "ports 100 above (stop and status find the last one started at PORT)")
        if name == "start":
            sub.add_argument("--distribution", metavar="PATH",
                             help="an official Elasticsearch 8.x archive (.tar.gz/.zip) or unpacked folder "
                                  "to run instead of the pinned download")
            sub.add_argument("--secure", action="store_true",
                             help="one node with security on: https with a CA of its own and a user with a "
                                  "generated password (both kept and reused); prints ES_URL, ES_USERNAME, "
                                  "ES_PASSWORD and ES_CA_CERTS as NAME=value lines to eval or source")
        sub.set_defaults(func=func)

    index = commands.add_parser("index", help="the image, sources and urls indices").add_subparsers(
        dest="index_command", required=True)
    for name, func, text in (("create", cmd_index_create, "create the indices (no-op when they exist)"),
                             ("info", cmd_index_info, "documents, size and schema of the indices"),
                             ("upgrade", cmd_index_upgrade, "copy indices of an older schema into the current "
                                                            "one, then switch the aliases"),
                             ("delete", cmd_index_delete, "delete the indices")):
        sub = index.add_parser(name, help=text)
        _add_index_arg(sub)
        if name == "info":
            sub.add_argument("--json", action="store_true")
        if name == "delete":
            sub.add_argument("--yes", action="store_true", help="do not ask")
        sub.set_defaults(func=func)
    crawl = commands.add_parser("crawl", help="crawl sites into the index")
    crawl.add_argument("urls", nargs="*", metavar="URL", help="start URLs (the site spider)")
    crawl.add_argument("--urls-file", metavar="FILE", help="crawl the pages or image URLs listed in FILE instead")
    crawl.add_argument("--depth", type=int, default=2, help="links followed from the start URLs (default 2)")
    crawl.add_argument("--max-pages", type=int, help="stop following links after this many pages")
    crawl.add_argument("--allowed-domain", action="append", help="domain whose pages are followed (repeatable; "
                                                                  "default: the start URLs' hosts)")
    crawl.add_argument("--allow", action="append", help="only follow links matching this regex (repeatable)")
    crawl.add_argument("--deny", action="append", help="never follow links matching this regex (repeatable)")
    crawl.add_argument("--store", help="where to keep the original images (default FILES_STORE)")
    crawl.add_argument("-s", "--set", action="append", metavar="NAME=VALUE",
                       help="any Scrapy or imgsearch setting for this crawl, as `scrapy crawl -s` (repeatable)")
    crawl.add_argument("--job-dir", help="keep the crawl's state here, so an interrupted crawl resumes")
    crawl.add_argument("--stats-file", metavar="FILE", help="write the crawl's final stats here as JSON")
    crawl.add_argument("--redis", metavar="URL", help="share the crawl's frontier (pages queued and seen) through "
                                                      "this Redis with other crawl processes (IMGSEARCH_REDIS_URL)")
    crawl.add_argument("--join", action="store_true", help="with --redis: add a worker to the crawl running there "
                                                           "(no start URLs); workers leave when it runs dry")
    _add_index_arg(crawl)
    crawl.set_defaults(func=cmd_crawl)

    search = commands.add_parser("search", help="find indexed images like an image, or matching a text")
    given = search.add_mutually_exclusive_group(required=True)
    given.add_argument("--image", metavar="PATH_OR_URL", help="query image: a file or an http(s) URL")
    given.add_argument("--text", help="query text, in any language of the text model")
    search.add_argument("--k", type=int, default=10, help="results (default 10)")
    search.add_argument("--num-candidates", type=int, default=100, help="kNN candidates per shard (default 100)")
    search.add_argument("--domain", action="append",
                        help="only images seen on this domain (repeat, or comma-separate, for several)")
    search.add_argument("--since", metavar="DATE", help="only images first seen on or after this ISO date/time")
    search.add_argument("--until", metavar="DATE", help="only images first seen on or before this ISO date/time")
    search.add_argument("--min-width", type=int, metavar="PX", help="only images at least this wide")
    search.add_argument("--min-height", type=int, metavar="PX", help="only images at least this tall")
    search.add_argument("--format", action="append", metavar="FORMAT",
                        help="only images in this format: jpeg, png, gif, webp, … (repeat for several)")
    search.add_argument("--min-score", type=float, metavar="S",
                        help="only results scoring at least S (cosine for semantic results; near duplicates "
                             "score (64 - bits) / 64, exact copies 1)")
    search.add_argument("--sort", choices=["score", "first_seen"], default="score",
                        help="order of the results: best first (default), or oldest first_seen first")
    search.add_argument("--json", action="store_true", help="print {query, took_ms, results} as JSON")
    search.add_argument("--allow-private", action="store_true",
                        help="allow image URLs on loopback and private networks")
    _add_index_arg(search)
    search.set_defaults(func=cmd_search)

    sources = commands.add_parser("sources", help="where an image or an edited copy of it appears, oldest first")
    sources.add_argument("--image", metavar="PATH_URL_OR_ID", required=True,
                         help="the image: a file, an http(s) URL, or the image_id of an indexed image")
    sources.add_argument("--limit", type=int, default=100, help="pages listed at most (default 100)")
    sources.add_argument("--json", action="store_true",
                         help="print {query, took_ms, oldest, sources, sources_total, images} as JSON")
    sources.add_argument("--allow-private", action="store_true",
                         help="allow image URLs on loopback and private networks")
    _add_index_arg(sources)
    sources.set_defaults(func=cmd_sources)

    demo = commands.add_parser("demo", help="start Elasticsearch, crawl a sample site, run an image and a text "
                                             "query")
    demo.add_argument("--index", help="index alias for the demo (default imgsearch-demo)")
    demo.set_defaults(func=lambda args: __import__("cli.demo", fromlist=["run_demo"]).run_demo(args))

    replay_parser = commands.add_parser("replay", help="send a dead-letter file's writes again")
    replay_parser.add_argument("file")
    _add_index_arg(replay_parser)
    replay_parser.set_defaults(func=cmd_replay)

    from cli import check_sources, reembed, transfer  # each command's own module: arguments and output

    reembed.add_parser(commands, _add_index_arg)
    transfer.add_parsers(commands, _add_index_arg)
    check_sources.add_parser(commands, _add_index_arg)
    from cli import serve  # `imgsearch serve`: the search page and its JSON API

    serve.add_parser(commands, _add_index_arg)
    # -v / -q after the command too (`imgsearch crawl URL -v`); there they default to the top level's value.
    for sub in _every_subparser(parser):
        _add_verbosity(sub, argparse.SUPPRESS)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s", datefmt="%H:%M:%S")
    # On the handler, not the root logger: a crawl resets the root logger's level.
    # Long-running commands report progress; the others only warnings.
    quiet = args.command not in ("crawl", "replay", "es")
    quiet = quiet or args.quiet
    logging.root.handlers[0].setLevel(logging.DEBUG if args.verbose else logging.WARNING if quiet else logging.INFO)
    # The transport logs each retried connection with a traceback; our own message says it in one line.
    for noisy in ("elastic_transport", "urllib3", "httpx"):
        logging.getLogger(noisy).setLevel(logging.ERROR)
    func: Callable[[argparse.Namespace], int] = args.func
    try:
        return func(args)
    except CliError as exc:
        print(f"imgsearch: error: {exc}", file=sys.stderr)
        return 2
    except Exception as exc:
        import elastic_transport
        import elasticsearch

        if not isinstance(exc, (elastic_transport.TransportError, elasticsearch.ApiError)):
            raise
        from index_setup.client import describe_error

        print(f"imgsearch: error: {describe_error(exc, load_settings())}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("imgsearch: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
