"""The progress helper of long commands: a bar with rate and ETA on a terminal, plain periodic lines otherwise."""

from __future__ import annotations

import fcntl
import io
import json
import logging
import os
import pty
import re
import struct
import subprocess
import sys
import termios
import threading
import uuid
from pathlib import Path

import pytest

from cli.progress import Progress, format_duration, render_bar, status_line, warnings_only_on_terminal
from crawler.progress import summary
from crawler.sample_site import Route, SiteServer, encode, page, photo_like
from index_setup.indices import delete_indices

ROOT = Path(__file__).resolve().parent.parent


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_durations_and_bars_read_plainly():
    assert [format_duration(s) for s in (0, 42, 725, 10930, None, float("inf"))] == [
        "0:00", "0:42", "12:05", "3:02:10", "?", "?"]
    assert render_bar(0, 10, 10) == "[----------]"
    assert render_bar(5, 10, 10) == "[#####-----]"
    assert render_bar(15, 10, 10) == "[##########]"
    assert render_bar(3, None, 10) == ""
    line = status_line("export x", 50, 200, "docs", 10.0, 15.0, {"no_original": 2}, 5.0, bar=False)
    assert line == "export x  50/200 docs (25%)  10.0 docs/s  ETA 0:15; no original 2"
    assert status_line("crawl", 7, None, "pages", 2.0, None, {}, 61, bar=True) == \
        "crawl  7 pages  2.0 pages/s  1:01 elapsed"
    assert "0/0 sources (100%)" in status_line("check", 0, 0, "sources", None, None, {}, 1, bar=False)


def test_plain_lines_come_every_interval_and_once_at_the_end():
    clock, out = Clock(), io.StringIO()
    progress = Progress("import a", 100, unit="docs", interval=10, stream=out, tty=False, clock=clock)
    for _ in range(29):  # an update each second: a line at 10 s, at 20 s, and the last one (29 s)
        clock.now += 1
        progress.update(2, gone=1)
    progress.finish()
    progress.finish()  # once only
    lines = out.getvalue().splitlines()
    assert len(lines) == 3, lines
    assert lines[0].startswith("import a  20/100 docs (20%)  2.0 docs/s  ETA 0:40; gone 10")
    assert lines[-1].startswith("import a  58/100 docs (58%)")
    assert "\r" not in out.getvalue() and "[" not in out.getvalue(), "no bar and no redraws in a log"


def test_a_terminal_gets_one_redrawn_bar_line():
    clock, out = Clock(), io.StringIO()
    with Progress("reembed a", 4, unit="images", interval=10, stream=out, tty=True, clock=clock) as progress:
        for _ in range(4):
            clock.now += 0.5
            progress.update()
    text = out.getvalue()
    assert text.count("\n") == 1 and text.endswith("\x1b[K\n")
    assert text.count("\r") == 5  # four redraws (each update is 0.5 s after the last) and the final line
    assert "[########################]  4/4 images (100%)" in text and "in 0:02" in text


def test_rate_and_eta_follow_the_recent_pace_and_setup_time_is_not_counted():
    clock, out = Clock(), io.StringIO()
    progress = Progress("reembed", None, unit="images", interval=0, stream=out, tty=False, clock=clock)
    clock.now += 120  # loading a model
    progress.set_total(1000)
    clock.now += 10
    progress.update(500)  # a resumed run: half was done before, skipped in 10 s
    for _ in range(60):
        clock.now += 1
        progress.update(5)  # then 5 a second
    assert 5.0 <= progress.rate() < 6.0, "the last 30 s count, not the fast start"
    assert "ETA 0:3" in progress.line() or "ETA 0:4" in progress.line()
    assert out.getvalue() == "", "interval 0: no periodic lines"
    progress.finish()
    assert out.getvalue().startswith("reembed  800/1000 images (80%)")


def test_log_records_go_above_a_drawn_bar_and_handlers_get_their_stream_back():
    clock, out = Clock(), io.StringIO()
    handler = logging.StreamHandler(out)
    handler.setFormatter(logging.Formatter("%(levelname)s %(message)s"))
    root = logging.getLogger()
    root.addHandler(handler)
    try:
        progress = Progress("export a", 10, unit="docs", stream=out, tty=True, clock=clock)
        logging.getLogger("tests.progress").warning("before any bar")
        clock.now += 1
        progress.update(3)
        logging.getLogger("tests.progress").warning("a record while the bar is drawn")
        progress.finish()
        assert handler.stream is out, "the handler writes to its own stream again"
        logging.getLogger("tests.progress").warning("after the bar")
    finally:
        root.removeHandler(handler)
    text = out.getvalue()
    assert text.startswith("WARNING before any bar\n"), "no bar yet: nothing to clear"
    bar = "export a  [#######-----------------]  3/10 docs (30%)  3.0 docs/s  ETA 0:02"
    # The bar's line cleared, the record written on a line of its own, the bar drawn again below it.
    assert f"\r{bar}\x1b[K\r\x1b[KWARNING a record while the bar is drawn\n\r{bar}\x1b[K\r" in text
    assert text.endswith("\x1b[K\nWARNING after the bar\n")


def test_only_warnings_reach_a_terminal_while_a_bar_runs():
    class Terminal(io.StringIO):
        def isatty(self) -> bool:
            return True

    terminal, log_file = Terminal(), io.StringIO()
    on_terminal, in_file = logging.StreamHandler(terminal), logging.StreamHandler(log_file)
    root, level = logging.getLogger(), logging.getLogger().level
    for handler in (on_terminal, in_file):
        root.addHandler(handler)
    root.setLevel(logging.INFO)
    try:
        with warnings_only_on_terminal(terminal):
            logging.getLogger("tests.progress").info("chatter")
            logging.getLogger("tests.progress").warning("a warning")
        with warnings_only_on_terminal(terminal, enabled=False):  # --verbose
            logging.getLogger("tests.progress").info("verbose chatter")
    finally:
        for handler in (on_terminal, in_file):
            root.removeHandler(handler)
        root.setLevel(level)
    assert terminal.getvalue() == "a warning\nverbose chatter\n"
    assert log_file.getvalue() == "chatter\na warning\nverbose chatter\n", "a log file keeps every line"
    assert on_terminal.level == logging.NOTSET


def test_a_growing_total_keeps_its_clock_and_says_what_the_eta_is_for():
    clock, out = Clock(), io.StringIO()
    progress = Progress("crawl", unit="images", interval=0, stream=out, tty=True, clock=clock,
                        counts=("found", "skipped"), eta_for="for the images found so far")
    assert progress.line() == "crawl  0 images  ? images/s  0:00 elapsed; found 0, skipped 0", "zeros shown"
    clock.now += 2
    progress.set_total(10, restart=False)
    progress.set_note("pages 1/4, ETA 0:06 for the page limit")
    progress.update(4, found=11, skipped=1)
    assert progress.line() == ("crawl  [#########---------------]  4/10 images (40%)  2.0 images/s  ETA 0:03 "
                               "for the images found so far; found 11, skipped 1; pages 1/4, ETA 0:06 for the "
                               "page limit")
    clock.now += 2
    progress.update(6)
    assert "10/10 images (100%)  2.5 images/s  ETA 0:00 for" in progress.line(), "caught up, not finished"
    progress.finish()
    assert "10/10 images (100%)  2.5 images/s  in 0:04; found 11" in out.getvalue()


# -- the crawl and replay commands ---------------------------------------------------------------------------
def run_on_terminal(command: list[str], env: dict[str, str], timeout: float = 180) -> tuple[int, str]:
    """Run `command` with stdout and stderr on a pseudo-terminal 250 columns wide; returns its exit status
    and what the terminal received (line ends as the program wrote them)."""
    master, slave = pty.openpty()
    fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 50, 250, 0, 0))
    received = bytearray()

    def read() -> None:
        while True:
            try:
                data = os.read(master, 65536)
            except OSError:  # EIO: every writer of the terminal has closed it
                return
            if not data:
                return
            received.extend(data)

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    try:
        process = subprocess.Popen(command, stdin=subprocess.DEVNULL, stdout=slave, stderr=slave,
                                   env={**os.environ, **env}, cwd=ROOT)
        os.close(slave)
        try:
            returncode = process.wait(timeout=timeout)
        finally:
            if process.poll() is None:
                process.kill()
                process.wait()
        reader.join(timeout=10)
    finally:
        os.close(master)
    return returncode, received.decode("utf-8", errors="replace").replace("\r\n", "\n")


def visible_lines(terminal: str) -> list[str]:
    """What stays on screen of each line: the text after its last carriage return, escapes removed."""
    return [line.rsplit("\r", 1)[-1].replace("\x1b[K", "") for line in terminal.split("\n")]


def slow_site(images_per_page: int = 3, pages: int = 4) -> dict[str, Route]:
    """A chain of pages, each slow, with slow images: the crawl lasts a few seconds, found images trickle in."""
    routes = {"/img/icon.png": Route(encode(photo_like(90, 16, 16), "PNG"), "image/png")}
    for n in range(pages):
        paths = [f"/img/{n}-{i}.jpg" for i in range(images_per_page)]
        for i, path in enumerate(paths):
            routes[path] = Route(encode(photo_like(100 + n * 10 + i, 300, 220)), "image/jpeg", delay=0.4)
        extra = '<img src="/img/icon.png"><img src="/img/gone.jpg">' if n == 0 else ""
        link = f'<a href="/p{n + 1}.html">next</a>' if n + 1 < pages else ""
        route = page(f"Page {n}", "".join(f'<img src="{p}">' for p in paths) + extra + link)
        route.delay = 0.4
        routes["/" if n == 0 else f"/p{n}.html"] = route
    return routes


@pytest.fixture(scope="module")
def site():
    with SiteServer(slow_site()) as server:
        yield server


@pytest.fixture()
def command_env(es, index_alias, crawl_settings_env):
    """The environment of a command on an index of its own: each crawl finds every image new."""
    alias = f"{index_alias}-{uuid.uuid4().hex[:6]}"
    yield {**crawl_settings_env, "IMGSEARCH_INDEX": alias}
    delete_indices(es, alias)


def test_crawl_logs_plain_progress_lines_when_not_on_a_terminal(site, command_env):
    result = subprocess.run([sys.executable, "-m", "cli", "crawl", site.url + "/", "--depth", "5"],
                            capture_output=True, text=True, timeout=180, cwd=ROOT,
                            env={**os.environ, **command_env, "IMGSEARCH_PROGRESS_SECONDS": "0.5"})
    assert result.returncode == 0, result.stderr[-3000:]
    progress = [line for line in result.stderr.splitlines() if " INFO crawler.progress: Progress: pages " in line]
    assert len(progress) >= 2, result.stderr[-3000:]
    assert "\r" not in result.stderr and "\x1b[" not in result.stderr and "images/s" not in result.stderr
    finished = re.search(r"INFO crawler\.progress: Crawl finished \(finished\): (pages 4, images found 14, .*)",
                         result.stderr)
    assert finished, result.stderr[-3000:]
    assert result.stdout.splitlines()[-1] == finished.group(1), "the summary, on stdout too"
    assert "indexed 12 " in finished.group(1) and "skipped 1 (too_small 1), failed 1 (http_404 1)" in finished.group(1)


def test_crawl_on_a_terminal_draws_a_bar_with_rate_and_eta_and_keeps_warnings_and_the_summary_whole(
        site, command_env):
    returncode, terminal = run_on_terminal(
        [sys.executable, "-m", "cli", "crawl", site.url + "/", "--depth", "5", "--max-pages", "4"], command_env)
    lines = visible_lines(terminal)
    assert returncode == 0, terminal[-3000:]
    assert terminal.count("\r") > 5, "the bar is redrawn in place"
    bar = re.compile(r"crawl  \[[#-]{24}\]  \d+/\d+ images \(\d+%\)  [\d.]+ images/s  ETA \d+:\d\d for the "
                     r"images found so far; found \d+, downloaded \d+, skipped \d+, failed \d+; pages \d/4, "
                     r"ETA \d+:\d\d for the page limit")
    assert bar.search(terminal), terminal[-3000:]
    # Log records are whole lines above the bar, never a bar with a record written into it.
    warnings = [line for line in lines if "WARNING" in line]
    assert len(warnings) == 2 and all(re.match(r"\d\d:\d\d:\d\d WARNING pipelines\.fetch: Image ", line)
                                      for line in warnings), warnings
    assert "INFO scrapy" not in terminal and "Crawl finished" not in terminal, "the bar replaces the info lines"
    last_bar, summary = [line for line in lines if line][-2:]
    assert re.fullmatch(r"crawl  \[#{24}\]  12/12 images \(100%\)  [\d.]+ images/s  in \d+:\d\d; found 14, "
                        r"downloaded 13, skipped 1, failed 1; pages 4/4", last_bar), lines
    assert re.fullmatch(r"pages 4, images found 14, downloaded 13, embedded 12, indexed 12 \(new images \d+\), "
                        r"skipped 1 \(too_small 1\), failed 1 \(http_404 1\); [\d.]+ indexed/s over \d+ s", summary)


def dead_letter_file(directory, index: str, records: int) -> str:
    """`records` writes to `index`, the last of them one that Elasticsearch refuses (a number that is not)."""
    path = directory / "replay-me.jsonl"
    with path.open("w", encoding="utf-8") as f:
        for n in range(records):
            body = {"n": n if n < records - 1 else "not a number"}
            f.write(json.dumps({"op": "index", "index": index, "id": str(n), "body": body, "reason": "http_503",
                                "status": 503, "error": None, "time": "2026-01-01T00:00:00Z"}) + "\n")
    return str(path)


@pytest.fixture()
def replay_file(es, index_alias, tmp_path):
    index = f"{index_alias}-replay-{uuid.uuid4().hex[:6]}"
    es.indices.create(index=index, mappings={"properties": {"n": {"type": "integer"}}})
    yield dead_letter_file(tmp_path, index, 1001)
    es.indices.delete(index=index)


def test_replay_writes_plain_progress_lines_when_not_on_a_terminal(replay_file, command_env, tmp_path):
    result = subprocess.run([sys.executable, "-m", "cli", "replay", replay_file], capture_output=True, text=True,
                            timeout=120, cwd=ROOT, env={**os.environ, **command_env,
                                                        "IMGSEARCH_INDEX_DEAD_LETTER_DIR": str(tmp_path / "dl"),
                                                        "IMGSEARCH_PROGRESS_SECONDS": "0.001"})
    assert result.returncode == 1, result.stderr[-3000:]  # one write still fails
    lines = [line for line in result.stderr.splitlines() if line.startswith("replay replay-me.jsonl  ")]
    assert lines[0].startswith("replay replay-me.jsonl  500/1001 records (50%)  ")
    assert "ETA" in lines[0] and lines[0].endswith("; written 500, failed 0")
    assert re.fullmatch(r"replay replay-me\.jsonl  1001/1001 records \(100%\)  [\d.]+ records/s  in \d+:\d\d; "
                        r"written 1000, failed 1", lines[-1]), lines
    assert "\r" not in result.stderr
    assert result.stdout.startswith(f"Replayed {replay_file}: 1000 written, 1 still failing (kept in ")


def test_replay_on_a_terminal_draws_a_bar_over_the_file_and_keeps_its_answer_whole(replay_file, command_env,
                                                                                     tmp_path):
    returncode, terminal = run_on_terminal([sys.executable, "-m", "cli", "replay", replay_file],
                                           {**command_env, "IMGSEARCH_INDEX_DEAD_LETTER_DIR": str(tmp_path / "dl")})
    assert returncode == 1, terminal[-3000:]
    assert terminal.count("\r") >= 1 and "\x1b[K" in terminal
    last_bar, answer = [line for line in visible_lines(terminal) if line][-2:]
    assert re.fullmatch(r"replay replay-me\.jsonl  \[#{24}\]  1001/1001 records \(100%\)  [\d.]+ records/s  "
                        r"in \d+:\d\d; written 1000, failed 1", last_bar), terminal[-2000:]
    assert answer.startswith(f"Replayed {replay_file}: 1000 written, 1 still failing (kept in ")


def test_the_summary_counts_failed_pages_beside_failed_images():
    stats = {"imgsearch/find/pages": 2, "imgsearch/find/failed/http_404": 1, "imgsearch/find/failed/timeout": 2,
             "imgsearch/find/found": 3, "imgsearch/fetch/failed/decode_error": 1}
    line = summary(stats, 10.0)
    assert line.startswith("pages 5 (failed 3: timeout 2, http_404 1), images found 3, "), line
    assert "failed 1 (decode_error 1)" in line
    assert summary({"imgsearch/find/pages": 2}, 10.0).startswith("pages 2, images found 0")
