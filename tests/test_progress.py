"""The progress helper of long commands: a bar with rate and ETA on a terminal, plain periodic lines otherwise."""

from __future__ import annotations

import io

from cli.progress import Progress, format_duration, render_bar, status_line


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
