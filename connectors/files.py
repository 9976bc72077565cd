"""File sinks: forecasts and windows to Parquet, dead letters to JSON lines.

Rows are accumulated as column arrays and written in row groups, so a long
replay never holds all its forecasts in memory.
"""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import orjson
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


class _ParquetAppender:
    def __init__(self, path: str, schema: pa.Schema, row_group: int):
        self.path = Path(path)
        self.tmp = self.path.with_suffix(self.path.suffix + ".tmp")
        self.schema = schema
        self.row_group = row_group
        self._parts: list[dict] = []
        self._rows = 0
        self._writer: pq.ParquetWriter | None = None
        self.rows_written = 0

    def add(self, cols: dict, n: int) -> None:
        self._parts.append(cols)
        self._rows += n
        if self._rows >= self.row_group:
            self._flush_parts()

    def _flush_parts(self) -> None:
        if not self._parts:
            return
        arrays = []
        for f in self.schema:
            vals = np.concatenate([p[f.name] for p in self._parts])
            if pa.types.is_timestamp(f.type):
                arrays.append(pa.array(vals.astype("datetime64[ns]"), type=pa.timestamp("ns")).cast(f.type))
            elif pa.types.is_string(f.type):
                arrays.append(pa.array(vals.tolist(), type=pa.string()))
            else:
                arrays.append(pa.array(vals, type=f.type, from_pandas=False))
        table = pa.Table.from_arrays(arrays, schema=self.schema)
        if self._writer is None:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._writer = pq.ParquetWriter(self.tmp, self.schema, compression="zstd")
        self._writer.write_table(table)
        self.rows_written += table.num_rows
        self._parts, self._rows = [], 0

    def close(self) -> None:
        self._flush_parts()
        if self._writer is None:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._writer = pq.ParquetWriter(self.tmp, self.schema, compression="zstd")
        self._writer.close()
        os.replace(self.tmp, self.path)  # readers never see a half-written file


class ParquetForecastSink(ForecastSink):
    """forecasts.parquet: one row per (key, model, origin, step); windows.parquet: the actuals."""

    def __init__(self, forecasts_path: str, windows_path: str | None = None, row_group: int = 500_000):
        self._fc = _ParquetAppender(forecasts_path, FORECAST_SCHEMA, row_group)
        self._win: _ParquetAppender | None = None
        self._windows_path = windows_path
        self._row_group = row_group

    def write(self, b: ForecastBatch) -> None:
        n, H = b.mean.shape
        if n == 0:
            return
        steps = np.tile(np.arange(1, H + 1, dtype=np.int16), n)
        self._fc.add({
            "key": np.repeat(b.keys, H),
            "model": np.full(n * H, b.model, dtype=object),
            "model_version": np.full(n * H, b.model_version, dtype=object),
            "origin": np.full(n * H, b.origin, dtype=np.int64),
            "step": steps,
            "target_ts": np.asarray(b.targets, np.int64)[steps.astype(np.int64) - 1],
            "mean": b.mean.reshape(-1),
            "lo": b.lo.reshape(-1),
            "hi": b.hi.reshape(-1),
        }, n * H)

    def write_windows(self, w: WindowBatch) -> None:
        if self._windows_path is None or len(w) == 0:
            return
        if self._win is None:
            fields = [("key", pa.string()), ("end", _TS), ("value", pa.float64()),
                      ("filled", pa.bool_()), ("count", pa.int64())]
            fields += [(f"f_{name}", pa.float64()) for name in w.feature_names]
            self._win = _ParquetAppender(self._windows_path, pa.schema(fields), self._row_group)
        cols = {"key": w.keys, "end": w.end, "value": w.features[:, 0], "filled": w.filled, "count": w.count}
        for j, name in enumerate(w.feature_names):
            cols[f"f_{name}"] = w.features[:, j]
        self._win.add(cols, len(w))

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
