"""Crawls run in a subprocess whose exit status, log, stats, wall time and peak RSS are all kept; small waits."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any


@dataclass
class CrawlRun:
    returncode: int
    stdout: str
    stderr: str
    stats: dict[str, Any] = field(default_factory=dict)
    seconds: float = 0.0
    peak_rss_mb: float = 0.0

    def stat(self, key: str) -> int:
        return int(self.stats.get(key, 0) or 0)

    def reasons(self, prefix: str) -> dict[str, int]:
        return {k[len(prefix):]: int(v) for k, v in self.stats.items() if k.startswith(prefix)}


class Crawl:
    """`imgsearch crawl` in a child process, watched with os.wait4 so that its own peak RSS is known."""

    def __init__(self, args: list[str], env: dict[str, str], workdir: Path) -> None:
        self.stats_file = workdir / f"stats-{time.monotonic_ns()}.json"
        self.out = (workdir / f"crawl-{time.monotonic_ns()}.out").open("w+")
        self.err = (workdir / f"crawl-{time.monotonic_ns()}.err").open("w+")
        self.started = time.monotonic()
        self.process = subprocess.Popen([sys.executable, "-m", "cli", "crawl", *args, "--stats-file",
                                         str(self.stats_file)], env={**os.environ, **env}, stdout=self.out,
                                        stderr=self.err, text=True)
        self.result: CrawlRun | None = None

    @property
    def pid(self) -> int:
        return self.process.pid

    def poll(self) -> CrawlRun | None:
        if self.result is None:
            pid, status, usage = os.wait4(self.process.pid, os.WNOHANG)
            if pid == 0:
                return None
            self._finish(status, usage)
        return self.result

    def wait(self, timeout: float) -> CrawlRun:
        deadline = time.monotonic() + timeout
        while self.poll() is None:
            if time.monotonic() > deadline:
                self.kill()
                raise AssertionError(f"the crawl did not end within {timeout} s:\n{self._tail()}")
            time.sleep(0.05)
        return self.result

    def kill(self) -> CrawlRun:
        if self.poll() is None:
            self.process.kill()
            _, status, usage = os.wait4(self.process.pid, 0)
            self._finish(status, usage)
        return self.result

    def _finish(self, status: int, usage: Any) -> None:
        self.process.returncode = os.waitstatus_to_exitcode(status)
        self.out.seek(0)
        self.err.seek(0)
        stats = json.loads(self.stats_file.read_text()) if self.stats_file.exists() else {}
        self.result = CrawlRun(self.process.returncode, self.out.read(), self.err.read(), stats,
                               time.monotonic() - self.started, usage.ru_maxrss / 1024)
        self.out.close()
        self.err.close()

    def _tail(self) -> str:
        self.err.flush()
        return Path(self.err.name).read_text()[-3000:]


def run_crawl(env: dict[str, str], workdir: Path, *args: str, timeout: float = 240) -> CrawlRun:
    return Crawl(list(args), env, workdir).wait(timeout)




def count(es, index: str) -> int:
    if not es.indices.exists(index=index):
        return 0
    es.indices.refresh(index=index)
    return es.count(index=index)["count"]


def all_ids(es, index: str) -> list[str]:
    es.indices.refresh(index=index)
    hits = es.search(index=index, size=10000, source=False, query={"match_all": {}})["hits"]["hits"]
    return [h["_id"] for h in hits]
