"""Changelog state records of the river baselines: bytes per key, and the time to snapshot and restore 1,000 keys.

    PYTHONPATH=. python bench/bench_state_records.py [--keys 1000] [--windows 96] [--reps 7]

A pipeline with one river model (season 24, horizon 24) runs ``--windows`` hourly windows of
``--keys`` synthetic keys; then, ``--reps`` times: snapshot_keys + encode_keys (what a checkpoint
writes), and decode_keys + restore_keys into a fresh pipeline (what a worker that gains the
partitions does). Prints the median and range of each, the record size per key, and whether the
restored keys forecast bit for bit what the original ones do.
"""
from __future__ import annotations

import argparse
import statistics
import time

import numpy as np

from streamseq.compose import build_pipeline
from streamseq.config import from_dict
from streamseq.records import ObservationBatch
from streamseq.state_codec import decode_keys, encode_keys
from streamseq.synthetic import generate


def build(model: str):
    return build_pipeline(from_dict({"forecast": {"horizon": 24, "season": 24, "models": [model]},
                                     "windowing": {"interval": "1h"}}))


def batch(df) -> ObservationBatch:
    n = df.height
    return ObservationBatch(df["key"].cast(str).to_numpy().astype(object), df["ts"].dt.epoch("ns").to_numpy(),
                            df["value"].to_numpy().astype(np.float64)[:, None], np.zeros(n, np.int32),
                            np.arange(n, dtype=np.int64))


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--keys", type=int, default=1000)
    ap.add_argument("--windows", type=int, default=96)
    ap.add_argument("--reps", type=int, default=7)
    args = ap.parse_args()
    obs = batch(generate(args.keys, args.windows, seed=0, irregular=False))
    for model in ("snarimax", "holt_winters"):
        pipe = build(model)
        pipe.process(obs)
        keys = sorted(k for k, _ in pipe.keys.items())
        write, read = [], []
        for _ in range(args.reps):
            t0 = time.perf_counter()
            records = encode_keys(keys, pipe.snapshot_keys(keys))
            t1 = time.perf_counter()
            other = build(model)
            t2 = time.perf_counter()
            restored, state = decode_keys(records, other.state_template())
            other.restore_keys(restored, state, partitioned_time=False)
            t3 = time.perf_counter()
            write.append((t1 - t0) * 1e3)
            read.append((t3 - t2) * 1e3)
        sizes = sorted(len(v) for v in records.values())
        part = {n: a for n, a in pipe.snapshot_keys(keys[:1]).items() if n.startswith("model.")}
        model_bytes = sum(len(a[0]) if isinstance(a[0], bytes) else a[0].nbytes for a in part.values())
        a = pipe.models[model].forecast(np.array([pipe.keys.get(k) for k in keys]))
        b = other.models[model].forecast(np.array([other.keys.get(k) for k in keys]))
        print(f"{model}: record {sizes[len(sizes) // 2]} B/key (min {sizes[0]}, max {sizes[-1]}), of which the model "
              f"{model_bytes} B; snapshot+encode {args.keys} keys {statistics.median(write):.0f} ms "
              f"[{min(write):.0f}-{max(write):.0f}], decode+restore {statistics.median(read):.0f} ms "
              f"[{min(read):.0f}-{max(read):.0f}]; restored forecasts bit for bit: {a.tobytes() == b.tobytes()}")


if __name__ == "__main__":
    main()
