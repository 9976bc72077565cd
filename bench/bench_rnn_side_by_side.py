"""Batched GRU online learning of two checkouts of streamseq, side by side in one process.

    python bench/bench_rnn_side_by_side.py --baseline /path/to/other/checkout [--windows 250] [--threads 1]

1,000 keys, H = 24, 64 hidden units, TBPTT(8, s) with Adam: per window end, update(all keys) +
forecast(all keys), as figure (b) of bench_models.py. The baseline checkout's StatefulRNNForecaster
is built as it was then (RNNConfig(hidden, horizon, tbptt, learn)); this checkout's as an hourly stream
with a daily season gets it (season 24, calendar day,week, window ids). The two take turns, one segment
each per round, so load from other work falls on both alike; the trustworthy figure is the per-segment
cost ratio (median and spread).
"""
from __future__ import annotations

import argparse
import importlib.util
import sys
import time
from pathlib import Path

import numpy as np
import torch


def load_baseline(path: Path):
    spec = importlib.util.spec_from_file_location("streamseq_baseline", path / "streamseq" / "__init__.py",
                                                  submodule_search_locations=[str(path / "streamseq")])
    mod = importlib.util.module_from_spec(spec)
    sys.modules["streamseq_baseline"] = mod
    spec.loader.exec_module(mod)
    import streamseq_baseline.models.rnn as old  # noqa: E402

    return old


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--baseline", type=Path, required=True, help="another streamseq checkout (e.g. main)")
    ap.add_argument("--windows", type=int, default=250)
    ap.add_argument("--keys", type=int, default=1000)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--learn-every", type=int, default=None, help="this checkout's s (default: its default)")
    ap.add_argument("--rounds", type=int, default=8)
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    old = load_baseline(a.baseline.resolve())
    import streamseq.models.rnn as new
    from streamseq.grid import FixedGrid

    K, W, warm = a.keys, a.windows, 50
    rng = np.random.default_rng(0)
    t = np.arange(W)[:, None]
    vals = 10 + 5 * np.sin(2 * np.pi * (t + rng.uniform(0, 24, K)[None, :]) / 24) + rng.normal(size=(W, K))
    extra = {} if a.learn_every is None else {"learn_every": a.learn_every}
    models = {
        "baseline": old.StatefulRNNForecaster(old.RNNConfig(hidden=64, horizon=24, tbptt=8, learn=True)),
        "this": new.StatefulRNNForecaster(new.RNNConfig(hidden=64, horizon=24, tbptt=8, learn=True, season=24,
                                                        calendar="day,week", **extra)),
    }
    models["this"].bind_grid(FixedGrid(3600 * 10**9))
    slots, filled, wid0 = np.arange(K), np.zeros(K, bool), 480_000
    for m in models.values():
        m.ensure_capacity(K)
        for i in range(warm):
            m.update(slots, vals[i][:, None], filled, wid0 + i)
            m.forecast(slots)
    rates = {name: [] for name in models}
    cuts = np.linspace(warm, W, a.rounds + 1).astype(int)
    for lo, hi in zip(cuts[:-1], cuts[1:]):
        for name, m in models.items():
            t0 = time.perf_counter()
            for i in range(lo, hi):
                m.update(slots, vals[i][:, None], filled, wid0 + i)
                m.forecast(slots)
            rates[name].append((hi - lo) * K / (time.perf_counter() - t0))
    for name, r in rates.items():
        r = np.array(r)
        print(f"{name}: {np.median(r):,.0f} windows/s median of {len(r)} segments ({r.min():,.0f}-{r.max():,.0f}), "
              f"state {models[name].state_nbytes_per_key():.0f} B/key")
    ratio = np.array(rates["baseline"]) / np.array(rates["this"])
    print(f"learning cost this/baseline: median {np.median(ratio):.2f} ({ratio.min():.2f}-{ratio.max():.2f})")


if __name__ == "__main__":
    main()
