"""Window grids: which window an event time falls in, and when each window starts and ends.

A window is identified by an integer ``wid`` counted from the Unix epoch; window
``wid`` covers event times ``[start_of(wid), end_of(wid))`` and ``end_of(wid) ==
start_of(wid + 1)``. A fixed grid cuts time into equal intervals; every method
works on numpy arrays as well as on single ints.

>>> g = FixedGrid(3600 * 10**9)
>>> int(g.wid_of(np.int64(7200 * 10**9 + 5))), int(g.end_of(2)) // 10**9
(2, 10800)
"""
from __future__ import annotations

import numpy as np

from .timeutil import format_duration


class FixedGrid:
    """Equal windows of ``interval`` ns, aligned on the epoch."""

    def __init__(self, interval: int):
        if interval <= 0:
            raise ValueError(f"interval must be positive, got {interval}")
        self.interval = int(interval)
        self.name = format_duration(self.interval)

    def wid_of(self, ts):
        return np.floor_divide(ts, self.interval)

    def start_of(self, wid):
        return wid * self.interval

    def end_of(self, wid):
        return (wid + 1) * self.interval

    def __repr__(self) -> str:
        return f"FixedGrid({self.name})"


__all__ = ["FixedGrid"]
