"""Durations and event times."""
from __future__ import annotations

import re
from datetime import UTC, datetime

from .errors import ConfigError

_UNITS = {
    "ns": 1,
    "us": 1_000,
    "ms": 1_000_000,
    "s": 1_000_000_000,
    "sec": 1_000_000_000,
    "m": 60 * 1_000_000_000,
    "min": 60 * 1_000_000_000,
    "h": 3600 * 1_000_000_000,
    "d": 86400 * 1_000_000_000,
    "w": 7 * 86400 * 1_000_000_000,
}
_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([a-z]+)\s*$")


def parse_duration(text: str | int, name: str = "duration") -> int:
    """Parse '1h', '30min', '10s', '1d' into nanoseconds.

    >>> parse_duration("1h") == 3600 * 10**9
    True
    >>> parse_duration("30min") // 10**9
    1800
    """
    if isinstance(text, int) and not isinstance(text, bool):
        if not 0 <= text < 2**63:
            raise ConfigError(name, f"a non-negative duration below 2**63 ns, got {text}")
        return text
    m = _DURATION.match(str(text).lower())
    if not m or m.group(2) not in _UNITS:
        raise ConfigError(name, f"a duration such as '1h', '30min', '10s' or '1d', got {text!r}")
    value = float(m.group(1)) * _UNITS[m.group(2)]
    if not value < 2**63:  # times are int64 ns; also catches inf from a very long number
        raise ConfigError(name, f"a duration below 292 years, got {text!r}")
    return int(value)


def format_duration(ns: int) -> str:
    """
    >>> format_duration(3600 * 10**9)
    '1h'
    """
    for unit in ("d", "h", "min", "s", "ms", "us"):
        size = _UNITS[unit]
        if ns % size == 0 and ns >= size:
            return f"{ns // size}{unit}"
    return f"{ns}ns"


def iso(ns: int) -> str:
    """
    >>> iso(0)
    '1970-01-01T00:00:00Z'
    """
    dt = datetime.fromtimestamp(ns // 1_000_000_000, tz=UTC)
    frac = ns % 1_000_000_000
    base = dt.strftime("%Y-%m-%dT%H:%M:%S")
    if frac:
        base += f".{frac:09d}".rstrip("0")
    return base + "Z"
