"""`imgsearch reembed --model NAME`: the image index embedded again with another model (see index_setup.reembed)."""

from __future__ import annotations

import argparse
import json
from collections.abc import Callable
from typing import Any

from cli import CliError, _check_cluster, _client, _settings
from cli.progress import Progress


def cmd_reembed(args: argparse.Namespace) -> int:
    from index_setup.indices import IndexConflict, IndexMissing
    from index_setup.reembed import StoredOriginals, reembed
    from pipelines.embedding import Embedder, ModelUnavailable, check_model
    from pipelines.store import local_store

    settings = _settings(args)
    alias = settings.get("IMGSEARCH_INDEX")
    store = args.store or settings.get("FILES_STORE")
    root = local_store(store)
    if root is None:
        raise CliError(f"the image store {store} is not a local folder: reembed reads the originals from a folder "
                       f"(copy them to one and give it with --store)")
    if args.batch_size is not None and args.batch_size < 1:
        raise CliError("--batch-size must be at least 1")
    try:
        check_model(args.model, "--model")
    except ModelUnavailable as exc:
        raise CliError(str(exc)) from exc
    client = _client(settings)
    _check_cluster(client, settings)
    embedder = Embedder(args.model, settings.get("IMGSEARCH_TEXT_MODEL"),
                        device=settings.get("IMGSEARCH_EMBED_DEVICE"),
                        bf16_min_cosine=settings.getfloat("IMGSEARCH_EMBED_BF16_MIN_COSINE"),
                        batch_size=args.batch_size or settings.getint("IMGSEARCH_EMBED_BATCH_SIZE"))
    originals = StoredOriginals(embedder, root, max_pixels=settings.getint("IMGSEARCH_FETCH_MAX_PIXELS"))
    missing_file = open(args.missing_file, "a", encoding="utf-8") if args.missing_file else None  # noqa: SIM115

    def on_missing(hit: dict[str, Any], reason: str) -> None:
        if missing_file is not None:
            source = hit["_source"]
            missing_file.write(json.dumps({"image_id": hit["_id"], "relative_path": source.get("relative_path"),
                                           "image_url": source.get("image_url"), "reason": reason}) + "\n")

    progress = Progress(f"reembed {alias}", unit="images", interval=settings.getfloat("IMGSEARCH_PROGRESS_SECONDS"))
    try:
        report = reembed(client, alias, originals, chunk=max(args.batch_size or 0, 64), advance=progress.update,
                         on_missing=on_missing, set_total=progress.set_total,
                         max_retries=settings.getint("IMGSEARCH_INDEX_MAX_RETRIES"))
    except (IndexConflict, IndexMissing, ModelUnavailable) as exc:
        raise CliError(str(exc)) from exc
    finally:
        if progress.total is not None:  # known once the index and the model are: work began
            progress.finish()
        originals.close()
        client.close()
        if missing_file is not None:
            missing_file.close()
    if report.outcome == "switched":
        print(f"Re-embedded {alias} with {report.model} ({report.dims} dims): {report.documents} images, "
              f"{report.embedded} embedded now, {report.kept} kept from an interrupted run, {report.caught_up} "
              f"caught up after crawl writes. {alias} now points at {report.index}; {report.previous} deleted.")
    else:
        print(f"{alias} ({report.index}) already holds {report.model} vectors: {report.embedded} image(s) without "
              f"a vector embedded now.")
    if report.missing:
        reasons = ", ".join(f"{reason} {n}" for reason, n in sorted(report.missing.items()))
        print(f"{sum(report.missing.values())} image(s) had no usable original in {store} ({reasons})"
              + (f", listed in {args.missing_file}" if args.missing_file else "") + ".")
    if report.without_vector:
        print(f"{report.without_vector} image(s) of {alias} have no vector: exact and near-duplicate search and "
              f"the source finder still find them, semantic search does not. Put their originals back in the store "
              f"and run `imgsearch reembed --model {report.model} --index {alias}` again: it embeds just those.")
    print(f"Crawl and search {alias} with IMGSEARCH_IMAGE_MODEL={report.model} (and a text model of the same "
          f"space for text queries).")
    return 1 if report.without_vector else 0


def add_parser(commands: argparse._SubParsersAction, add_index_arg: Callable[[argparse.ArgumentParser], None]
               ) -> None:
    parser = commands.add_parser("reembed", help="embed the image index again with another image model, from the "
                                                 "stored originals, then switch the alias")
    parser.add_argument("--model", required=True, help="the new image model (hub name or local folder)")
    parser.add_argument("--store", help="folder of the original images (default FILES_STORE)")
    parser.add_argument("--batch-size", type=int, help="images per model call (default IMGSEARCH_EMBED_BATCH_SIZE)")
    parser.add_argument("--missing-file", metavar="FILE",
                        help="append a JSON line per image whose original cannot be used (id, path, URL, reason)")
    add_index_arg(parser)
    parser.set_defaults(func=cmd_reembed)
