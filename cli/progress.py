"""Progress of a long command: a bar with rate and ETA on a terminal, a plain line every few seconds otherwise.

    with Progress("export", total=n, unit="docs", interval=10) as progress:
        for chunk in chunks:
            ...
            progress.update(len(chunk), missing=2)   # named counters add up and are shown too

On a terminal the line is redrawn in place at most ten times a second; anywhere else (a log file, cron, a pipe)
a plain line is written every `interval` seconds (0: none) and one at the end, so logs stay readable. Lines go
to stderr, leaving stdout to the command's answer (`imgsearch export -` writes the export there). The rate, and
the ETA computed from it, cover the last half minute, so a resumed run that first skips what is done does not
promise an ETA it cannot keep. `update` may be called from any thread; nothing here reads settings, so a crawl
extension or `imgsearch replay` can drive it the same way.
"""

from __future__ import annotations

import shutil
import sys
import threading
import time
from collections import deque
from collections.abc import Callable
from typing import TextIO

# Seconds of history behind the rate and the ETA.
RATE_WINDOW = 30.0
# A terminal line is redrawn at most this often.
REDRAW_SECONDS = 0.1
BAR_WIDTH = 24


def format_duration(seconds: float | None) -> str:
    """0:42, 12:05, 3:02:10; "?" when unknown."""
    if seconds is None or seconds != seconds or seconds < 0 or seconds == float("inf"):
        return "?"
    seconds = int(round(seconds))
    hours, rest = divmod(seconds, 3600)
    minutes, secs = divmod(rest, 60)
    return f"{hours}:{minutes:02d}:{secs:02d}" if hours else f"{minutes}:{secs:02d}"


def format_rate(rate: float | None, unit: str) -> str:
    if rate is None:
        return f"? {unit}/s"
    return f"{rate:.1f} {unit}/s" if rate < 100 else f"{rate:.0f} {unit}/s"


def render_bar(done: int, total: int | None, width: int = BAR_WIDTH) -> str:
    """[#########---------] for a known total; empty for an unknown one."""
    if not total:
        return ""
    filled = min(width, int(width * done / total))
    return "[" + "#" * filled + "-" * (width - filled) + "]"


def status_line(label: str, done: int, total: int | None, unit: str, rate: float | None, eta: float | None,
                counts: dict[str, int], elapsed: float, *, bar: bool) -> str:
    """One line of progress: label, bar (terminals), done/total and percentage, rate, ETA, named counts."""
    parts = [label]
    if bar and total:
        parts.append(render_bar(done, total))
    if total is not None:
        parts.append(f"{done}/{total} {unit} ({100 * done / total if total else 100:.0f}%)")
    else:
        parts.append(f"{done} {unit}")
    parts.append(format_rate(rate, unit))
    if total is not None:
        parts.append(f"ETA {format_duration(eta)}" if done < total else f"in {format_duration(elapsed)}")
    else:
        parts.append(f"{format_duration(elapsed)} elapsed")
    line = "  ".join(parts)
    if counts:
        line += "; " + ", ".join(f"{name.replace('_', ' ')} {n}" for name, n in counts.items())
    return line


class Progress:
    """Reports how far a long command has come (see the module docstring); a context manager."""

    def __init__(self, label: str, total: int | None = None, *, unit: str = "items", interval: float = 10.0,
                 stream: TextIO | None = None, tty: bool | None = None,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.label = label
        self.total = total
        self.unit = unit
        self.interval = float(interval)
        self.stream = stream if stream is not None else sys.stderr
        self.tty = bool(getattr(self.stream, "isatty", lambda: False)()) if tty is None else tty
        self.clock = clock
        self.done = 0
        self.counts: dict[str, int] = {}
        self.started = clock()
        self._samples: deque[tuple[float, int]] = deque([(self.started, 0)])
        self._last_output = self.started
        self._finished = False
        self._last_line = ""
        self._lock = threading.Lock()

    def __enter__(self) -> Progress:
        return self

    def __exit__(self, *exc: object) -> None:
        self.finish()

    def set_total(self, total: int | None) -> None:
        """The units to do, once known; before any is done, the clock starts again (setup such as loading a
        model is then not counted in the rate and ETA)."""
        with self._lock:
            self.total = total
            if self.done == 0:
                self.started = self._last_output = self.clock()
                self._samples = deque([(self.started, 0)])

    def update(self, advance: int = 1, **counts: int) -> None:
        """`advance` more units done; each keyword adds to a named counter shown after the rate."""
        with self._lock:
            self.done += advance
            for name, n in counts.items():
                if n:
                    self.counts[name] = self.counts.get(name, 0) + n
            now = self.clock()
            self._sample(now)
            due = REDRAW_SECONDS if self.tty else self.interval
            if due > 0 and now - self._last_output >= due:
                self._emit(now)

    def finish(self, message: str | None = None) -> None:
        """The last line (the final figures, or `message`); further calls do nothing."""
        with self._lock:
            if self._finished:
                return
            self._finished = True
            now = self.clock()
            line = message or self.line(now)
            if self.tty:
                self._write("\r" + self._fit(line) + "\x1b[K\n")
            elif line != self._last_line:  # not the periodic line just written again
                self._write(line + "\n")

    def rate(self, now: float | None = None) -> float | None:
        """Units per second over the last RATE_WINDOW seconds (None before any time has passed)."""
        now = self.clock() if now is None else now
        first_time, first_done = self._samples[0]
        if now - first_time <= 0:
            return None
        return (self.done - first_done) / (now - first_time)

    def line(self, now: float | None = None) -> str:
        now = self.clock() if now is None else now
        rate = self.rate(now)
        eta = None
        if self.total and rate:
            eta = max(0, self.total - self.done) / rate
        return status_line(self.label, self.done, self.total, self.unit, rate, eta, dict(self.counts),
                           now - self.started, bar=self.tty)

    # -- private -----------------------------------------------------------------------------------------------
    def _sample(self, now: float) -> None:
        """A (time, done) point a second at most, those older than RATE_WINDOW dropped but the last of them."""
        if now - self._samples[-1][0] >= 1.0:
            self._samples.append((now, self.done))
        while len(self._samples) > 1 and now - self._samples[1][0] >= RATE_WINDOW:
            self._samples.popleft()

    def _emit(self, now: float) -> None:
        self._last_output = now
        line = self._last_line = self.line(now)
        if self.tty:
            self._write("\r" + self._fit(line) + "\x1b[K")
        else:
            self._write(line + "\n")

    def _fit(self, line: str) -> str:
        width = shutil.get_terminal_size((100, 20)).columns - 1
        return line if len(line) <= width else line[: max(0, width - 1)] + "…"

    def _write(self, text: str) -> None:
        try:
            self.stream.write(text)
            self.stream.flush()
        except (OSError, ValueError):  # a closed or broken stream must not stop the work it reports on
            pass
