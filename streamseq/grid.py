"""Window grids: which window an event time falls in, and when each window starts and ends.

A window is identified by an integer ``wid`` (its window id), counted from the Unix
epoch; window ``wid`` covers event times ``[start_of(wid), end_of(wid))`` and
``end_of(wid) == start_of(wid + 1)``. Every method works on numpy arrays as well as
on single ints.

- ``FixedGrid``: equal windows (``30min``, ``1h``, ``1d`` in UTC), aligned on the epoch;
  ``1w`` is a fixed 7-day grid aligned on Mondays.
- ``CalendarGrid``: calendar windows in a time zone — days (``1d`` with a zone other than
  UTC: 23 or 25 hours across a DST change), weeks from Monday, months, quarters and years
  (``1mo``, ``3mo`` = ``1q``, ``1y``), whose lengths differ.

>>> g = FixedGrid(3600 * 10**9)
>>> int(g.wid_of(np.int64(7200 * 10**9 + 5))), int(g.end_of(2)) // 10**9
(2, 10800)
>>> from streamseq.timeutil import iso
>>> m = parse_interval("1mo")
>>> [iso(int(m.end_of(w))) for w in m.wid_of(np.array([0, 31 * 86400 * 10**9]))]
['1970-02-01T00:00:00Z', '1970-03-01T00:00:00Z']
>>> parse_interval("1q").name, default_season(parse_interval("1q")), default_season(parse_interval("30min"))
('1q', 4, 48)
"""
from __future__ import annotations

import re
from functools import lru_cache

import numpy as np

from .errors import ConfigError
from .timeutil import format_duration, parse_duration

DAY_NS = 86_400 * 10**9
WEEK_NS = 7 * DAY_NS
_MONDAY_NS = 4 * DAY_NS  # 1970-01-01 was a Thursday: the first Monday is 1970-01-05
_CALENDAR = re.compile(r"^\s*(\d+)\s*(mo|q|y)\s*$")


class FixedGrid:
    """Equal windows of ``interval`` ns, aligned on the epoch (plus ``offset`` ns)."""

    calendar = False

    def __init__(self, interval: int, offset: int = 0, name: str | None = None):
        if interval <= 0:
            raise ValueError(f"interval must be positive, got {interval}")
        self.interval = int(interval)
        self.offset = int(offset)
        self.name = name or format_duration(self.interval)
        self.tz = "UTC"

    @property
    def nominal(self) -> int:
        """Length of a window in ns (a calendar grid's average)."""
        return self.interval

    def wid_of(self, ts):
        return np.floor_divide(np.asarray(ts) - self.offset, self.interval)

    def start_of(self, wid):
        return np.asarray(wid) * self.interval + self.offset

    def end_of(self, wid):
        return (np.asarray(wid) + 1) * self.interval + self.offset

    def __repr__(self) -> str:
        return f"FixedGrid({self.name})"


class CalendarGrid:
    """Calendar windows of ``count`` days, weeks (from Monday) or months in a time zone.

    ``unit`` is "D", "W" or "M"; a quarter is 3 months and a year 12. Window ids count
    windows from the epoch in local time (months since 1970-01, days since 1970-01-01).
    """

    calendar = True

    def __init__(self, unit: str, count: int = 1, tz: str = "UTC", name: str | None = None):
        if unit not in ("D", "W", "M") or count < 1:
            raise ValueError(f"calendar unit D, W or M and a positive count, got {count}{unit}")
        self.unit, self.count, self.tz = unit, int(count), tz or "UTC"
        self.name = name or str(count) + {"D": "d", "W": "w", "M": "mo"}[unit]
        self.utc = self.tz.upper() == "UTC"
        if not self.utc:
            _zone(self.tz)  # raises for an unknown zone

    @property
    def nominal(self) -> int:
        days = {"D": 1.0, "W": 7.0, "M": 30.436875}[self.unit] * self.count
        return int(days * DAY_NS)

    # local time <-> UTC ------------------------------------------------------------
    def _to_local(self, ts: np.ndarray) -> np.ndarray:
        return ts if self.utc else ts + _offsets(self.tz, ts)

    def _to_utc(self, local: np.ndarray) -> np.ndarray:
        if self.utc:
            return local
        guess = local - _offsets(self.tz, local)  # the offset at the local instant, then corrected once
        return local - _offsets(self.tz, guess)

    # the grid ---------------------------------------------------------------------
    def wid_of(self, ts):
        local = self._to_local(np.asarray(ts, np.int64))
        if self.unit == "M":
            months = local.astype("datetime64[ns]").astype("datetime64[M]").astype(np.int64)
            return np.floor_divide(months, self.count)
        days = np.floor_divide(local, DAY_NS)
        if self.unit == "W":
            days = days - 4  # weeks from Monday 1970-01-05
            return np.floor_divide(days, 7 * self.count)
        return np.floor_divide(days, self.count)

    def start_of(self, wid):
        wid = np.asarray(wid, np.int64)
        if self.unit == "M":
            local = (wid * self.count).astype("datetime64[M]").astype("datetime64[ns]").astype(np.int64)
        elif self.unit == "W":
            local = (wid * 7 * self.count + 4) * DAY_NS
        else:
            local = wid * self.count * DAY_NS
        return self._to_utc(local)

    def end_of(self, wid):
        return self.start_of(np.asarray(wid) + 1)

    def __repr__(self) -> str:
        return f"CalendarGrid({self.name}, {self.tz})"


@lru_cache(maxsize=32)
def _zone(tz: str):
    from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

    try:
        return ZoneInfo(tz)
    except (ZoneInfoNotFoundError, ValueError) as exc:
        raise ConfigError("windowing.timezone", f"an IANA time zone such as 'Europe/Berlin', got {tz!r}") from exc


def _offsets(tz: str, ts: np.ndarray) -> np.ndarray:
    """UTC offset in ns of zone ``tz`` at each UTC instant ``ts`` (vectorised through polars)."""
    import polars as pl

    ts = np.asarray(ts, np.int64)
    utc = pl.Series(ts.reshape(-1)).cast(pl.Datetime("ns", "UTC"))  # a scalar too (one window's end)
    local = utc.dt.convert_time_zone(tz).dt.replace_time_zone(None).cast(pl.Int64).to_numpy()
    return (local - ts.reshape(-1)).reshape(ts.shape)


def parse_interval(text: str, tz: str = "UTC", name: str = "windowing.interval"):
    """The grid of an interval: durations ('30min', '1h', '1d'), '1w' (from Monday), and calendar
    months, quarters and years ('1mo', '3mo', '1q', '1y'). Days and weeks follow ``tz`` when it is
    not UTC (local midnights); months, quarters and years always do."""
    text = str(text).strip().lower()
    m = _CALENDAR.match(text)
    utc = (tz or "UTC").upper() == "UTC"
    if m:
        n, unit = int(m.group(1)), m.group(2)
        if n < 1:
            raise ConfigError(name, f"a positive interval, got {text!r}")
        months = {"mo": n, "q": 3 * n, "y": 12 * n}[unit]
        return CalendarGrid("M", months, tz, name=text.replace(" ", ""))
    ns = parse_duration(text, name)
    if ns <= 0:
        raise ConfigError(name, f"a positive duration, got {text!r}")
    if ns % WEEK_NS == 0 and text.endswith("w"):
        weeks = ns // WEEK_NS
        return FixedGrid(ns, _MONDAY_NS, name=f"{weeks}w") if utc else CalendarGrid("W", weeks, tz, f"{weeks}w")
    if ns % DAY_NS == 0 and not utc:
        return CalendarGrid("D", ns // DAY_NS, tz, format_duration(ns))
    return FixedGrid(ns)


def default_season(grid) -> int:
    """The usual seasonal period of an interval, in windows: a day of sub-daily windows, a week of days,
    a year of weeks, months or quarters; 1 when none fits."""
    if getattr(grid, "calendar", False) and grid.unit == "M":
        return max(1, 12 // grid.count) if 12 % grid.count == 0 else 1
    nominal = grid.nominal
    if nominal < DAY_NS:
        return DAY_NS // nominal if DAY_NS % nominal == 0 else 1
    if nominal == DAY_NS:
        return 7
    if nominal == WEEK_NS:
        return 52
    return 1


__all__ = ["FixedGrid", "CalendarGrid", "parse_interval", "default_season"]
