"""Injected wall time: nothing in the pipeline calls time.time() or sleep() directly."""
from __future__ import annotations

import time


class SystemClock:
    def now_ns(self) -> int:
        return time.time_ns()

    def monotonic(self) -> float:
        return time.monotonic()

    def sleep(self, seconds: float) -> None:
        if seconds > 0:
            time.sleep(seconds)


class ManualClock:
    """A clock tests move by hand.

    >>> c = ManualClock(5); c.sleep(2); c.now_ns()
    2000000005
    """

    def __init__(self, start_ns: int = 0):
        self._now = start_ns

    def now_ns(self) -> int:
        return self._now

    def monotonic(self) -> float:
        return self._now / 1e9

    def sleep(self, seconds: float) -> None:
        self._now += int(seconds * 1e9)

    def advance(self, seconds: float) -> None:
        self.sleep(seconds)
