"""Per-batch latency of the running pipeline, idle vs while the trainer trains in another process.

A Pipeline (gru + transformer + naive, from streamseq.compose.build_pipeline)
runs over a synthetic stream, one batch per window end (every key closes a
window in every batch). Its windows go to a WindowStore. Then, ``--cycles``
times: N batches timed idle, then a Trainer.run_once on that store in a
spawned process (niced or SCHED_IDLE, its own torch threads, as
``TrainerProcess`` runs it) with batches timed until it finishes. Idle and
training phases are interleaved so that a change in the machine's load (a
shared box) hits both alike; latencies are pooled per phase.

Prints p50/p99 of each phase and p99(training) / p99(idle).

    python bench/bench_training_latency.py --keys 500
"""
from __future__ import annotations

import argparse
import multiprocessing as mp
import os
import sys
import tempfile
import time

import numpy as np


def _train_once(cfg, store_path: str, registry_path: str, threads: int, result) -> None:
    from streamseq.trainer_process import lower_priority  # as TrainerProcess: priority down before torch loads

    lower_priority(cfg)
    from streamseq.registry import ModelRegistry
    from streamseq.store import WindowStore
    from streamseq.threads import set_threads
    from streamseq.trainer import Trainer

    set_threads(threads)
    t0 = time.perf_counter()
    outcomes = Trainer(cfg, WindowStore(store_path), ModelRegistry(registry_path)).run_once()
    result.put({"seconds": time.perf_counter() - t0,
                "outcomes": [(o.name, o.accepted, o.metrics.get("val_mae"), o.metrics.get("incumbent_val_mae"),
                              o.metrics.get("val_samples")) for o in outcomes]})


def hourly_batches(n_keys: int, n_windows: int, seed: int):
    from streamseq.records import ObservationBatch
    from streamseq.synthetic import generate

    df = generate(n_keys=n_keys, n_windows=n_windows, seed=seed, irregular=False)
    keys = df["key"].to_numpy().astype(object)
    ts = df["ts"].dt.epoch("ns").to_numpy()
    vals = df["value"].to_numpy()[:, None]
    bounds = np.flatnonzero(np.r_[True, ts[1:] != ts[:-1], True])
    return [ObservationBatch(keys[a:b], ts[a:b], vals[a:b], np.zeros(b - a, np.int32), np.arange(a, b))
            for a, b in zip(bounds[:-1], bounds[1:])]


def pct(xs, q) -> float:
    return float(np.percentile(np.asarray(xs) * 1e3, q)) if len(xs) else float("nan")


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--keys", type=int, default=500)
    p.add_argument("--warmup", type=int, default=100, help="windows before timing (context + training data)")
    p.add_argument("--idle", type=int, default=150, help="batches timed in each idle phase")
    p.add_argument("--cycles", type=int, default=3, help="idle / training cycles")
    p.add_argument("--max-training-batches", type=int, default=1200, help="per training run at most")
    p.add_argument("--threads", type=int, default=1,
                   help="torch threads of the pipeline (on 2 cores: 1 for the stream, 1 for the trainer)")
    p.add_argument("--trainer-threads", type=int, default=1)
    p.add_argument("--nice", type=int, default=10, help="niceness of the trainer process")
    p.add_argument("--priority", choices=["idle", "nice"], default="idle",
                   help="trainer under SCHED_IDLE (trainer.idle_priority, the default) or niced")
    p.add_argument("--epochs", type=int, default=1)
    p.add_argument("--max-samples", type=int, default=5_000)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--dump", help="write every batch latency (phase, cycle, seconds since phase start) to this .npz")
    a = p.parse_args(argv)

    from streamseq.compose import build_pipeline
    from streamseq.config import from_dict
    from streamseq.store import WindowStore

    cfg = from_dict({
        "threads": a.threads,
        "forecast": {"horizon": 24, "season": 24, "models": ["gru", "transformer", "naive"], "seed": a.seed},
        "transformer": {"epochs": a.epochs},
        "trainer": {"holdout": 24, "max_samples": a.max_samples, "idle_priority": a.priority == "idle", "nice": a.nice},
    })
    n_windows = a.warmup + (a.cycles + 1) * a.idle + a.cycles * a.max_training_batches + 2
    print(f"generating {a.keys} keys x {n_windows} windows ...", flush=True)
    batches = hourly_batches(a.keys, n_windows, a.seed)
    pipe = build_pipeline(cfg)
    root = tempfile.mkdtemp(prefix="bench-train-")
    store = WindowStore(os.path.join(root, "store"), flush_rows=10 * a.keys)
    pipe.add_window_sink(store)
    it = iter(batches)

    trace = []  # (phase, cycle, t since phase start, latency)

    def timed(n, until=None, phase=-1, cycle=-1):
        lat = []
        start = time.perf_counter()
        for b in it:
            t0 = time.perf_counter()
            pipe.process(b)
            lat.append(time.perf_counter() - t0)
            trace.append((phase, cycle, t0 - start, lat[-1]))
            if (until is None and len(lat) >= n) or (until is not None and (until() or len(lat) >= n)):
                break
        return lat

    print(f"warm-up: {a.warmup} windows", flush=True)
    timed(a.warmup)
    store.flush()

    ctx = mp.get_context("spawn")
    idle, training, runs = [], [], []
    for cycle in range(a.cycles):  # interleaved, so a change in the machine's load hits both phases alike
        print(f"cycle {cycle + 1}/{a.cycles}: idle {a.idle} batches, then one training run", flush=True)
        idle += timed(a.idle, phase=0, cycle=cycle)
        result = ctx.Queue()
        proc = ctx.Process(target=_train_once, args=(cfg, str(store.path), os.path.join(root, "registry"),
                                                     a.trainer_threads, result), daemon=True)
        t0 = time.perf_counter()
        proc.start()
        lat = timed(a.max_training_batches, until=lambda p=proc: not p.is_alive(), phase=1, cycle=cycle)
        wall = time.perf_counter() - t0
        if proc.is_alive():
            proc.terminate()
            print(f"  training did not finish within {len(lat)} batches ({wall:.0f} s); measured anyway")
            runs.append(None)
        else:
            runs.append(result.get(timeout=60))
            print(f"  training: {runs[-1]['seconds']:.1f} s in the child, {len(lat)} batches meanwhile, "
                  f"outcomes {runs[-1]['outcomes']}", flush=True)
        training += lat
    idle += timed(a.idle, phase=0, cycle=a.cycles)
    if a.dump:
        np.savez(a.dump, trace=np.array(trace))

    prio = "SCHED_IDLE" if a.priority == "idle" else f"nice {a.nice}"
    print(f"\nkeys {a.keys}, pipeline torch threads {a.threads}, trainer threads {a.trainer_threads} ({prio}), "
          f"cpus {os.cpu_count()}, load avg {os.getloadavg()[0]:.1f}")
    print(f"{'phase':<22} {'batches':>7} {'p50 ms':>9} {'p99 ms':>9}")
    for name, lat in (("idle", idle), ("training in progress", training)):
        print(f"{name:<22} {len(lat):>7} {pct(lat, 50):>9.1f} {pct(lat, 99):>9.1f}")
    print(f"p99(training) / p99(idle) = {pct(training, 99) / pct(idle, 99):.2f}; "
          f"p50 ratio {pct(training, 50) / pct(idle, 50):.2f}  (pooled)")
    # Per cycle, against the idle phases right before and after: robust to the load of a shared machine drifting.
    tr = np.array(trace)
    ratios = []
    for c in range(a.cycles):
        train_c = tr[(tr[:, 0] == 1) & (tr[:, 1] == c), 3]
        idle_c = tr[(tr[:, 0] == 0) & ((tr[:, 1] == c) | (tr[:, 1] == c + 1)), 3]
        ratios.append(pct(train_c, 99) / pct(idle_c, 99))
        print(f"  cycle {c + 1}: p99 training {pct(train_c, 99):.1f} ms, adjacent idle {pct(idle_c, 99):.1f} ms, "
              f"ratio {ratios[-1]:.2f}")
    print(f"p99 ratio per cycle (vs adjacent idle): median {np.median(ratios):.2f}, max {max(ratios):.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
