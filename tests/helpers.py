"""Small builders shared by the pipeline tests: an in-memory source and a list sink."""
from __future__ import annotations

import numpy as np
import polars as pl

from streamseq.compose import build_pipeline
from streamseq.config import from_dict
from streamseq.memory import ListDeadLetterSink, ListSink, MemoryPartition
from streamseq.records import ForecastBatch, ObservationBatch

H = 3600 * 10**9


def obs(keys, ts, values, partition=None, offset=None) -> ObservationBatch:
    n = len(keys)
    v = np.asarray(values, dtype=np.float64)
    if v.ndim == 1:
        v = v[:, None]
    return ObservationBatch(
        np.asarray(keys, dtype=object), np.asarray(ts, dtype=np.int64), v,
        np.zeros(n, np.int32) if partition is None else np.asarray(partition, np.int32),
        np.arange(n, dtype=np.int64) if offset is None else np.asarray(offset, np.int64),
    )


def frame_batches(df: pl.DataFrame, chunk: int) -> list[ObservationBatch]:
    """Split a (key, ts, value) frame into ObservationBatch chunks in row order."""
    keys = df["key"].to_numpy().astype(object)
    ts = df["ts"].dt.epoch("ns").to_numpy() if df["ts"].dtype != pl.Int64 else df["ts"].to_numpy()
    vals = df["value"].to_numpy().astype(np.float64)
    out = []
    for a in range(0, len(df), chunk):
        b = min(a + chunk, len(df))
        out.append(obs(keys[a:b], ts[a:b], vals[a:b], offset=np.arange(a, b)))
    return out


def pipeline(models=("gru", "naive"), horizon=4, season=6, interval="1h", gap="ffill", learn=True,
             lateness="0s", ensemble=False, hidden=16, seed=0):
    cfg = from_dict({
        "forecast": {"horizon": horizon, "season": season, "models": list(models), "ensemble": ensemble, "seed": seed},
        "windowing": {"interval": interval, "gap": gap, "allowed_lateness": lateness},
        "rnn": {"hidden": hidden, "tbptt": 4, "learn": learn},
    })
    pipe = build_pipeline(cfg)
    sink, dead = ListSink(), ListDeadLetterSink()
    pipe.add_sink(sink)
    pipe.add_dead_letter_sink(dead)
    return pipe, sink, dead


def run(pipe, batches):
    part = MemoryPartition(batches)
    pipe.run(part)
    return pipe


def forecasts_frame(batches: list[ForecastBatch]) -> pl.DataFrame:
    rows = []
    for b in batches:
        for i, k in enumerate(b.keys.tolist()):
            rows.append({"key": k, "model": b.model, "origin": b.origin,
                         "mean": b.mean[i].tolist(), "lo": b.lo[i].tolist(), "hi": b.hi[i].tolist()})
    return pl.DataFrame(rows)
