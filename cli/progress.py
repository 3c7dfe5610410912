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

While a bar is drawn, log records written to the same terminal by a logging handler go above it: the bar's line
is cleared, the record written and the bar drawn again below it, so neither garbles the other.
"""

from __future__ import annotations

import logging
import os
import shutil
import sys
import threading
import time
from collections import deque
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
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
                counts: dict[str, int], elapsed: float, *, bar: bool, finished: bool | None = None,
                eta_for: str = "", note: str = "") -> str:
    """One line of progress: label, bar (terminals), done/total and percentage, rate, ETA (and what it is
    for), named counts, note. A finished line gives the time taken instead of an ETA; `finished` None: when
    the total is reached."""
    parts = [label]
    if bar and total:
        parts.append(render_bar(done, total))
    if total is not None:
        parts.append(f"{done}/{total} {unit} ({100 * done / total if total else 100:.0f}%)")
    else:
        parts.append(f"{done} {unit}")
    parts.append(format_rate(rate, unit))
    if finished is None:
        finished = total is not None and done >= total
    if finished:
        parts.append(f"in {format_duration(elapsed)}")
    elif total is not None:
        parts.append(f"ETA {format_duration(eta)}" + (f" {eta_for}" if eta_for else ""))
    else:
        parts.append(f"{format_duration(elapsed)} elapsed")
    line = "  ".join(parts)
    if counts:
        line += "; " + ", ".join(f"{name.replace('_', ' ')} {n}" for name, n in counts.items())
    if note:
        line += "; " + note
    return line


class RateWindow:
    """Units per second over the last `window` seconds, from (time, done) points kept at most one a second."""

    def __init__(self, now: float, done: int = 0, window: float = RATE_WINDOW) -> None:
        self.window = window
        self._samples: deque[tuple[float, int]] = deque([(now, done)])

    def add(self, now: float, done: int) -> None:
        """Note `done` units at `now`; points older than the window are dropped but the last of them."""
        if now - self._samples[-1][0] >= 1.0:
            self._samples.append((now, done))
        while len(self._samples) > 1 and now - self._samples[1][0] >= self.window:
            self._samples.popleft()

    def rate(self, now: float, done: int) -> float | None:
        """None before any time has passed."""
        first_time, first_done = self._samples[0]
        if now - first_time <= 0:
            return None
        return (done - first_done) / (now - first_time)

    def eta(self, now: float, done: int, total: int | None) -> float | None:
        """Seconds until `total` at the recent rate; None when the total or the rate is unknown, or zero."""
        rate = self.rate(now, done)
        return max(0, total - done) / rate if total and rate else None


class Progress:
    """Reports how far a long command has come (see the module docstring); a context manager."""

    def __init__(self, label: str, total: int | None = None, *, unit: str = "items", interval: float = 10.0,
                 stream: TextIO | None = None, tty: bool | None = None, counts: Sequence[str] = (),
                 eta_for: str = "", clock: Callable[[], float] = time.monotonic) -> None:
        """`counts`: named counters shown from the start, in this order (others appear when first added);
        `eta_for`: what the ETA is for, when the total is not the whole job (e.g. "for the images found so
        far")."""
        self.label = label
        self.total = total
        self.unit = unit
        self.interval = float(interval)
        self.stream = stream if stream is not None else sys.stderr
        self.tty = bool(getattr(self.stream, "isatty", lambda: False)()) if tty is None else tty
        self.clock = clock
        self.eta_for = eta_for
        self.note = ""
        self.done = 0
        self.counts: dict[str, int] = dict.fromkeys(counts, 0)
        self.started = clock()
        self._rate = RateWindow(self.started)
        self._last_output = self.started
        self._finished = False
        self._last_line = ""
        self._drawn = False  # a bar line is on the terminal, to clear before anything else is written there
        self._lock = threading.Lock()
        self._rerouted: list[tuple[logging.StreamHandler, TextIO]] = []
        if self.tty:
            self._reroute_logging()

    def __enter__(self) -> Progress:
        return self

    def __exit__(self, *exc: object) -> None:
        self.finish()

    def set_total(self, total: int | None, *, restart: bool = True) -> None:
        """The units to do, once known; before any is done, the clock starts again (setup such as loading a
        model is then not counted in the rate and ETA) unless `restart` is false (a total that grows as work
        is found, set again and again)."""
        with self._lock:
            self.total = total
            if self.done == 0 and restart:
                self.started = self._last_output = self.clock()
                self._rate = RateWindow(self.started)

    def set_note(self, note: str) -> None:
        """Text shown at the end of the line (e.g. a second figure with its own ETA); shown from the next
        update on."""
        with self._lock:
            self.note = note

    def update(self, advance: int = 1, **counts: int) -> None:
        """`advance` more units done; each keyword adds to a named counter shown after the rate."""
        with self._lock:
            self.done += advance
            for name, n in counts.items():
                if n:
                    self.counts[name] = self.counts.get(name, 0) + n
            now = self.clock()
            self._rate.add(now, self.done)
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
            line = message or self.line(now, finished=True)
            if self.tty:
                self._write("\r" + self._fit(line) + "\x1b[K\n")
                self._drawn = False
            elif line != self._last_line:  # not the periodic line just written again
                self._write(line + "\n")
        # Outside the lock: a handler takes its own lock, then ours, to write a record (see _AboveBar).
        self._restore_logging()

    def rate(self, now: float | None = None) -> float | None:
        """Units per second over the last RATE_WINDOW seconds (None before any time has passed)."""
        return self._rate.rate(self.clock() if now is None else now, self.done)

    def line(self, now: float | None = None, *, finished: bool = False) -> str:
        now = self.clock() if now is None else now
        return status_line(self.label, self.done, self.total, self.unit, self.rate(now),
                           self._rate.eta(now, self.done, self.total), dict(self.counts), now - self.started,
                           bar=self.tty, finished=finished, eta_for=self.eta_for, note=self.note)

    def write_above(self, text: str) -> None:
        """Write `text`, whole lines, to the stream: above the bar when one is drawn, which is then redrawn."""
        with self._lock:
            if self._drawn:
                text = "\r\x1b[K" + text + "\r" + self._fit(self._last_line) + "\x1b[K"
            self._write(text)

    # -- private -----------------------------------------------------------------------------------------------
    def _emit(self, now: float) -> None:
        self._last_output = now
        line = self._last_line = self.line(now)
        if self.tty:
            self._write("\r" + self._fit(line) + "\x1b[K")
            self._drawn = True
        else:
            self._write(line + "\n")

    def _fit(self, line: str) -> str:
        """The line cut to the terminal's width: a line that wrapped could not be redrawn in place."""
        try:
            # The stream's own terminal: stdout may be a file or a pipe (`imgsearch export - > file`).
            columns = os.get_terminal_size(self.stream.fileno()).columns
        except (AttributeError, OSError, ValueError):
            columns = shutil.get_terminal_size((100, 20)).columns
        width = columns - 1
        return line if len(line) <= width else line[: max(0, width - 1)] + "…"

    def _reroute_logging(self) -> None:
        """Root logging handlers that write to this terminal write through `write_above` until `finish`."""
        for handler in logging.getLogger().handlers:
            if isinstance(handler, logging.StreamHandler) and _same_stream(handler.stream, self.stream):
                self._rerouted.append((handler, handler.stream))
                handler.setStream(_AboveBar(self, handler.stream))

    def _restore_logging(self) -> None:
        for handler, stream in self._rerouted:
            current = handler.stream
            if isinstance(current, _AboveBar) and current.progress is self:
                handler.setStream(stream)
                if current._partial:
                    self._write(current._partial)
        self._rerouted = []

    def _write(self, text: str) -> None:
        try:
            self.stream.write(text)
            self.stream.flush()
        except (OSError, ValueError):  # a closed or broken stream must not stop the work it reports on
            pass


@contextmanager
def warnings_only_on_terminal(stream: TextIO | None = None, *, enabled: bool = True) -> Iterator[None]:
    """While a bar is drawn on a terminal it says how the work goes: logging handlers that write to that
    terminal show warnings and errors only (above the bar), not every info line. Elsewhere (a log file, a pipe),
    or when not `enabled` (`--verbose`), nothing changes."""
    stream = stream if stream is not None else sys.stderr
    raised: list[tuple[logging.Handler, int]] = []
    if enabled and getattr(stream, "isatty", lambda: False)():
        for handler in logging.getLogger().handlers:
            if (isinstance(handler, logging.StreamHandler) and handler.level < logging.WARNING
                    and _same_stream(handler.stream, stream)):
                raised.append((handler, handler.level))
                handler.setLevel(logging.WARNING)
    try:
        yield
    finally:
        for handler, level in raised:
            handler.setLevel(level)


def _same_stream(a: object, b: object) -> bool:
    if a is b:
        return True
    try:
        return os.path.sameopenfile(a.fileno(), b.fileno())  # type: ignore[attr-defined]
    except (AttributeError, OSError, ValueError):
        return False


class _AboveBar:
    """The stream a logging handler writes to while a bar is drawn: each record goes above the bar."""

    def __init__(self, progress: Progress, stream: TextIO) -> None:
        self.progress = progress
        self.stream = stream
        self._partial = ""  # a line not yet ended: it goes above the bar once it is

    def write(self, text: str) -> int:
        whole, newline, self._partial = (self._partial + text).rpartition("\n")
        if newline:
            self.progress.write_above(whole + newline)
        return len(text)

    def flush(self) -> None:
        pass  # write_above flushes

    def __getattr__(self, name: str) -> object:
        return getattr(self.stream, name)
