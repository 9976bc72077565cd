"""What a neural forecaster sees, computed from a key's own windows only.

Calendar position of a window (hour of day, day of week, time of year as
sin/cos pairs) is computed from the window's start time on the stream's grid
(``grid.start_of(wid)``), never from ``wid * interval``, so calendar grids
(months of different lengths) give the right phases. Only the periods that vary
at the stream's interval are used.

>>> calendar_periods(3600 * 10**9, "auto")
('day', 'week')
>>> calendar_periods(86400 * 10**9, "auto"), calendar_periods(86400 * 10**9, "none")
(('week', 'year'), ())
>>> f = calendar_features(np.array([0, 6 * 3600 * 10**9]), ("day",))
>>> np.round(f, 3).tolist()
[[0.0, 1.0], [1.0, 0.0]]
"""
from __future__ import annotations

import numpy as np

DAY_NS = 86_400 * 10**9
WEEK_NS = 7 * DAY_NS
YEAR_NS = int(365.2425 * DAY_NS)
PERIODS = {"day": DAY_NS, "week": WEEK_NS, "year": YEAR_NS}
MAX_WINDOWS_PER_PERIOD = 2000
EPOCH_MONDAY_NS = 4 * DAY_NS  # 1970-01-05 was a Monday: week phase 0 = Monday 00:00 UTC


def calendar_periods(interval_ns: int, mode: str = "auto") -> tuple[str, ...]:
    """The calendar periods a stream's windows vary in: those longer than the interval and at most
    MAX_WINDOWS_PER_PERIOD intervals long (an hourly stream's time of year moves too slowly within the
    windows a network looks at to pay for its inputs; the local level follows it).

    ``mode``: "auto", "none", or a comma list among day, week, year."""
    mode = (mode or "none").strip()
    if mode == "none":
        return ()
    if mode == "auto":
        return tuple(p for p in ("day", "week", "year")
                     if interval_ns < PERIODS[p] <= MAX_WINDOWS_PER_PERIOD * interval_ns)
    names = tuple(p.strip() for p in mode.split(",") if p.strip())
    unknown = [p for p in names if p not in PERIODS]
    if unknown:
        raise ValueError(f"calendar periods must be among day, week, year; got {unknown}")
    return names


def calendar_features(times_ns: np.ndarray, periods: tuple[str, ...]) -> np.ndarray:
    """(..., 2 × len(periods)) float32: sin, cos of each period's phase at these times (ns)."""
    t = np.asarray(times_ns, np.int64)
    out = np.empty(t.shape + (2 * len(periods),), np.float32)
    for i, p in enumerate(periods):
        P = PERIODS[p]
        phase = np.mod(t - (EPOCH_MONDAY_NS if p == "week" else 0), P).astype(np.float64) * (2 * np.pi / P)
        out[..., 2 * i] = np.sin(phase)
        out[..., 2 * i + 1] = np.cos(phase)
    return out


def seasonal_lags(horizon: int, season: int) -> np.ndarray:
    """(H,) lag of the seasonal-naive forecast of step j: the same phase in the last season seen.

    >>> seasonal_lags(5, 2).tolist()
    [2, 2, 4, 4, 6]
    """
    j = np.arange(1, horizon + 1)
    return season * ((j + season - 1) // season)


__all__ = ["calendar_periods", "calendar_features", "seasonal_lags", "PERIODS"]
