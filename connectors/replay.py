"""File replay: CSV, Parquet and JSON-lines files streamed as one event-time ordered source.

Each file is read lazily in chunks (polars ``scan_*`` + ``collect_batches``), so a
file larger than memory streams. Rows of one file keep their file order (late
records are data the windowing must see); several files are merged by event
time with a vectorised k-way merge.

The merge order is a total order that does not depend on chunk sizes: rows are
ordered by ``(pm, file index, row)``, where ``pm`` is the running maximum of the
event times seen so far in the row's file. For files already in time order
``pm`` is the event time itself, so this is the ordinary merge; a late row stays
right behind the row it followed in its file. Because ``pm`` never decreases
within a file, a buffered row can be released once every other open file has
read past it; and the snapshot (rows emitted per file, plus each file's running
maximum) is all a rebuilt partition needs to continue without gap or duplicate.

Bad rows (missing key, missing or unparsable time, missing, non-numeric or
non-finite value; for JSON lines also undecodable lines) become dead letters
with the file and row, in stream order. CSV cells are read as text and JSON
lines as raw lines, so a bad cell or line never fails the read. With a
``speed``, pacing starts at the first record a partition returns (after a
resume, at the first record after the snapshot).
"""
from __future__ import annotations

import math
import os
from dataclasses import dataclass
from datetime import UTC, datetime

import numpy as np
import orjson
import polars as pl

from streamseq.clock import SystemClock
from streamseq.errors import ConfigError, InputError
from streamseq.ports import Source, SourcePartition
from streamseq.records import MAX_ABS_VALUE, DeadLetter, ObservationBatch, key_fault

_FORMATS = (
    (".csv.gz", "csv"),
    (".csv", "csv"),
    (".parquet", "parquet"),
    (".pq", "parquet"),
    (".jsonl", "ndjson"),
    (".ndjson", "ndjson"),
)
_UNIT_NS = {"s": 1_000_000_000, "ms": 1_000_000, "us": 1_000, "ns": 1}
_NO_TS = np.iinfo(np.int64).min  # "no event time": sorts before every real time
_MAX_TS = np.iinfo(np.int64).max
_ROW = "__streamseq_row"  # row number in the file, on the frame of a file replayed sorted
_ISO_SECONDS = "%Y-%m-%dT%H:%M:%S"
_FALLBACK_FORMATS = ("%Y-%m-%d %H:%M:%S%.f%#z", "%Y-%m-%d %H:%M:%S%.f", "%Y-%m-%d %H:%M", "%Y-%m-%d")
# Row kinds in the merge buffer.
_GOOD, _DEAD, _SKIP, _BROKEN = 0, 1, 2, 3
_VALUE_FAULTS = {1: "missing value in {!r}", 2: "non-numeric value in {!r}", 3: "non-finite value in {!r}",
                 4: "value out of range in {!r} (|value| > %g)" % MAX_ABS_VALUE}


def _format_of(path: str) -> str | None:
    name = path.lower()
    return next((fmt for suffix, fmt in _FORMATS if name.endswith(suffix)), None)


def _scan(path: str, fmt: str, separator: str = ",") -> pl.LazyFrame:
    """The file as polars sees it: CSV as text (bad cells never fail the read), JSON lines as one text column."""
    if fmt == "csv":
        return pl.scan_csv(
            path, infer_schema=False, truncate_ragged_lines=True, encoding="utf8-lossy", raise_if_empty=False,
            separator=separator,
        )
    if fmt == "parquet":
        return pl.scan_parquet(path)
    # One row per physical line, decoded per chunk: one bad line is one dead letter, not a failed file.
    return pl.scan_csv(
        path, has_header=False, separator="\x1f", quote_char=None, schema={"line": pl.String},
        truncate_ragged_lines=True, encoding="utf8-lossy", raise_if_empty=False,
    )


def _jsonl_columns(path: str, sample: int = 100) -> list[str] | None:
    """Field names of the first JSON objects in a JSON-lines file; None when it has none."""
    names: dict[str, None] = {}
    seen = 0
    with open(path, "rb") as f:
        for line in f:
            if seen >= sample:
                break
            try:
                obj = orjson.loads(line)
            except orjson.JSONDecodeError:
                continue
            if isinstance(obj, dict):
                names.update(dict.fromkeys(obj))
                seen += 1
    return list(names) if seen else None


def _decode_json_lines(lines: pl.Series, dtype: pl.Struct) -> tuple[pl.DataFrame, dict[int, str]]:
    """The fields of each line as text, and why each line polars cannot decode was rejected.

    Chunks decode in one vectorised call; a chunk with bad lines is bisected
    until the bad lines are alone, so the cost is per bad line, not per line.
    """
    try:
        out = lines.str.json_decode(dtype).struct.unnest()
        # polars parses the lines as one array: a quote left open in one line swallows the next
        if out.height == len(lines):
            return out, {}
    except pl.exceptions.PolarsError:
        pass
    if len(lines) == 1:
        return pl.Series([None], dtype=dtype).struct.unnest(), {0: _json_fault(lines[0], dtype.to_schema())}
    mid = len(lines) // 2
    head, head_faults = _decode_json_lines(lines[:mid], dtype)
    tail, tail_faults = _decode_json_lines(lines[mid:], dtype)
    return pl.concat([head, tail]), {**head_faults, **{i + mid: r for i, r in tail_faults.items()}}


def _json_fault(line: str, fields) -> str:
    try:
        obj = orjson.loads(line)
    except orjson.JSONDecodeError:
        return "invalid JSON"
    if not isinstance(obj, dict):
        return "not a JSON object"
    nested = next((name for name in fields if isinstance(obj.get(name), (list, dict))), None)
    return f"nested value in {nested!r}" if nested else "invalid JSON"


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return text[0] if text else type(exc).__name__


def _parse_bound(text: str | None, name: str) -> int | None:
    """ISO time to ns UTC (naive = UTC)."""
    if text is None:
        return None
    try:
        dt = datetime.fromisoformat(str(text).strip().replace("Z", "+00:00"))
    except ValueError:
        raise ConfigError(name, f"an ISO time such as '2024-01-31' or '2024-01-31T12:00:00Z', got {text!r}") from None
    if dt.tzinfo is None:
        dt = dt.replace(tzinfo=UTC)
    delta = dt - datetime(1970, 1, 1, tzinfo=UTC)
    return (delta.days * 86_400 + delta.seconds) * 1_000_000_000 + delta.microseconds * 1_000


def _epoch_ns(e: pl.Expr, unit_ns: int, is_float: bool) -> pl.Expr:
    """Numeric epoch in ``unit_ns`` to Int64 ns; null when non-finite or out of range."""
    limit = _MAX_TS // unit_ns
    if not is_float:
        e = e.cast(pl.Int64, strict=False)
        return pl.when(e.abs() <= limit).then(e * unit_ns)
    whole = e.floor()
    ns = whole.cast(pl.Int64) * unit_ns + ((e - whole) * unit_ns).round().cast(pl.Int64)
    return pl.when(e.is_finite() & (e.abs() <= limit)).then(ns)


def _iso_ns(text: pl.Series) -> pl.Series:
    """ISO-ish text ('2024-01-31T12:00:00.5Z', '2024-01-31 12:00:00') to Int64 ns; null when not of that shape.

    Seconds go through polars' fast fixed-width parser; a fraction of up to 9
    digits is added as integer ns (chrono's ``%.f`` is several times slower).
    """
    head = text.str.slice(0, 19)
    whole = head.str.to_datetime(_ISO_SECONDS, strict=False, time_unit="ns", cache=False)
    if whole.null_count() > text.null_count():
        spaced = head.str.to_datetime(_ISO_SECONDS.replace("T", " "), strict=False, time_unit="ns", cache=False)
        whole = whole.fill_null(spaced)
    whole = whole.to_physical()
    tail = text.str.slice(19).str.strip_suffix("Z")
    n = tail.str.len_bytes()
    if not n.fill_null(0).max():
        return whole
    frac = tail.str.slice(1).cast(pl.Int64, strict=False) * 10 ** (10 - n.clip(2, 10).cast(pl.Int64))
    fraction_ok = tail.str.contains(r"^\.\d{1,9}$")
    return pl.select(pl.when(n == 0).then(whole).when(fraction_ok).then(whole + frac)).to_series()


def _fallback_ns(raw: pl.Series, unit_ns: int) -> np.ndarray:
    """Times the ISO parse missed: numeric epochs, UTC offsets, minutes only, dates."""
    text = pl.col("t").str.strip_chars()
    norm = text.str.replace("T", " ", literal=True, n=1)
    attempts = [_epoch_ns(text.cast(pl.Float64, strict=False), unit_ns, is_float=True)]
    attempts += [norm.str.to_datetime(f, strict=False, time_unit="ns").to_physical() for f in _FALLBACK_FORMATS]
    out = pl.DataFrame({"t": raw}).select(pl.coalesce(attempts).fill_null(_NO_TS))
    return out.to_series().to_numpy()


_DATE_PARTS = [sep.join(order) for sep in "/-." for order in (("%d", "%m", "%Y"), ("%m", "%d", "%Y"), ("%Y", "%m", "%d"))]
_CLOCK_PARTS = ["", " %H:%M", " %H:%M:%S", " %H:%M:%S%.f", " %I:%M %p", " %I:%M:%S %p", "T%H:%M", "T%H:%M:%S"]
_NUMBER = r"^[+-]?\d+(\.\d*)?$"
# Epoch seconds of 1990-01-01 and 2100-01-01: a number whose unit puts it in this span is an epoch in that unit.
_PLAUSIBLE_S = (631_152_000, 4_102_444_800)


def time_hint(examples: list[str], time_unit: str = "s") -> str:
    """What to set so that times like ``examples`` parse: a --time-format or a --time-unit, or ''.

    >>> time_hint(["04/10/2016 07:59", "13/10/2016 08:29"])
    "they look like day/month/year: give --time-format '%d/%m/%Y %H:%M'"
    >>> time_hint(["10/24/2016 07:59 AM"])
    "they look like month/day/year: give --time-format '%m/%d/%Y %I:%M %p'"
    >>> time_hint(["10/04/2016 07:59"])
    "they read as day/month or month/day: give --time-format '%d/%m/%Y %H:%M' or '%m/%d/%Y %H:%M'"
    >>> time_hint(["1475567982000", "1475569782000"])
    'they look like epoch milliseconds: give --time-unit ms'
    """
    sample = pl.Series([str(e).strip() for e in examples if e is not None], dtype=pl.String)
    if len(sample) == 0:
        return ""
    if sample.str.contains(_NUMBER).all():
        seconds = float(sample.cast(pl.Float64).median())
        for unit, name in (("s", "seconds"), ("ms", "milliseconds"), ("us", "microseconds"), ("ns", "nanoseconds")):
            if unit != time_unit and _PLAUSIBLE_S[0] <= seconds * _UNIT_NS[unit] / 1e9 <= _PLAUSIBLE_S[1]:
                return f"they look like epoch {name}: give --time-unit {unit}"
        return ""
    best: list[str] = []
    best_share = 0.5  # a format must read most examples
    for fmt in (d + c for d in _DATE_PARTS for c in _CLOCK_PARTS):
        share = 1.0 - sample.str.to_datetime(fmt, strict=False).null_count() / len(sample)
        if share > best_share + 1e-9:
            best, best_share = [fmt], share
        elif share >= best_share - 1e-9 and best:
            best.append(fmt)
    if not best:
        return ""
    if len(best) > 1:  # every day <= 12: day/month and month/day both read them
        return f"they read as day/month or month/day: give --time-format {best[0]!r} or {best[1]!r}"
    order = {"%d": "day/month/year", "%m": "month/day/year", "%Y": "year/month/day"}[best[0][:2]]
    return f"they look like {order}: give --time-format {best[0]!r}"


def _jsonable(v):
    if isinstance(v, float) and not math.isfinite(v):
        return str(v)
    return v


def _payload(names: list[str], row: tuple) -> str:
    return orjson.dumps({n: _jsonable(v) for n, v in zip(names, row)}, default=str).decode()


def _short(v) -> str:
    text = repr(v) if isinstance(v, str) else str(v)
    return text if len(text) <= 60 else text[:57] + "..."


class _KeyTable:
    """Series keys to Python strings, one shared str object per distinct key.

    A private polars ``Categories`` turns a chunk's keys into integer codes; the
    strings are fetched once per new key, so a chunk costs one cast and one
    numpy take, and equal keys are the same object (their hash is cached).
    """

    def __init__(self) -> None:
        self._cats = pl.Categories.random() if hasattr(pl, "Categories") else None
        self._names = np.empty(0, dtype=object)
        self._fault = np.empty(0, dtype=object)  # per distinct key: why it can't be used (records.key_fault), or None

    def expr(self, key: pl.Expr) -> pl.Expr:
        key = key.cast(pl.String)
        if self._cats is None:
            return key
        return key.cast(pl.Categorical(self._cats)).to_physical()

    def lookup(self, coded: pl.Series) -> tuple[np.ndarray, np.ndarray]:
        """(keys, fault) for a column produced by ``expr``: fault is the reason a key can't be used, or None."""
        if self._cats is None:
            keys = coded.to_numpy().astype(object)
            return keys, np.array([_key_reason(k) for k in keys.tolist()], dtype=object)
        null = coded.is_null().to_numpy()
        codes = coded.fill_null(0).to_numpy().astype(np.int64)
        if len(codes) and codes.max() >= len(self._names):
            new = self._cats.to_series()[len(self._names):].to_numpy().astype(object)
            self._names = np.concatenate([self._names, new])
            fault = np.array([_key_reason(k) for k in new.tolist()], dtype=object)
            self._fault = np.concatenate([self._fault, fault])
        if not len(self._names):
            return np.full(len(codes), None, dtype=object), np.full(len(codes), "missing key", dtype=object)
        fault = self._fault[codes]
        if null.any():
            fault = fault.copy()
            fault[null] = "missing key"
        return self._names[codes], fault


def _key_reason(key) -> str | None:
    fault = key_fault(key)
    return None if fault is None else fault[1]


@dataclass
class _Rows:
    """Decoded rows of one file waiting in the merge, in file order."""

    keys: np.ndarray  # (n,) object
    ts: np.ndarray  # (n,) int64 ns, _NO_TS when missing or unparsable
    values: np.ndarray  # (n, F) float64
    offset: np.ndarray  # (n,) int64 row number in the file
    pm: np.ndarray  # (n,) int64 running max of good event times: the merge key
    kind: np.ndarray  # (n,) int8 _GOOD/_DEAD/_SKIP/_BROKEN

    def __len__(self) -> int:
        return len(self.ts)

    def slice(self, lo: int, hi: int | None = None) -> _Rows:
        s = slice(lo, hi)
        return _Rows(self.keys[s], self.ts[s], self.values[s], self.offset[s], self.pm[s], self.kind[s])

    def take(self, idx: np.ndarray) -> _Rows:
        return _Rows(self.keys[idx], self.ts[idx], self.values[idx], self.offset[idx], self.pm[idx], self.kind[idx])

    @staticmethod
    def concat(parts: list[_Rows]) -> _Rows:
        if len(parts) == 1:
            return parts[0]
        fields = ("keys", "ts", "values", "offset", "pm", "kind")
        return _Rows(*(np.concatenate([getattr(p, f) for p in parts]) for f in fields))


class _Decoder:
    """Vectorised decode and validation of one file's chunks into merge rows and dead letters."""

    def __init__(self, source: ReplaySource, path: str, index: int, fmt: str, schema, keys: _KeyTable):
        self._path, self._index, self._keys = path, index, keys
        cols = [source.key_col, source.time_col, *source.value_cols]
        self._names = cols
        self._value_cols = source.value_cols
        self._n_values = len(source.value_cols)
        self._unit_ns = _UNIT_NS[source.time_unit]
        self._start, self._end = source._start_ns, source._end_ns
        self._json = pl.Struct({c: pl.String for c in dict.fromkeys(cols)}) if fmt == "ndjson" else None
        if fmt != "parquet":
            schema = {c: pl.String for c in cols}
        self._select = [
            pl.col(source.key_col).alias("k"),
            pl.col(source.time_col).alias("t"),
            *[pl.col(c).alias(f"v{j}") for j, c in enumerate(source.value_cols)],
        ]
        t_dtype = schema[source.time_col]
        self._auto_time = t_dtype == pl.String and source.time_format is None
        t = pl.col("t")
        if t_dtype == pl.String:
            text = t.str.strip_chars()
            t_missing = text.is_null() | (text == "")
            ts = pl.lit(_NO_TS) if self._auto_time else (
                text.str.to_datetime(source.time_format, strict=False, time_unit="ns", cache=False).to_physical()
            )
        elif isinstance(t_dtype, pl.Datetime):
            ts, t_missing = t.dt.cast_time_unit("ns").to_physical(), t.is_null()
        elif t_dtype == pl.Date:
            ts, t_missing = t.cast(pl.Datetime("ns")).to_physical(), t.is_null()
        else:
            ts, t_missing = _epoch_ns(t, self._unit_ns, is_float=t_dtype.is_float()), t.is_null()
        self._time_exprs = [ts.fill_null(_NO_TS).alias("t"), t_missing.alias("tm")]
        self._time_col = source.time_col
        self.outside = 0  # rows read but outside [start, end)
        self.first_ts, self.last_ts = _MAX_TS, _NO_TS  # span of the parsable event times read
        exprs = [keys.expr(pl.col("k")).alias("k"), *self._time_exprs]
        for i, col in enumerate(source.value_cols):
            v = pl.col(f"v{i}")
            if schema[col] == pl.String:
                text = v.str.strip_chars()
                num = text.cast(pl.Float64, strict=False)
                fault = (
                    pl.when(text.is_null() | (text == "")).then(1).when(num.is_null()).then(2)
                    .when(~num.is_finite()).then(3).when(num.abs() > MAX_ABS_VALUE).then(4).otherwise(0)
                )
            else:
                num = v.cast(pl.Float64, strict=False)
                fault = (pl.when(num.is_null()).then(1).when(~num.is_finite()).then(3)
                         .when(num.abs() > MAX_ABS_VALUE).then(4).otherwise(0))
            exprs += [num.fill_null(math.nan).alias(f"v{i}"), fault.cast(pl.Int8).alias(f"f{i}")]
        self._exprs = exprs

    def decode(self, chunk: pl.DataFrame, first_row: int, carried_max: int) -> tuple[_Rows, dict[int, DeadLetter]]:
        n = chunk.height
        line_faults: dict[int, str] = {}
        blank = None
        if self._json is not None:
            lines = chunk["line"]
            fields, line_faults = _decode_json_lines(lines, self._json)
            raw = fields.select(self._select)
            blank = (lines.is_null() | (lines.str.strip_chars() == "")).to_numpy()
        else:
            raw = chunk.select(self._select)
        out = raw.lazy().select(self._exprs).collect()  # lazy: shared subexpressions computed once
        keys, key_fault_ = self._keys.lookup(out["k"])
        key_missing = key_fault_.astype(bool)  # None -> False, a reason -> True
        t_missing = out["tm"].to_numpy()
        ts = self._parse_times(raw["t"], out["t"], t_missing)
        values = out.select([f"v{i}" for i in range(self._n_values)]).to_numpy(order="c", writable=True)
        faults = out.select([f"f{i}" for i in range(self._n_values)]).to_numpy()  # (n, F) int8
        bad = key_missing | (ts == _NO_TS) | faults.any(axis=1)
        kind = np.where(bad, _DEAD, _GOOD).astype(np.int8)
        parsed = ts[ts != _NO_TS]
        if len(parsed):
            self.first_ts, self.last_ts = min(self.first_ts, int(parsed.min())), max(self.last_ts, int(parsed.max()))
        if self._start is not None or self._end is not None:
            outside = np.zeros(n, dtype=bool)
            if self._start is not None:
                outside |= ts < self._start
            if self._end is not None:
                outside |= ts >= self._end
            outside &= ts != _NO_TS
            kind[outside] = _SKIP
            self.outside += int(outside.sum())
        if blank is not None:
            kind[blank] = _SKIP  # an empty line is no record
        if line_faults:
            kind[list(line_faults)] = _DEAD
        good = kind == _GOOD
        pm = np.maximum.accumulate(np.where(good, ts, _NO_TS) if not good.all() else ts) if n else ts
        pm = np.maximum(pm, carried_max)
        # A file replayed sorted carries each row's number in the file: dead letters name the row as written.
        offset = (chunk[_ROW].to_numpy().astype(np.int64) if _ROW in chunk.columns
                  else np.arange(first_row, first_row + n, dtype=np.int64))
        letters: dict[int, DeadLetter] = {}
        for i in np.flatnonzero(kind == _DEAD).tolist():
            row = raw.row(i)
            if self._json is not None:
                payload = chunk["line"][i]
            else:
                payload = _payload(self._names, row)
            reason = line_faults.get(i) or self._reason(
                key_fault_[i], int(ts[i]), bool(t_missing[i]), faults[i], row[1]
            )
            letters[int(offset[i])] = DeadLetter(
                reason=reason,
                source=self._path,
                partition=self._index,
                offset=int(offset[i]),
                payload=payload,
                key=None if key_missing[i] or i in line_faults else keys[i],
            )
        return _Rows(keys, ts, values, offset, pm, kind), letters

    def _parse_times(self, raw_t: pl.Series, t: pl.Series, t_missing: np.ndarray) -> np.ndarray:
        """Event times in ns (``_NO_TS`` where missing or unparsable), writable: batches are the caller's."""
        if not self._auto_time:
            return t.to_numpy(writable=True)
        ts = _iso_ns(raw_t).fill_null(_NO_TS).to_numpy(writable=True)
        retry = np.flatnonzero((ts == _NO_TS) & ~t_missing)
        if len(retry):
            ts[retry] = _fallback_ns(raw_t.gather(retry), self._unit_ns)
        return ts

    def event_times(self, chunk: pl.DataFrame) -> tuple[np.ndarray, np.ndarray, pl.Series]:
        """(event times in ns, missing mask, the raw time column) of a chunk, without decoding the rest."""
        if self._json is not None:
            fields, _ = _decode_json_lines(chunk["line"], self._json)
            raw = fields.select(pl.col(self._time_col).alias("t"))
        else:
            raw = chunk.select(pl.col(self._time_col).alias("t"))
        out = raw.lazy().select(self._time_exprs).collect()
        t_missing = out["tm"].to_numpy()
        return self._parse_times(raw["t"], out["t"], t_missing), t_missing, raw["t"]

    def _reason(self, key_fault: str | None, ts: int, t_missing: bool, faults: np.ndarray, raw_time) -> str:
        if key_fault is not None:
            return key_fault
        if ts == _NO_TS:
            return "missing time" if t_missing else f"unparsable time {_short(raw_time)}"
        j = int(np.flatnonzero(faults)[0])
        return _VALUE_FAULTS[int(faults[j])].format(self._value_cols[j])


class _FileCursor:
    """One file's reader, its merge buffer and its position."""

    def __init__(self, index: int, path: str, lf: pl.LazyFrame, decoder: _Decoder, n_values: int,
                 read_rows: int, rows: int, max_ts: int, closed: bool):
        self.index, self.path = index, path
        self._lf, self._decoder, self._read_rows = lf, decoder, read_rows
        self._it = None
        self.read_pos = rows  # next row to read
        self.max_ts = max_ts  # running max of good event times read: a bound on every future row's merge key
        self.reading_done = closed
        self.emitted_rows, self.emitted_max, self.closed = rows, max_ts, closed
        self.buf = _Rows(
            np.empty(0, object), np.empty(0, np.int64), np.empty((0, n_values)), np.empty(0, np.int64),
            np.empty(0, np.int64), np.empty(0, np.int8),
        )
        self.letters: dict[int, DeadLetter] = {}

    def read(self) -> None:
        if self._it is None:
            lf = self._lf.slice(self.read_pos) if self.read_pos else self._lf
            self._it = iter(lf.collect_batches(chunk_size=self._read_rows, maintain_order=True, lazy=True))
        try:
            raw = next(self._it)
        except StopIteration:
            self._finish()
            return
        except Exception as exc:  # noqa: BLE001 - a file that stops parsing becomes a dead letter, never a crash
            self._broken(exc)
            return
        if raw.height == 0:
            return
        rows, letters = self._decoder.decode(raw, self.read_pos, self.max_ts)
        self.read_pos += raw.height
        self.max_ts = int(rows.pm[-1])
        self.buf = _Rows.concat([self.buf, rows]) if len(self.buf) else rows
        self.letters.update(letters)

    def _finish(self) -> None:
        self.reading_done = True
        self._it = None

    def _broken(self, exc: Exception) -> None:
        letter = DeadLetter(
            reason=f"unreadable from row {self.read_pos}: {_first_line(exc)}",
            source=self.path, partition=self.index, offset=self.read_pos,
        )
        self.letters[self.read_pos] = letter
        F = self.buf.values.shape[1]
        row = _Rows(
            np.array([None], object), np.array([_NO_TS]), np.full((1, F), math.nan), np.array([self.read_pos]),
            np.array([self.max_ts]), np.array([_BROKEN], np.int8),
        )
        self.buf = _Rows.concat([self.buf, row]) if len(self.buf) else row
        self._finish()

    def consume(self, n: int) -> None:
        """The first ``n`` buffered rows were returned (or skipped)."""
        if n == 0:
            return
        head = self.buf.slice(0, n)
        broken = bool(head.kind[-1] == _BROKEN)
        self.closed = self.closed or broken
        self.emitted_rows += n - broken
        self.emitted_max = int(head.pm[-1])
        self.buf = self.buf.slice(n)

    def close(self) -> None:
        self._it = None


class ReplayPartition(SourcePartition):
    """The merged event-time stream of all files of a :class:`ReplaySource`."""

    partitioned_time = False  # one watermark for the whole merged stream

    def __init__(self, source: ReplaySource, resume_state: dict | None):
        self._source = source
        self._files = list(source.files)
        self._n_values = len(source.value_cols)
        self._chunk_rows = source.chunk_rows
        self._speed = source.speed
        self._clock = source.clock
        self._t0: tuple[int, float] | None = None  # (event ns, wall s) of the first record, for pacing
        self._total_rows: int | None = None
        n = len(self._files)
        rows, max_ts, closed = [0] * n, [_NO_TS] * n, [False] * n
        if resume_state is not None:
            rows, max_ts, closed = self._check_state(resume_state)
        keys = _KeyTable()
        read_rows = max(min(source.chunk_rows, 4096), source.chunk_rows // n)  # bounds memory held across files
        self._cursors = []
        for i, path in enumerate(self._files):
            fmt = _format_of(path)
            decoder = _Decoder(source, path, i, fmt, source._schemas[i], keys)
            lf = source._frame(i)
            if i in source.sorted_files:
                lf = source._sorted(i, lf)
            self._cursors.append(
                _FileCursor(i, path, lf, decoder, self._n_values, read_rows, rows[i], max_ts[i], closed[i])
            )

    def _check_state(self, state: dict) -> tuple[list[int], list[int], list[bool]]:
        files = state.get("files", [])
        if [os.path.basename(f) for f in files] != [os.path.basename(f) for f in self._files]:
            raise InputError(f"replay resume state is for files {files}, not {self._files}")
        n = len(files)
        closed = [bool(c) for c in state.get("closed", [False] * n)]
        return [int(r) for r in state["rows"]], [int(m) for m in state["max_ts"]], closed

    # -- reading ---------------------------------------------------------------------------

    def next_batch(self) -> tuple[ObservationBatch, list[DeadLetter]]:
        out: list[tuple[_Rows, np.ndarray]] = []
        need = self._chunk_rows
        while need > 0:
            merged = self._merge_safe()
            if merged is not None:
                rows, files = merged
                n = len(rows)
                limit = self._release_limit(rows)
                if limit is not None:
                    n = int(np.searchsorted(rows.pm, limit, side="right"))
                kinds = rows.kind[:n]
                if kinds.any():
                    taken = np.cumsum(kinds != _SKIP)
                    if n and taken[-1] > need:
                        n = int(np.searchsorted(taken, need, side="left")) + 1
                    need -= int(taken[n - 1]) if n else 0
                else:
                    n = min(n, need)
                    need -= n
                if n:
                    out.append((rows.slice(0, n), files[:n]))
                    counts = np.bincount(files[:n], minlength=len(self._cursors))
                    for c in self._cursors:
                        c.consume(int(counts[c.index]))
                if n < len(rows):
                    break  # the rest is not due yet, or the batch is full
            cursor = self._limiting_cursor()
            if cursor is None:
                break
            cursor.read()
        return self._emit(out)

    def _merge_safe(self) -> tuple[_Rows, np.ndarray] | None:
        """Buffered rows no unread row can precede, in merge order, with their file index."""
        bounds = sorted((c.max_ts, c.index) for c in self._cursors if not c.reading_done)[:2]
        parts: list[tuple[_Rows, int]] = []
        for c in self._cursors:
            if not len(c.buf):
                continue
            other = next((b for b in bounds if b[1] != c.index), None)
            if other is None:
                n = len(c.buf)
            else:
                n = int(np.searchsorted(c.buf.pm, other[0], side="right" if c.index < other[1] else "left"))
            if n:
                parts.append((c.buf.slice(0, n), c.index))
        if not parts:
            return None
        if len(parts) == 1:
            rows, i = parts[0]
            return rows, np.full(len(rows), i, dtype=np.int32)
        rows = _Rows.concat([p for p, _ in parts])
        files = np.concatenate([np.full(len(p), i, dtype=np.int32) for p, i in parts])
        order = np.lexsort((files, rows.pm))  # stable: keeps file order among equal keys
        return rows.take(order), files[order]

    def _limiting_cursor(self) -> _FileCursor | None:
        open_ = [c for c in self._cursors if not c.reading_done]
        return min(open_, key=lambda c: (c.max_ts, c.index)) if open_ else None

    def _release_limit(self, rows: _Rows) -> int | None:
        """With a speed, the largest merge key due now; None when replaying as fast as possible."""
        if self._speed is None:
            return None
        if self._t0 is None:
            first = int(np.searchsorted(rows.pm, _NO_TS, side="right"))
            if first == len(rows):
                return _NO_TS
            self._t0 = (int(rows.pm[first]), self._clock.monotonic())
        event0, wall0 = self._t0
        due = event0 + (self._clock.monotonic() - wall0) * self._speed * 1e9
        return int(min(max(due, _NO_TS), _MAX_TS))

    def _emit(self, out: list[tuple[_Rows, np.ndarray]]) -> tuple[ObservationBatch, list[DeadLetter]]:
        if not out:
            return ObservationBatch.empty(self._n_values), []
        rows = _Rows.concat([r for r, _ in out])
        files = np.concatenate([f for _, f in out]) if len(out) > 1 else out[0][1]
        letters: list[DeadLetter] = []
        if rows.kind.any():
            for i in np.flatnonzero((rows.kind == _DEAD) | (rows.kind == _BROKEN)).tolist():
                letters.append(self._cursors[files[i]].letters.pop(int(rows.offset[i])))
            good = np.flatnonzero(rows.kind == _GOOD)
            rows, files = rows.take(good), files[good]
        batch = ObservationBatch(rows.keys, rows.ts, rows.values, files, rows.offset)
        return batch, letters

    # -- state -----------------------------------------------------------------------------

    def snapshot(self) -> dict:
        return {
            "files": list(self._files),
            "rows": [c.emitted_rows for c in self._cursors],
            "max_ts": [c.emitted_max for c in self._cursors],
            "closed": [c.closed for c in self._cursors],
        }

    @property
    def exhausted(self) -> bool:
        return all(c.reading_done and not len(c.buf) for c in self._cursors)

    @property
    def total_rows(self) -> int | None:
        """Data rows in all files (counted once, by a lazy ``pl.len()`` scan)."""
        if self._total_rows is None:
            try:
                self._total_rows = sum(
                    self._source._frame(i).select(pl.len()).collect().item() for i in range(len(self._files))
                )
            except Exception:  # noqa: BLE001 - progress is optional
                return None
        return self._total_rows

    def origin(self, pid: int) -> tuple[str, int]:
        return self._files[pid], pid

    def read_stats(self) -> dict[str, int]:
        """Rows outside [start, end) and the span of the event times read (ns; absent when none parsed)."""
        decoders = [c._decoder for c in self._cursors]
        out = {"outside_range": sum(d.outside for d in decoders)}
        first, last = min(d.first_ts for d in decoders), max(d.last_ts for d in decoders)
        if last != _NO_TS:
            out.update(first_ts=first, last_ts=last)
        return out

    def close(self) -> None:
        for c in self._cursors:
            c.close()


class ReplaySource(Source):
    """Replays CSV, Parquet and JSON-lines files as one event-time ordered stream.

    ``speed=None`` replays as fast as possible; ``speed=x`` releases a record
    once ``(t - t0_event) / x`` seconds of clock time have passed since the first.

    ``validate`` reads the start of every file and refuses one that cannot be
    replayed as asked (empty, only a header, times that do not parse) with a
    message saying what to set. With ``late_after_ns`` it also checks the time
    order: a row that far behind the latest time before it would be too late
    for the windows; when more than 5% of a file's rows are, a file of up to
    ``sort_max_bytes`` is replayed sorted by event time (in memory, stable, rows
    keep their numbers in dead letters), a bigger one is named in ``notices()``.
    """

    SAMPLE_ROWS = 2_000  # rows read by validate to check that times parse
    ORDER_ROWS = 1_000_000  # rows of a file too big to sort checked for time order
    UNORDERED_SHARE = 0.05  # share of too-late rows above which a file counts as not in time order

    def __init__(
        self,
        files: list[str],
        key_col: str,
        time_col: str,
        value_cols: list[str],
        *,
        time_format: str | None = None,
        time_unit: str = "s",
        speed: float | None = None,
        start: str | None = None,
        end: str | None = None,
        chunk_rows: int = 65_536,
        clock=None,
        separator: str = ",",
        late_after_ns: int | None = None,
        sort_max_bytes: int = 256 * 2**20,
    ):
        if isinstance(files, (str, os.PathLike)):
            files = [files]
        self.files = [os.fspath(f) for f in files]
        self.key_col = key_col
        self.time_col = time_col
        self.value_cols = list(value_cols)
        self.time_format = time_format
        self.time_unit = time_unit
        self.speed = speed
        self.start = start
        self.end = end
        self.chunk_rows = chunk_rows
        self.clock = clock if clock is not None else SystemClock()
        self.separator = separator
        self.late_after_ns = late_after_ns
        self.sort_max_bytes = sort_max_bytes
        self.sorted_files: dict[int, np.ndarray] = {}  # file index -> row order by event time
        self._notices: list[str] = []
        if time_unit not in _UNIT_NS:
            raise ConfigError("time_unit", f"one of {', '.join(_UNIT_NS)}, got {time_unit!r}")
        if speed is not None and not (isinstance(speed, (int, float)) and speed > 0 and math.isfinite(speed)):
            raise ConfigError("speed", f"a positive number, or None for as fast as possible; got {speed!r}")
        if not isinstance(chunk_rows, int) or chunk_rows < 1:
            raise ConfigError("chunk_rows", f"a positive integer, got {chunk_rows!r}")
        if not self.value_cols:
            raise ConfigError("value_cols", "at least one value column")
        if not isinstance(separator, str) or len(separator.encode()) != 1:
            raise ConfigError("separator", f"one single-byte character such as ';' or '\\t', got {separator!r}")
        self._start_ns = _parse_bound(start, "start")
        self._end_ns = _parse_bound(end, "end")
        self._columns = list(dict.fromkeys([key_col, time_col, *self.value_cols]))
        self._schemas: list[pl.Schema] | None = None

    def notices(self) -> list[str]:
        """Files replayed sorted, files out of time order too big to sort, times that look misread."""
        return list(self._notices)

    def _frame(self, i: int) -> pl.LazyFrame:
        """File ``i`` as the columns the replay reads (JSON lines: the raw lines)."""
        path = self.files[i]
        fmt = _format_of(path)
        lf = _scan(path, fmt, self.separator)
        return lf.select("line") if fmt == "ndjson" else lf.select(self._columns)

    def _sorted(self, i: int, lf: pl.LazyFrame) -> pl.LazyFrame:
        return lf.collect().with_row_index(_ROW)[self.sorted_files[i]].lazy()

    def validate(self) -> None:
        if not self.files:
            raise InputError("replay: no input files given")
        schemas = []
        for path in self.files:
            fmt = _format_of(path)
            if fmt is None:
                raise InputError(
                    f"{path}: unsupported file type (expected .csv, .csv.gz, .parquet, .pq, .jsonl or .ndjson)"
                )
            if "://" not in path and not os.path.isfile(path):
                raise InputError(f"{path}: file not found")
            if "://" not in path and os.path.getsize(path) == 0:
                raise InputError(f"{path}: the file is empty")
            try:
                if fmt == "ndjson":
                    names = _jsonl_columns(path)
                    schema = pl.Schema({c: pl.String for c in (names if names is not None else self._columns)})
                else:
                    schema = _scan(path, fmt, self.separator).collect_schema()
            except Exception as exc:  # noqa: BLE001 - any reader failure is an unusable input
                raise InputError(f"{path}: cannot read ({_first_line(exc)})") from exc
            for col in self._columns:
                if col not in schema:
                    raise InputError(f"{path}: column {col!r} not found (columns: {', '.join(schema.names())})"
                                     + self._separator_hint(fmt, schema))
            self._check_types(path, schema)
            schemas.append(schema)
        self._schemas = schemas
        keys = _KeyTable()
        heads = [self._head(i) for i in range(len(self.files))]
        if not any(h is None or h.height for h in heads):
            only_header = all(_format_of(p) == "csv" for p in self.files)
            raise InputError(f"{', '.join(self.files)}: no data rows" + (" (only a header)" if only_header else ""))
        for i, path in enumerate(self.files):
            head = heads[i]
            if head is None or head.height == 0:
                continue  # unreadable early on: the replay makes that a dead letter with its row
            decoder = _Decoder(self, path, i, _format_of(path), schemas[i], keys)
            self._check_times(i, decoder, head)
            if self.late_after_ns is not None and "://" not in path:
                self._check_order(i, decoder)

    def _head(self, i: int) -> pl.DataFrame | None:
        """The first rows of file ``i``; None when polars cannot read that far."""
        try:
            return self._frame(i).head(self.SAMPLE_ROWS).collect()
        except Exception:  # noqa: BLE001 - a malformed file is the replay's to report, row by row
            return None

    def _separator_hint(self, fmt: str, schema: pl.Schema) -> str:
        if fmt != "csv" or len(schema) != 1:
            return ""
        header = schema.names()[0]
        found = next((sep for sep in (";", "\t", "|", ",") if sep in header and sep != self.separator), None)
        return f"; the header looks {found!r}-separated: give --sep {found!r}" if found else ""

    def _check_times(self, i: int, decoder: _Decoder, head: pl.DataFrame) -> None:
        """Most times of the first rows parse; otherwise say what to set."""
        path = self.files[i]
        ts, missing, raw = decoder.event_times(head)
        present = int((~missing).sum())
        if present == 0:
            raise InputError(f"{path}: column {self.time_col!r} is empty in the first {head.height:,} rows")
        bad = np.flatnonzero((ts == _NO_TS) & ~missing)
        if len(bad) > present // 2:
            # Examples spread over the sample: the first rows often share a day, which hides the date order.
            examples = raw.gather(bad[np.unique(np.linspace(0, len(bad) - 1, 200).astype(np.int64))]).cast(pl.String)
            if self.time_format:
                what = f"with --time-format {self.time_format!r}"
            elif examples.str.contains(_NUMBER).all():
                what = f"as epoch numbers in --time-unit {self.time_unit}"
            else:
                what = "as ISO 8601"
            examples = examples.to_list()
            hint = time_hint(examples, self.time_unit)
            raise InputError(
                f"{path}: {len(bad):,} of the first {present:,} times in column {self.time_col!r} do not parse "
                f"{what}, e.g. {_short(examples[0])}" + (f"; {hint}" if hint else
                                                          "; give --time-format (text) or --time-unit (epoch numbers)"))
        good = ts[ts != _NO_TS]
        if len(good) and int(good.max()) < _parse_bound("1971-01-01", "") and not self.time_format:
            first = datetime.fromtimestamp(int(good.min()) / 1e9, tz=UTC).isoformat()
            self._notices.append(f"{path}: event times fall in 1970 (first {first}): if they are epoch numbers, "
                                f"check --time-unit (now {self.time_unit})")

    def _check_order(self, i: int, decoder: _Decoder) -> None:
        """Count the rows that would arrive after their window closed; sort a small file that has many."""
        path = self.files[i]
        small = os.path.getsize(path) <= self.sort_max_bytes
        cols = self._frame(i)
        if not small:
            cols = cols.head(self.ORDER_ROWS)
        try:
            ts, _, _ = decoder.event_times(cols.collect())
        except Exception:  # noqa: BLE001 - a file malformed further on: replayed as it is, bad rows dead letters
            return
        good = ts != _NO_TS
        n = int(good.sum())
        if n == 0:
            return
        latest = np.maximum.accumulate(np.where(good, ts, _NO_TS))
        late = good & (ts < latest - self.late_after_ns)
        n_late = int(late.sum())
        if n_late <= self.UNORDERED_SHARE * n:
            return
        if small:
            self.sorted_files[i] = np.argsort(np.where(good, ts, _NO_TS), kind="stable")
            self._notices.append(f"{path}: not in time order ({n_late:,} of {n:,} rows would arrive after their "
                                f"window closed): replaying it sorted by time")
        else:
            self._notices.append(f"{path}: not in time order ({n_late:,} of the first {n:,} rows would arrive after "
                                f"their window closed and become dead letters); it is too big to sort in memory: "
                                f"sort it by time first, or raise --lateness")

    def _check_types(self, path: str, schema: pl.Schema) -> None:
        t = schema[self.time_col]
        if not (t == pl.String or t == pl.Date or isinstance(t, pl.Datetime) or t.is_numeric()):
            raise InputError(
                f"{path}: time column {self.time_col!r} has type {t}, expected datetime, text or epoch number"
            )
        k = schema[self.key_col]
        if k.is_nested():
            raise InputError(f"{path}: key column {self.key_col!r} has type {k}, expected text or integer")
        for col in self.value_cols:
            v = schema[col]
            if not (v.is_numeric() or v in (pl.String, pl.Boolean, pl.Null)):
                raise InputError(f"{path}: value column {col!r} has type {v}, expected a number")

    def list_parts(self) -> list[str]:
        return ["replay"]

    def build_part(self, name: str, resume_state: dict | None) -> ReplayPartition:
        if name != "replay":
            raise InputError(f"replay source has one partition 'replay', not {name!r}")
        if self._schemas is None:
            self.validate()
        return ReplayPartition(self, resume_state)
