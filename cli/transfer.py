"""`imgsearch export FILE` and `imgsearch import FILE`: the three indices as NDJSON (see index_setup.transfer)."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
from pathlib import Path

from cli import CliError, _check_cluster, _client, _settings
from cli.progress import Progress


def cmd_export(args: argparse.Namespace) -> int:
    from index_setup.indices import IndexConflict, IndexMissing
    from index_setup.transfer import TransferError, describe_indices, export_indices, open_text

    settings = _settings(args)
    alias = settings.get("IMGSEARCH_INDEX")
    client = _client(settings)
    _check_cluster(client, settings)
    try:
        total = sum(i["docs"] for i in describe_indices(client, alias).values())
        with Progress(f"export {alias}", total, unit="docs",
                      interval=settings.getfloat("IMGSEARCH_PROGRESS_SECONDS")) as progress, \
                open_text(args.file, "w") as out:
            counts = export_indices(client, alias, out, advance=progress.update)
    except (IndexMissing, IndexConflict, TransferError) as exc:
        raise CliError(str(exc)) from exc
    except OSError as exc:
        raise CliError(f"cannot write {args.file}: {exc.strerror or exc}") from exc
    finally:
        client.close()
    _report(f"Exported {alias} to {args.file}", counts)
    return 0


def cmd_import(args: argparse.Namespace) -> int:
    from index_setup.indices import IndexConflict
    from index_setup.transfer import (
        ImportFailed,
        TransferError,
        image_meta,
        import_documents,
        open_text,
        prepare_target,
        read_header,
    )

    settings = _settings(args)
    alias = settings.get("IMGSEARCH_INDEX")
    if args.file != "-" and not Path(args.file).is_file():
        raise CliError(f"{args.file}: no such file")
    client = _client(settings)
    _check_cluster(client, settings)
    try:
        with open_text(args.file, "r") as stream:
            record = read_header(stream)
            outcome = prepare_target(client, alias, record)
            total = sum(int(i.get("docs") or 0) for i in record["indices"].values())
            with Progress(f"import {alias}", total, unit="docs",
                          interval=settings.getfloat("IMGSEARCH_PROGRESS_SECONDS")) as progress:
                counts = import_documents(client, alias, stream, advance=progress.update,
                                          max_retries=settings.getint("IMGSEARCH_INDEX_MAX_RETRIES"))
    except ImportFailed as exc:
        _report(f"Imported {args.file} into {alias} only in part", exc.counts)
        print(f"imgsearch: {exc}", file=sys.stderr)
        return 1
    except (IndexConflict, TransferError) as exc:
        raise CliError(str(exc)) from exc
    except (OSError, EOFError, UnicodeDecodeError) as exc:  # gzip raises EOFError on a cut-short file
        raise CliError(f"cannot read {args.file}: {exc}") from exc
    finally:
        client.close()
    created = [name for name, what in outcome.items() if what == "created"]
    _report(f"Imported {args.file} into {alias}" + (f" (created {', '.join(created)})" if created else ""), counts)
    _, model = image_meta(record)
    configured = settings.get("IMGSEARCH_IMAGE_MODEL")
    if model and configured != model:
        print(f"Note: its vectors are from the image model {model}; IMGSEARCH_IMAGE_MODEL here is {configured}. "
              f"Search and crawl it with IMGSEARCH_IMAGE_MODEL={model} (and a text model of the same space).")
    return 0


def _report(what: str, counts: dict[str, int]) -> None:
    # stdout may carry the export itself (FILE "-"): the report then goes to stderr.
    stream = sys.stderr if what.endswith(" to -") else sys.stdout
    print(f"{what}: {counts['images']} images, {counts['sources']} sources, {counts['urls']} image URLs.",
          file=stream)


def add_parsers(commands: argparse._SubParsersAction, add_index_arg: Callable[[argparse.ArgumentParser], None]
                ) -> None:
    export = commands.add_parser("export", help="write the image, sources and urls indices to an NDJSON file")
    export.add_argument("file", metavar="FILE", help="the file to write (.gz: compressed; -: stdout)")
    add_index_arg(export)
    export.set_defaults(func=cmd_export)
    imported = commands.add_parser("import", help="load an export into the indices (created when missing)")
    imported.add_argument("file", metavar="FILE", help="a file written by `imgsearch export` (.gz; -: stdin)")
    add_index_arg(imported)
    imported.set_defaults(func=cmd_import)
