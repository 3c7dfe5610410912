"""`imgsearch serve`: the search page and its JSON API (the web package), on uvicorn.

It loads the models before it listens, so a model that cannot be loaded is one line and status 2, as for
`imgsearch search`; an unreachable Elasticsearch is only reported (the server answers each request with that
message until it is back).
"""

from __future__ import annotations

import argparse
import ipaddress
import socket
import sys
from collections.abc import Callable

from cli import CliError, _settings

LOOPBACK_NAMES = ("localhost", "ip6-localhost")


def add_parser(commands: argparse._SubParsersAction, add_index_arg: Callable[[argparse.ArgumentParser], None]
               ) -> None:
    """The `serve` subcommand, on the parser of cli.build_parser."""
    serve = commands.add_parser("serve", help="the search page and its JSON API, on http://127.0.0.1:8000/")
    serve.add_argument("--host", help="address to listen on (default IMGSEARCH_SERVE_HOST, 127.0.0.1: this "
                                      "machine only)")
    serve.add_argument("--port", type=int, help="port (default IMGSEARCH_SERVE_PORT, 8000)")
    serve.add_argument("--allow-private", action="store_true",
                       help="let the image URL field fetch from loopback and private networks")
    add_index_arg(serve)
    serve.set_defaults(func=cmd_serve)


def is_loopback(host: str) -> bool:
    if host in LOOPBACK_NAMES:
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def listening_socket(host: str, port: int) -> socket.socket:
    """Bound here, so that a port in use is one clear line; uvicorn serves on it."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    # IPPROTO_TCP named, not left 0: asyncio sets TCP_NODELAY on accepted connections only when the listening
    # socket says TCP, and without it every response waits ~40 ms for a delayed ACK (Nagle).
    sock = socket.socket(family, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError as exc:
        sock.close()
        raise OSError(f"cannot listen on {host}:{port}: {exc.strerror or exc}") from exc
    sock.set_inheritable(True)
    return sock


def cmd_serve(args: argparse.Namespace) -> int:
    import uvicorn

    from index_setup.client import ClusterError, cluster_info
    from pipelines.embedding import ModelUnavailable
    from web.app import build_searcher, create_app, load_models

    settings = _settings(args)
    host = args.host or settings.get("IMGSEARCH_SERVE_HOST")
    port = args.port if args.port is not None else settings.getint("IMGSEARCH_SERVE_PORT")
    if not 0 <= port <= 65535:
        raise CliError(f"--port must be between 0 and 65535, got {port}")
    if not is_loopback(host) and not settings.get("IMGSEARCH_SERVE_TOKEN"):
        print(f"imgsearch: warning: listening on {host}, beyond this machine, without IMGSEARCH_SERVE_TOKEN: "
              f"anyone who can reach it can search the index", file=sys.stderr)
    try:
        sock = listening_socket(host, port)
    except OSError as exc:
        raise CliError(str(exc)) from exc
    searcher = build_searcher(settings)
    try:
        load_models(searcher)
    except ModelUnavailable as exc:
        sock.close()
        raise CliError(str(exc)) from exc
    alias = settings.get("IMGSEARCH_INDEX")
    try:
        info = cluster_info(searcher.client, settings)
        print(f"Elasticsearch {info['version']} at {info['url']}, health {info['status']}; index {alias}")
    except ClusterError as exc:
        print(f"imgsearch: warning: {exc}; searches answer with this message until it is reachable",
              file=sys.stderr)
    bound_port = sock.getsockname()[1]
    shown = f"[{host}]" if ":" in host else host
    print(f"Search page on http://{shown}:{bound_port}/ (API documentation at /docs); Ctrl-C stops it.", flush=True)
    app = create_app(settings, searcher=searcher, allow_private=args.allow_private)
    config = uvicorn.Config(app, log_level="info", server_header=False, proxy_headers=False)
    try:
        uvicorn.Server(config).run(sockets=[sock])
    finally:
        searcher.close()
        sock.close()
    return 0
