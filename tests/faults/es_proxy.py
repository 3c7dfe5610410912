"""A proxy in front of the shared Elasticsearch node that can take "the cluster" away and bring it back, answer
slowly, or refuse bulk requests by rule, without touching the node itself (other tests use it meanwhile).

`ClusterProxy` is tests/test_indexing.py's `FaultProxy` (per-bulk rules: Reply, Drop, RejectItems) plus:

- `go_down()` / `come_back()`: while down, the listening socket is closed (new connections are refused) and
  every request on a connection already open is dropped unanswered; `come_back()` listens on the same port again.
- `delay`: seconds to hold each request to one of `delay_paths` (default: `_bulk`) before forwarding it;
  `hold()` / `release()`: bulk requests wait (unanswered) until released.
- a log of every bulk request: when it came, how many items, what was done to it.
"""

from __future__ import annotations

import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from tests.test_indexing import FaultProxy


class ClusterProxy(FaultProxy):
    def __init__(self, upstream: tuple[str, int]) -> None:
        super().__init__(upstream)
        self.port = self.server.server_address[1]
        self.delay = 0.0
        self.delay_paths: tuple[str, ...] = ("/_bulk",)
        self._released = threading.Event()
        self._released.set()
        self.down = False
        self.dropped_while_down = 0
        self.bulk_times: list[float] = []
        self.delayed = 0
        self._in_bulk = 0
        self.max_concurrent_bulks = 0

    def go_down(self) -> None:
        self.down = True
        self.server.shutdown()
        self.server.server_close()

    def come_back(self) -> None:
        handler = self.server.RequestHandlerClass
        self.server = ThreadingHTTPServer(("127.0.0.1", self.port), handler)
        self.server.daemon_threads = True
        self.down = False
        self.thread = threading.Thread(target=self.server.serve_forever, name="cluster-proxy", daemon=True)
        self.thread.start()

    def hold(self) -> None:
        self._released.clear()

    def release(self) -> None:
        self._released.set()

    def stop(self) -> None:
        self._released.set()
        if not self.down:
            super().stop()

    def _serve(self, h: BaseHTTPRequestHandler) -> None:
        if self.down:
            with self.lock:
                self.dropped_while_down += 1
            h.close_connection = True  # no answer: the client sees the connection closed
            return
        path = h.path.split("?", 1)[0]
        bulk = path.endswith("/_bulk")
        if bulk:
            with self.lock:
                self.bulk_times.append(time.monotonic())
                self._in_bulk += 1
                self.max_concurrent_bulks = max(self.max_concurrent_bulks, self._in_bulk)
        try:
            if bulk:
                self._released.wait(300)
            if self.delay and path.endswith(self.delay_paths):
                with self.lock:
                    self.delayed += 1
                time.sleep(self.delay)  # the fault itself: a cluster that takes this long to answer
                if self.down:
                    h.close_connection = True
                    return
            super()._serve(h)
        finally:
            if bulk:
                with self.lock:
                    self._in_bulk -= 1

    def summary(self) -> dict[str, Any]:
        with self.lock:
            return {"bulks": self.bulk_count, "forwarded": self.forwarded_bulks,
                    "faults": {f: self.faults.count(f) for f in set(self.faults)}}
