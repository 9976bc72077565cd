"""A one-line progress display for a running replay, on stderr.

On a terminal the line is rewritten in place (``\\r``) at most a few times a
second; anywhere else (a log file, CI) nothing is printed until ``close()``,
which writes one summary line. Time comes from an injected clock, so tests
drive it by hand.
"""
from __future__ import annotations

import sys
from typing import TextIO

from .clock import SystemClock


def _rate(count: int, seconds: float) -> str:
    if seconds <= 0:
        return "-"
    r = count / seconds
    return f"{r:,.0f}" if r >= 100 else f"{r:,.1f}"


def _eta(seconds: float) -> str:
    seconds = max(0, int(round(seconds)))
    h, rest = divmod(seconds, 3600)
    m, s = divmod(rest, 60)
    return f"{h}:{m:02d}:{s:02d}" if h else f"{m}:{s:02d}"


class Progress:
    """Records/s, windows/s and, when the total is known, percent and ETA.

    ``enabled``: None shows the live line only when ``stream`` is a terminal
    (otherwise just the summary at ``close()``); True forces the live line;
    False prints nothing at all. Rates are averages since construction.

    >>> import io
    >>> from streamseq.clock import ManualClock
    >>> clock, out = ManualClock(), io.StringIO()
    >>> p = Progress(1000, stream=out, clock=clock)
    >>> clock.advance(2.0); p.update(500, 20); out.getvalue()
    ''
    >>> clock.advance(2.0); p.update(990, 40, dead_letters=10, rows=1000); p.close(); print(out.getvalue(), end="")
    records 990 in 0:04 (248/s), windows 40 (10.0/s), dead letters 10

    ``records`` are what the summary calls records (rows that reached the windows, late ones
    included); ``rows`` (records plus the rows the source rejected) give the percentage.
    """

    min_interval = 0.2  # seconds between redraws: at most ~5 a second

    def __init__(
        self,
        total_records: int | None,
        stream: TextIO | None = None,
        clock=None,
        enabled: bool | None = None,
    ):
        self.total_records = total_records
        self.stream = sys.stderr if stream is None else stream
        self.clock = SystemClock() if clock is None else clock
        self.enabled = enabled
        if enabled is None:
            isatty = getattr(self.stream, "isatty", None)
            self._live = bool(isatty and isatty())
        else:
            self._live = enabled
        self._silent = enabled is False
        self._start = self.clock.monotonic()
        self._last_draw: float | None = None
        self._width = 0
        self._records = 0
        self._windows = 0
        self._dead = 0
        self._rows = 0
        self._closed = False

    def __enter__(self) -> Progress:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def update(self, records: int, windows: int, dead_letters: int = 0, rows: int | None = None) -> None:
        """Cumulative counts so far; redraws the line if enough time has passed."""
        self._records, self._windows, self._dead = records, windows, dead_letters
        self._rows = records if rows is None else rows
        if not self._live or self._closed:
            return
        now = self.clock.monotonic()
        if self._last_draw is not None and now - self._last_draw < self.min_interval:
            return
        self._last_draw = now
        self._draw(self.line(now - self._start))

    def line(self, elapsed: float) -> str:
        """The live line for the current counts after ``elapsed`` seconds."""
        parts = [
            f"records {self._records:,} ({_rate(self._records, elapsed)}/s)",
            f"windows {self._windows:,} ({_rate(self._windows, elapsed)}/s)",
        ]
        if self._dead:
            parts.append(f"dead letters {self._dead:,}")
        total = self.total_records
        if total is not None and total > 0:
            done = min(1.0, self._rows / total)
            parts.append(f"{100 * done:5.1f}%")
            if done >= 1.0:
                parts.append("ETA 0:00")
            elif self._rows > 0 and elapsed > 0:
                parts.append(f"ETA {_eta((total - self._rows) * elapsed / self._rows)}")
            else:
                parts.append("ETA -")
        return "  ".join(parts)

    def summary(self, elapsed: float) -> str:
        dead = f", dead letters {self._dead:,}" if self._dead else ""
        return (
            f"records {self._records:,} in {_eta(elapsed)} ({_rate(self._records, elapsed)}/s), "
            f"windows {self._windows:,} ({_rate(self._windows, elapsed)}/s){dead}"
        )

    def close(self) -> None:
        """Final line: the live line ends with a newline, otherwise one summary line."""
        if self._closed:
            return
        self._closed = True
        if self._silent:
            return
        elapsed = self.clock.monotonic() - self._start
        if self._live:
            self._draw(self.line(elapsed))
            self.stream.write("\n")
        else:
            self.stream.write(self.summary(elapsed) + "\n")
        self.stream.flush()

    def _draw(self, text: str) -> None:
        # Pad with spaces so a shorter line fully covers the previous one.
        pad = max(0, self._width - len(text))
        self._width = len(text)
        self.stream.write("\r" + text + " " * pad)
        self.stream.flush()
