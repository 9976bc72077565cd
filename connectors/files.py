"""File sinks: forecasts and windows to Parquet, dead letters to JSON lines.

Batches are kept as they come (a write is an append to a list) and turned into
columns once per row group, vectorised over every batch in it; a background
thread encodes and compresses the row groups (pyarrow releases the GIL), so a
long replay never holds all its forecasts in memory and its second core writes
while the first computes. Columns are built from numpy buffers and string
dictionaries without ``pa.array``, whose first call imports pandas (~0.4 s of a
replay's start); the files hold plain string columns.
"""
from __future__ import annotations

import os
import queue
import threading
from pathlib import Path

import numpy as np
import orjson
import polars as pl
import pyarrow as pa
import pyarrow.parquet as pq

from streamseq.ports import DeadLetterSink, ForecastSink
from streamseq.records import DeadLetter, ForecastBatch, WindowBatch

_TS = pa.timestamp("ns", tz="UTC")
FORECAST_SCHEMA = pa.schema([
    ("key", pa.string()), ("model", pa.string()), ("model_version", pa.string()),
    ("origin", _TS), ("step", pa.int16()), ("target_ts", _TS),
    ("mean", pa.float64()), ("lo", pa.float64()), ("hi", pa.float64()),
])
_NUMPY = {pa.int16(): np.int16, pa.int32(): np.int32, pa.int64(): np.int64, pa.float64(): np.float64, _TS: np.int64}


def _numbers(values: np.ndarray, type_: pa.DataType) -> pa.Array:
    """A numpy column as an Arrow array of ``type_`` (numbers, booleans, UTC ns timestamps), no copy."""
    if type_ == pa.bool_():
        bits = np.packbits(np.ascontiguousarray(values, bool), bitorder="little")
        return pa.Array.from_buffers(type_, len(values), [None, pa.py_buffer(bits)])
    v = np.ascontiguousarray(values, _NUMPY[type_])
    return pa.Array.from_buffers(type_, len(v), [None, pa.py_buffer(v)])


def _dictionary(names) -> tuple[pa.Array, np.ndarray]:
    """Distinct strings (in order of appearance) and each value's index among them."""
    values = pl.Series("s", np.asarray(names, dtype=object), dtype=pl.String)
    distinct = values.unique(maintain_order=True)
    codes = values.cast(pl.Enum(distinct)).to_physical().to_numpy()
    return distinct.to_arrow(), codes


def _strings(dictionary: pa.Array, codes: np.ndarray) -> pa.Array:
    """Strings by dictionary code, kept dictionary-encoded (the file stores them so anyway)."""
    return pa.DictionaryArray.from_arrays(_numbers(codes, pa.int32()), dictionary)


class _ParquetAppender:
    """Row groups of ``row_group`` rows or more, built by ``build(parts)`` and written by a background thread."""

    def __init__(self, path: str, build, row_group: int):
        self.path = Path(path)
        self.tmp = self.path.with_suffix(self.path.suffix + ".tmp")
        self.build = build  # list of batches -> pa.Table
        self.row_group = row_group
        self._parts: list = []
        self._rows = 0
        self._writer: pq.ParquetWriter | None = None
        self._queue: queue.Queue | None = None
        self._thread: threading.Thread | None = None
        self._error: BaseException | None = None
        self.rows_written = 0

    def add(self, part, n: int) -> None:
        self._parts.append(part)
        self._rows += n
        if self._rows >= self.row_group:
            self._flush_parts()

    def _flush_parts(self) -> None:
        if not self._parts:
            return
        table = self.build(self._parts)
        self._parts, self._rows = [], 0
        self.rows_written += table.num_rows
        if self._thread is None:
            self._queue = queue.Queue(maxsize=2)  # bounds the row groups held in memory
            self._thread = threading.Thread(target=self._write_loop, name=f"parquet {self.path.name}", daemon=True)
            self._thread.start()
        assert self._queue is not None
        self._queue.put(table)
        self._raise()

    def _write_loop(self) -> None:
        assert self._queue is not None
        while True:
            table = self._queue.get()
            if table is None:
                return
            if self._error is not None:
                continue  # drain: the error is raised in the caller's thread
            try:
                self._write(table)
            except BaseException as exc:  # noqa: BLE001 - handed to the caller's thread
                self._error = exc

    def _write(self, table: pa.Table) -> None:
        if self._writer is None:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            # store_schema=False: readers see the Parquet types (strings, UTC ns timestamps), not the
            # dictionary encoding the columns were built with.
            self._writer = pq.ParquetWriter(self.tmp, table.schema, compression="zstd", store_schema=False)
        self._writer.write_table(table)

    def _raise(self) -> None:
        if self._error is not None:
            raise self._error

    def close(self) -> None:
        self._flush_parts()
        if self._thread is not None:
            assert self._queue is not None
            self._queue.put(None)
            self._thread.join()
            self._thread = None
        self._raise()
        if self._writer is None:
            self._write(self.build([]))
        assert self._writer is not None
        self._writer.close()
        os.replace(self.tmp, self.path)  # readers never see a half-written file


def _forecast_table(batches: list[ForecastBatch]) -> pa.Table:
    """One row per (key, model, origin, step), in batch order: H rows per key."""
    if not batches:
        return FORECAST_SCHEMA.empty_table()
    H = batches[0].mean.shape[1]
    if any(b.mean.shape[1] != H for b in batches):  # horizons differ: one table per horizon run
        runs, start = [], 0
        for i in range(1, len(batches) + 1):
            if i == len(batches) or batches[i].mean.shape[1] != batches[start].mean.shape[1]:
                runs.append(_forecast_table(batches[start:i]))
                start = i
        return pa.concat_tables(runs)
    per = np.array([len(b) for b in batches], np.int64)  # keys per batch
    rows = per * H
    keys, key_codes = _dictionary(np.concatenate([b.keys for b in batches]))
    models, model_codes = _dictionary([b.model for b in batches])
    versions, version_codes = _dictionary([b.model_version for b in batches])
    targets = np.stack([np.asarray(b.targets, np.int64) for b in batches])  # (batches, H)
    cols = [
        _strings(keys, np.repeat(key_codes, H)),
        _strings(models, np.repeat(model_codes, rows)),
        _strings(versions, np.repeat(version_codes, rows)),
        _numbers(np.repeat(np.array([b.origin for b in batches], np.int64), rows), _TS),
        _numbers(np.tile(np.arange(1, H + 1, dtype=np.int16), int(per.sum())), pa.int16()),
        _numbers(np.repeat(targets, per, axis=0).reshape(-1), _TS),
        *(_numbers(np.concatenate([getattr(b, f).reshape(-1) for b in batches]), pa.float64())
          for f in ("mean", "lo", "hi")),
    ]
    return pa.Table.from_arrays(cols, names=FORECAST_SCHEMA.names)


def _window_table(batches: list[WindowBatch], feature_names: list[str]) -> pa.Table:
    keys, codes = _dictionary(np.concatenate([b.keys for b in batches]) if batches else [])
    feats = np.concatenate([b.features for b in batches]) if batches else np.zeros((0, len(feature_names)))
    cols = [_strings(keys, codes),
            _numbers(np.concatenate([b.end for b in batches]) if batches else np.zeros(0, np.int64), _TS),
            _numbers(feats[:, 0], pa.float64()),
            _numbers(np.concatenate([b.filled for b in batches]) if batches else np.zeros(0, bool), pa.bool_()),
            _numbers(np.concatenate([b.count for b in batches]) if batches else np.zeros(0, np.int64), pa.int64())]
    cols += [_numbers(feats[:, j], pa.float64()) for j in range(len(feature_names))]
    names = ["key", "end", "value", "filled", "count"] + [f"f_{name}" for name in feature_names]
    return pa.Table.from_arrays(cols, names=names)


class ParquetForecastSink(ForecastSink):
    """forecasts.parquet: one row per (key, model, origin, step); windows.parquet: the actuals."""

    def __init__(self, forecasts_path: str, windows_path: str | None = None, row_group: int = 500_000):
        self._fc = _ParquetAppender(forecasts_path, _forecast_table, row_group)
        self._win: _ParquetAppender | None = None
        self._windows_path = windows_path
        self._row_group = row_group

    def write(self, b: ForecastBatch) -> None:
        n, H = b.mean.shape
        if n:
            self._fc.add(b, n * H)

    def write_windows(self, w: WindowBatch) -> None:
        if self._windows_path is None or len(w) == 0:
            return
        if self._win is None:
            names = list(w.feature_names)
            self._win = _ParquetAppender(self._windows_path, lambda parts: _window_table(parts, names), self._row_group)
        self._win.add(w, len(w))

    def flush(self) -> None:
        pass  # row groups are written as they fill; close() finishes the files

    def close(self) -> None:
        self._fc.close()
        if self._win is not None:
            self._win.close()

    @property
    def rows_written(self) -> int:
        return self._fc.rows_written


class JsonlSink(DeadLetterSink):
    """Dead letters as JSON lines; the file is created only when there is something to write."""

    def __init__(self, path: str):
        self.path = Path(path)
        self._fh = None
        self.count = 0

    def write(self, letters: list[DeadLetter]) -> None:
        if not letters:
            return
        if self._fh is None:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._fh = open(self.path, "wb")
        for dl in letters:
            self._fh.write(orjson.dumps(dl.to_json_dict()) + b"\n")
        self.count += len(letters)

    def flush(self) -> None:
        if self._fh is not None:
            self._fh.flush()

    def close(self) -> None:
        if self._fh is not None:
            self._fh.close()
            self._fh = None
