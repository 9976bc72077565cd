"""The published forecast message, ``streamseq.forecast/v1`` (pure: no Kafka here).

One JSON object per (key, model, origin), documented by the JSON Schema at
``SCHEMA_PATH``; any Kafka client in any language can read it::

    {"schema": "streamseq.forecast/v1", "id": "s1|2024-01-01T01:00:00Z|gru|3",
     "key": "s1", "origin": "2024-01-01T01:00:00Z", "interval": "1h",
     "model": "gru", "model_version": "3", "horizon": 2,
     "steps": [{"step": 1, "target_ts": "2024-01-01T02:00:00Z", "mean": 1.5, "lo": null, "hi": null}, ...],
     "produced_at": "2024-01-01T01:00:05Z"}

Encoding is deterministic (same batch, same bytes), so copies of one forecast
are byte-identical and share their ``id``.

>>> import numpy as np
>>> from streamseq.records import ForecastBatch
>>> b = ForecastBatch("naive", "1", 3600 * 10**9, "1h", np.array([7200, 10800]) * 10**9,
...                   np.array(["s1"], dtype=object), np.array([[1.0, 2.0]]), np.array([[0.5, 1.0]]),
...                   np.array([[1.5, 3.0]]))
>>> [(k, f.id, f.steps[1].target_ts // 10**9) for k, v in encode_forecasts(b) for f in [decode_forecast(v)]]
[(b's1', 's1|1970-01-01T01:00:00Z|naive|1', 10800)]
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import NamedTuple

import numpy as np
import orjson
import polars as pl

from .errors import StreamseqError
from .records import FORECAST_SCHEMA, NS_PER_S, ForecastBatch
from .timeutil import iso, parse_duration

SCHEMA_PATH = Path(__file__).parent / "schemas" / "forecast.v1.json"


class ForecastDecodeError(StreamseqError, ValueError):
    """A message on the forecast topic is not a valid streamseq.forecast/v1 object."""


class ForecastStep(NamedTuple):
    step: int  # 1-based
    target_ts: int  # ns
    mean: float | None
    lo: float | None
    hi: float | None


@dataclass(frozen=True)
class Forecast:
    """One decoded forecast message; times in int ns since the epoch (UTC)."""

    id: str
    key: str
    origin: int
    interval: str  # "1h", "1mo", ...: the window grid; each step carries its own target_ts
    model: str
    model_version: str
    steps: tuple[ForecastStep, ...]
    produced_at: int

    @property
    def horizon(self) -> int:
        return len(self.steps)

    @property
    def interval_ns(self) -> int | None:
        """The window length in ns, or None for calendar windows (months, quarters, years)."""
        try:
            return parse_duration(self.interval, "interval")
        except StreamseqError:
            return None


def load_schema() -> dict:
    """The JSON Schema (draft 2020-12) of a forecast message."""
    return orjson.loads(SCHEMA_PATH.read_bytes())


def forecast_id(key: str, origin_iso: str, model: str, model_version: str) -> str:
    return f"{key}|{origin_iso}|{model}|{model_version}"


def encode_forecasts(batch: ForecastBatch) -> list[tuple[bytes, bytes]]:
    """(message key, JSON value) per row of the batch; message key = series key, UTF-8.

    The bytes are those of ``orjson.dumps`` of the message object (field order as in
    the module docstring; non-finite numbers as ``null``), built without a Python
    object per step: the batch's fixed parts are formatted once into a template,
    and all of its numbers are formatted by one ``orjson`` call over the
    ``(n, H, 3)`` array. ``tests/test_forecast_json.py`` holds the per-object
    reference encoder this must match byte for byte.
    """
    n, horizon = batch.mean.shape
    if n == 0:
        return []
    numbers = np.full((n, horizon, 3), np.nan)
    numbers[:, :, 0] = batch.mean
    if batch.lo is not None:
        numbers[:, :, 1] = batch.lo
    if batch.hi is not None:
        numbers[:, :, 2] = batch.hi
    # One C call formats every number (NaN/inf -> null); brackets out, one token per number.
    tokens = (orjson.dumps(numbers, option=orjson.OPT_SERIALIZE_NUMPY)
              .replace(b"[", b"").replace(b"]", b"").split(b","))
    per = 3 * horizon
    template = _template(batch, horizon)
    origin, model, version = iso(batch.origin), str(batch.model), str(batch.model_version)
    out = []
    for i in range(n):
        key = str(batch.keys[i])
        fid = forecast_id(key, origin, model, version)
        out.append((key.encode("utf-8"),
                    template % (orjson.dumps(fid), orjson.dumps(key), *tokens[i * per:(i + 1) * per])))
    return out


def _template(batch: ForecastBatch, horizon: int) -> bytes:
    """The message with %s for the id, the key and the 3H numbers (every other byte %-escaped)."""
    def lit(value) -> str:
        return orjson.dumps(value).decode("utf-8").replace("%", "%%")

    steps = ",".join(
        '{"step":%d,"target_ts":%s,"mean":%%s,"lo":%%s,"hi":%%s}'
        % (j, lit(iso(int(batch.targets[j - 1])))) for j in range(1, horizon + 1)
    )
    text = ('{"schema":' + lit(FORECAST_SCHEMA) + ',"id":%s,"key":%s,"origin":' + lit(iso(batch.origin))
            + ',"interval":' + lit(str(batch.interval)) + ',"model":' + lit(str(batch.model))
            + ',"model_version":' + lit(str(batch.model_version)) + ',"horizon":' + str(horizon)
            + ',"steps":[' + steps + '],"produced_at":' + lit(iso(batch.produced_at)) + "}")
    return text.encode("utf-8")


_RFC3339 = re.compile(
    r"(\d{4})-(\d{2})-(\d{2})[Tt ](\d{2}):(\d{2}):(\d{2})(?:\.(\d{1,9}))?(Z|z|[+-]\d{2}:\d{2})"
)


def parse_rfc3339_ns(text: str) -> int:
    """RFC 3339 date-time -> int ns since the epoch, keeping all 9 fractional digits.

    >>> parse_rfc3339_ns("1970-01-01T00:00:01.000000002Z")
    1000000002
    >>> parse_rfc3339_ns("1970-01-01T02:00:00+02:00")
    0
    """
    m = _RFC3339.fullmatch(text) if isinstance(text, str) else None
    if m is None:
        raise ForecastDecodeError(f"not an RFC 3339 date-time: {text!r}")
    year, month, day, hour, minute, second = (int(g) for g in m.groups()[:6])
    try:
        seconds = int(datetime(year, month, day, hour, minute, second, tzinfo=UTC).timestamp())
    except ValueError as e:
        raise ForecastDecodeError(f"not an RFC 3339 date-time: {text!r} ({e})") from None
    frac = int((m.group(7) or "").ljust(9, "0"))
    tz = m.group(8)
    offset_s = 0
    if tz not in ("Z", "z"):
        sign = 1 if tz[0] == "+" else -1
        offset_s = sign * (int(tz[1:3]) * 3600 + int(tz[4:6]) * 60)
    return (seconds - offset_s) * NS_PER_S + frac


def _number_or_none(x, where: str) -> float | None:
    if x is None:
        return None
    if type(x) not in (int, float):
        raise ForecastDecodeError(f"{where}: expected a number or null, got {x!r}")
    return float(x)


_INTERVAL = re.compile(r"^[0-9]+(ns|us|ms|s|min|h|d|w|mo|q|y)$")


def _interval(text) -> str:
    if not isinstance(text, str) or not _INTERVAL.match(text):
        raise ForecastDecodeError(f"interval: expected e.g. '1h', '15min' or '1mo', got {text!r}")
    return text


def decode_forecast(value: bytes) -> Forecast:
    """Parse one message value; raises ForecastDecodeError if it is not a v1 forecast."""
    try:
        d = orjson.loads(value)
    except orjson.JSONDecodeError as e:
        raise ForecastDecodeError(f"not JSON: {e}") from None
    if not isinstance(d, dict):
        raise ForecastDecodeError(f"expected a JSON object, got {type(d).__name__}")
    if d.get("schema") != FORECAST_SCHEMA:
        raise ForecastDecodeError(f"schema: expected {FORECAST_SCHEMA!r}, got {d.get('schema')!r}")
    try:
        origin = parse_rfc3339_ns(d["origin"])
        steps = tuple(
            ForecastStep(
                int(s["step"]),
                parse_rfc3339_ns(s["target_ts"]),
                _number_or_none(s["mean"], f"steps[{j}].mean"),
                _number_or_none(s["lo"], f"steps[{j}].lo"),
                _number_or_none(s["hi"], f"steps[{j}].hi"),
            )
            for j, s in enumerate(d["steps"])
        )
        forecast = Forecast(
            id=str(d["id"]),
            key=str(d["key"]),
            origin=origin,
            interval=_interval(d["interval"]),
            model=str(d["model"]),
            model_version=str(d["model_version"]),
            steps=steps,
            produced_at=parse_rfc3339_ns(d["produced_at"]),
        )
    except ForecastDecodeError:
        raise
    except (KeyError, TypeError, ValueError, StreamseqError) as e:
        raise ForecastDecodeError(f"malformed forecast: {type(e).__name__}: {e}") from None
    if d.get("horizon") != len(steps):
        raise ForecastDecodeError(f"horizon {d.get('horizon')!r} != number of steps {len(steps)}")
    return forecast


_FRAME_SCHEMA = {
    "key": pl.String,
    "model": pl.String,
    "model_version": pl.String,
    "origin": pl.Int64,
    "step": pl.Int32,
    "target_ts": pl.Int64,
    "mean": pl.Float64,
    "lo": pl.Float64,
    "hi": pl.Float64,
    "produced_at": pl.Int64,
}
_TIME_COLUMNS = ("origin", "target_ts", "produced_at")


def forecasts_to_frame(forecasts: list[Forecast]) -> pl.DataFrame:
    """Long form, one row per (forecast, step); times as Datetime(ns, UTC)."""
    cols: dict[str, list] = {name: [] for name in _FRAME_SCHEMA}
    for f in forecasts:
        h = len(f.steps)
        cols["key"] += [f.key] * h
        cols["model"] += [f.model] * h
        cols["model_version"] += [f.model_version] * h
        cols["origin"] += [f.origin] * h
        cols["produced_at"] += [f.produced_at] * h
        for s in f.steps:
            cols["step"].append(s.step)
            cols["target_ts"].append(s.target_ts)
            cols["mean"].append(s.mean)
            cols["lo"].append(s.lo)
            cols["hi"].append(s.hi)
    frame = pl.DataFrame(cols, schema=_FRAME_SCHEMA)
    return frame.with_columns(
        pl.col(c).cast(pl.Datetime("ns", "UTC")) for c in _TIME_COLUMNS
    )
