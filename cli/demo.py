"""`imgsearch demo`: the whole loop on a sample site — Elasticsearch, crawl, an image query, a text query."""

from __future__ import annotations

import io
import logging
from pathlib import Path
from typing import Any

logger = logging.getLogger("imgsearch.demo")

DEMO_INDEX = "imgsearch-demo"
DEMO_PORT = 8765
DEMO_TEXT = "une photo de cercles colorés"  # any language the text model knows
STANDIN_NOTE = "stand-in models with random weights: semantic ranking is meaningless; exact matches are real"


def choose_models(settings: Any) -> tuple[dict[str, str], bool]:
    """The configured models where they can be loaded, else locally built stand-ins of the same architecture.

    Returns (setting overrides, whether stand-ins are used).
    """
    from pipelines.embedding import ModelUnavailable, check_model
    from pipelines.standin_models import build_models

    unavailable = {}
    for setting in ("IMGSEARCH_IMAGE_MODEL", "IMGSEARCH_TEXT_MODEL"):
        try:
            check_model(settings.get(setting), setting)
        except ModelUnavailable as exc:
            unavailable[setting] = str(exc)
    if not unavailable:
        return {}, False
    folder = Path(settings.get("IMGSEARCH_CACHE_DIR")) / "standin-models"
    first = next(iter(unavailable.values()))
    print(f"Note: {first.split('. Download')[0]}. To use the real models, pre-download them (HF_HOME) or point "
          f"IMGSEARCH_IMAGE_MODEL / IMGSEARCH_TEXT_MODEL at local copies. This demo goes on with {STANDIN_NOTE}.")
    image, text = build_models(folder, "full")
    paths = {"IMGSEARCH_IMAGE_MODEL": str(image), "IMGSEARCH_TEXT_MODEL": str(text)}
    return {setting: paths[setting] for setting in unavailable}, True


def edited_copy(data: bytes) -> bytes:
    """A resized (50 %) and re-encoded (JPEG quality 60) copy: what a query image found elsewhere looks like."""
    from PIL import Image

    with Image.open(io.BytesIO(data)) as im:
        half = im.convert("RGB").resize((max(1, im.width // 2), max(1, im.height // 2)))
    out = io.BytesIO()
    half.save(out, format="JPEG", quality=60)
    return out.getvalue()


def drop_outdated_demo_index(settings) -> None:
    """The demo's own index, made by an older version or with other models, is made again: it is a sample."""
    from index_setup.client import es_client
    from index_setup.indices import delete_indices, schema_versions, stored_model
    from index_setup.mappings import SCHEMA_VERSION

    client = es_client(settings)
    try:
        model = stored_model(client, DEMO_INDEX)
        if any(v < SCHEMA_VERSION for v in schema_versions(client, DEMO_INDEX).values()):
            delete_indices(client, DEMO_INDEX)
            print(f"Removed the demo index {DEMO_INDEX} made by an older version; it is made again.")
        elif model and model != settings.get("IMGSEARCH_IMAGE_MODEL"):
            delete_indices(client, DEMO_INDEX)
            print(f"Removed the demo index {DEMO_INDEX} made with the model {model}; it is made again.")
    finally:
        client.close()


def run_demo(args: Any) -> int:
    from cli import CliError, _settings, crawl_exit_status, ensure_local_node, prepare_crawl
    from cli.tables import results_table
    from crawler.crawl import run_crawl
    from crawler.sample_site import SiteServer, demo_site
    from query.search import Searcher

    settings = _settings(args)
    if not args.index:
        settings.set("IMGSEARCH_INDEX", DEMO_INDEX, priority="cmdline")
    if not settings.get("ES_URL"):
        print("Starting the local Elasticsearch (the first time this downloads about 100 MB) …", flush=True)
    es_url = ensure_local_node(settings)
    overrides, standins = choose_models(settings)
    for name, value in overrides.items():
        settings.set(name, value, priority="cmdline")
    settings.set("DOWNLOAD_DELAY", 0, priority="cmdline")  # our own site on loopback: no need to be gentle
    settings.set("AUTOTHROTTLE_ENABLED", False, priority="cmdline")
    settings.set("STATS_DUMP", False, priority="cmdline")  # the summary line says what matters here
    settings.set("LOG_LEVEL", "WARNING", priority="cmdline")
    if not args.index:
        drop_outdated_demo_index(settings)
    prepare_crawl(settings)
    routes = demo_site()
    try:  # a fixed port keeps the sample pages' URLs, and so their sources, the same from run to run
        server = SiteServer(routes, port=DEMO_PORT)
    except OSError:
        server = SiteServer(routes)
    with server as site:
        print(f"Crawling the sample site at {site.url}/ into {settings.get('IMGSEARCH_INDEX')} on {es_url} …")
        stats = run_crawl(settings, "site", start_urls=site.url + "/", depth=2)
        print(stats.get("imgsearch/summary", "the crawl did not start"))
        status = crawl_exit_status(stats)
        if status:
            raise CliError("the demo crawl did not index everything; see the log above")
        original_path = "/images/photo-005.jpg"
        query_image = edited_copy(routes[original_path].body)
    searcher = Searcher(settings)
    try:
        from cli import build_parser, run_query

        # The same defaults and the same error handling as `imgsearch search`.
        query = build_parser().parse_args(["search", "--text", DEMO_TEXT, "--k", "5",
                                           "--index", settings.get("IMGSEARCH_INDEX")])
        text_response = run_query(searcher, query)
        query.image, query.text = query_image, None
        image_response = run_query(searcher, query)
        image_response["query"]["source"] = f"a 50 % JPEG-q60 copy of {original_path}"
    finally:
        searcher.close()
    note = STANDIN_NOTE if standins else None
    print()
    print(results_table(image_response, note=note))
    print()
    print(results_table(text_response, note=note))
    print()
    print(f"Elasticsearch: {es_url}, indices {settings.get('IMGSEARCH_INDEX')}, "
          f"{settings.get('IMGSEARCH_INDEX')}-sources and {settings.get('IMGSEARCH_INDEX')}-urls")
    print(f"Original images: {settings.get('FILES_STORE')}")
    print(f"Models: {settings.get('IMGSEARCH_IMAGE_MODEL')} (images), {settings.get('IMGSEARCH_TEXT_MODEL')} (text)")
    env = "".join(f"{name}={value} " for name, value in overrides.items())
    print(f"Try: {env}imgsearch search --index {settings.get('IMGSEARCH_INDEX')} --text \"{DEMO_TEXT}\"")
    return 0
