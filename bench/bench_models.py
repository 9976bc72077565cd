"""Throughput and memory of the forecasters, side by side in one run.

    python bench/bench_models.py            # full sizes, < 10 min on 2 idle cores
    python bench/bench_models.py --quick    # smoke run, < 1 min
    python bench/bench_models.py --profile  # also: torch profiler over batched GRU learning steps
    OMP_WAIT_POLICY=PASSIVE python bench/bench_models.py  # on a machine shared with other work

Figures (windows/s = key-windows advanced and forecast per second):

  (a) batched GRU, inference only: per window end, update(all slots) + forecast(all slots)
  (b) batched GRU, online learning (truncated BPTT over 8 windows + Adam): the same loop
  (c) per-key GRU loop: the work of (b) with one StatefulRNNForecaster call per key and
      window (a one-element slots array), on a SUBSET of keys and windows; also its
      inference-only twin
  (d) river SNARIMAX per key (SNARIMAXForecaster: learn_one + forecast(24) per key), on a SUBSET
  (e) LSTM (a) and (b); the whole Pipeline (build_pipeline, models ["gru"], learn off and on)
      fed ObservationBatch chunks: windowing, model, conformal intervals; decoding excluded
  state bytes per key (snapshot of one slot, arena nbytes / capacity) and peak RSS per key at
  two key counts, each in a fresh subprocess, minus a subprocess that only imported.

The timed part of every figure is cut into segments and the figures take turns, one
segment each per round, so that load from other work on a shared machine falls on all of
them alike; a figure's rate is its key-windows over its seconds, summed over segments, and
the spread of its segment rates is printed next to it. Warm-up windows run untimed first.

Inputs for (a)-(e): streamseq.synthetic.generate(keys, windows, irregular=False): one
observation per key and window, so the observed value is the window's mean. The RSS
subprocesses make their values with numpy one window at a time (a sinusoid per key plus
noise) so that no input frame inflates the peak they measure.

Targets are printed as PASS/FAIL lines; nothing is asserted. Figures go to
bench/results/models.json (models-quick.json with --quick).
"""
from __future__ import annotations

import argparse
import dataclasses
import datetime as dt
import json
import os
import platform
import resource
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from streamseq import config as ss_config
from streamseq.compose import build_pipeline
from streamseq.grid import FixedGrid
from streamseq.models import RNNConfig, StatefulRNNForecaster
from streamseq.models.features import calendar_periods
from streamseq.models.river_baselines import SNARIMAXForecaster
from streamseq.records import ObservationBatch
from streamseq.synthetic import generate
from streamseq.threads import set_threads

H = 24
HIDDEN = 64
TBPTT = 8
DEFAULT_THREADS = 2  # the issue asks for set_threads(2); --threads overrides
SEASON = 24
INTERVAL_NS = 3600 * 10**9
START_NS = 1_704_067_200 * 10**9  # 2024-01-01 UTC, generate()'s default start
WID0 = START_NS // INTERVAL_NS  # id of the first window
RESULTS = Path(__file__).resolve().parent / "results"

# Targets from the issue.
LEARN_VS_PERKEY = 20.0
LEARN_VS_SNARIMAX = 10.0
INFER_MIN_WPS = 500_000.0  # issue 13 (issue 7 asked 100k)
STATE_MAX_BYTES = 4096.0

# Names under which RNNConfig might one day learn on every n-th window only (it has none today).
LEARN_INTERVAL_FIELDS = ("learn_every", "learn_interval", "update_every", "step_every")
RSS_KINDS = ("model", "model-learn", "pipeline", "pipeline-learn")


@dataclass(frozen=True)
class Sizes:
    keys: int
    windows: int
    warmup: int  # leading windows run untimed; learning starts once a key has H + 1 windows
    perkey_keys: int
    perkey_windows: int
    perkey_warmup: int
    river_keys: int
    river_windows: int
    river_warmup: int
    rounds: int  # segments per figure, taken in turns
    rss_keys: tuple[int, ...]
    rss_windows: int  # windows each RSS subprocess runs; > H + 1 so that learning happens
    chunk_rows: int  # rows per ObservationBatch fed to the Pipeline
    rss_kinds: tuple[str, ...] = RSS_KINDS


FULL = Sizes(1000, 2000, 50, 20, 200, 30, 100, 200, 20, 10, (1000, 100_000), H + 5, 65_536)
QUICK = Sizes(100, 150, 30, 4, 40, 27, 20, 50, 20, 3, (1000, 10_000), H + 3, 4_096, ("model", "pipeline-learn"))

_T0 = time.perf_counter()


def log(msg: str) -> None:
    """A progress line with the seconds since the start."""
    print(f"[{time.perf_counter() - _T0:4.0f} s] {msg}", flush=True)


def machine() -> dict:
    cpu = platform.processor() or ""
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next(line.split(":", 1)[1].strip() for line in f if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    return {"nproc": os.cpu_count(), "cpu": cpu, "python": platform.python_version(),
            "torch": torch.__version__, "torch_threads": torch.get_num_threads(),
            "omp_wait_policy": os.environ.get("OMP_WAIT_POLICY", "(unset)"),
            "loadavg_start": os.getloadavg()[0]}


def rnn(cell: str, learn: bool, **kw) -> StatefulRNNForecaster:
    """The model an hourly stream with a daily season gets (factory.rnn_config): seasonal lags, calendar."""
    m = StatefulRNNForecaster(RNNConfig(cell=cell, hidden=HIDDEN, horizon=H, tbptt=TBPTT, learn=learn,
                                        season=SEASON, calendar=",".join(calendar_periods(INTERVAL_NS)), **kw))
    m.bind_grid(FixedGrid(INTERVAL_NS))
    return m


def pipeline_config(learn: bool, threads: int):
    return ss_config.from_dict({
        "threads": threads,
        "forecast": {"horizon": H, "season": SEASON, "models": ["gru"], "ensemble": False},
        "rnn": {"hidden": HIDDEN, "tbptt": TBPTT, "learn": learn},
    })


# -- throughput: each runner warms up, then yields (seconds, key-windows) per segment ----------
Segment = tuple[float, int]


def cuts(lo: int, hi: int, n: int) -> list[tuple[int, int]]:
    b = np.linspace(lo, hi, n + 1).round().astype(int).tolist()
    return list(zip(b[:-1], b[1:]))


def run_batched(model, values: np.ndarray, warmup: int, rounds: int) -> Iterator[Segment]:
    """One update + forecast over all keys per window; values: (W, K) window means."""
    W, K = values.shape
    slots, filled = np.arange(K), np.zeros(K, bool)
    x = values[:, :, None]  # (W, K, 1)
    model.ensure_capacity(K)
    for w in range(warmup):
        model.update(slots, x[w], filled, WID0 + w)
        model.forecast(slots)
    for a, b in cuts(warmup, W, rounds):
        t0 = time.perf_counter()
        for w in range(a, b):
            model.update(slots, x[w], filled, WID0 + w)
            model.forecast(slots)
        yield time.perf_counter() - t0, (b - a) * K


def run_per_key(model, values: np.ndarray, warmup: int, rounds: int) -> Iterator[Segment]:
    """The same work, one call per key and window (a one-element slots array)."""
    W, K = values.shape
    one = [np.array([k]) for k in range(K)]
    filled = np.zeros(1, bool)
    x = values[:, :, None]
    model.ensure_capacity(K)

    def windows(a: int, b: int) -> None:
        for w in range(a, b):
            for k in range(K):
                model.update(one[k], x[w, k:k + 1], filled, WID0 + w)
                model.forecast(one[k])

    windows(0, warmup)
    for a, b in cuts(warmup, W, rounds):
        t0 = time.perf_counter()
        windows(a, b)
        yield time.perf_counter() - t0, (b - a) * K


def observation_arrays(frame) -> dict:
    """ObservationBatch columns of the whole synthetic frame (built once, outside any timing)."""
    n = frame.height
    return {
        "keys": frame["key"].to_numpy(),  # object array of str
        "ts": frame["ts"].cast(int).to_numpy(),
        "values": frame["value"].to_numpy().reshape(-1, 1).astype(np.float64),
        "partition": np.zeros(n, np.int32),
        "offset": np.arange(n, dtype=np.int64),
    }


def feed(pipe, cols: dict, lo: int, hi: int, chunk: int) -> None:
    for a in range(lo, hi, chunk):
        b = min(a + chunk, hi)
        pipe.process(ObservationBatch(cols["keys"][a:b], cols["ts"][a:b], cols["values"][a:b],
                                      cols["partition"][a:b], cols["offset"][a:b]))


def windows_done(pipe) -> int:
    return pipe.stats.windows_closed + pipe.stats.windows_filled


def run_pipeline(pipe, cols: dict, keys: int, windows: int, warmup: int, chunk: int,
                 rounds: int) -> Iterator[Segment]:
    """Rows are sorted by ts then key, so window w is rows [w * keys, (w + 1) * keys)."""
    feed(pipe, cols, 0, warmup * keys, chunk)
    parts = cuts(warmup, windows, rounds)
    for i, (a, b) in enumerate(parts):
        before = windows_done(pipe)
        t0 = time.perf_counter()
        feed(pipe, cols, a * keys, b * keys, chunk)
        if i == len(parts) - 1:
            pipe.finish()
        yield time.perf_counter() - t0, windows_done(pipe) - before


def take_turns(runners: dict[str, Iterator[Segment]], rounds: int) -> dict[str, list[Segment]]:
    segs: dict[str, list[Segment]] = {name: [] for name in runners}
    for r in range(rounds):
        for name, it in runners.items():
            segs[name].append(next(it))
        log(f"round {r + 1}/{rounds} done")
    return segs


def summarise(segs: list[Segment], **extra) -> dict:
    sec = sum(s for s, _ in segs)
    n = sum(k for _, k in segs)
    rates = sorted(k / s for s, k in segs)
    return {"windows": n, "seconds": sec, "windows_per_s": n / sec, "us_per_window": sec / n * 1e6,
            "segment_rates": {"min": rates[0], "median": rates[len(rates) // 2], "max": rates[-1]}, **extra}


# -- state and memory ---------------------------------------------------------------------------
def arena_nbytes_per_slot(obj, capacity: int) -> float:
    """nbytes of every array/tensor attribute with `capacity` rows, summed, divided by capacity."""
    total = 0
    for v in vars(obj).values():
        if isinstance(v, torch.Tensor) and v.dim() and v.shape[0] == capacity:
            total += v.element_size() * v.nelement()
        elif isinstance(v, np.ndarray) and v.ndim and v.shape[0] == capacity:
            total += v.nbytes
    return total / capacity


def pipeline_state_bytes(pipe) -> dict:
    """Bytes of Pipeline.snapshot_keys for one key, by component."""
    key = next(k for k, _ in pipe.keys.items())
    by_part: dict[str, int] = {}
    for name, arr in pipe.snapshot_keys([key]).items():
        part = name.split("/")[0]
        by_part[part] = by_part.get(part, 0) + int(arr.nbytes)
    return {"total": sum(by_part.values()), "by_component": by_part}


def proc_status_bytes(field: str) -> int:
    """VmHWM / VmRSS in bytes. Per address space, so exact in a fresh child; ru_maxrss is not:
    after subprocess's vfork + exec it can carry the parent's peak."""
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1]) * 1024
    return -1


def synthetic_window(w: int, level, amp, phase, rng) -> np.ndarray:
    return level + amp * np.sin(2 * np.pi * w / SEASON + phase) + rng.standard_normal(level.size) * 0.02 * level


def rss_child(kind: str, keys: int, windows: int, threads: int) -> dict:
    """Runs in a fresh interpreter; kind: baseline | model | model-learn | pipeline | pipeline-learn."""
    set_threads(threads)
    out: dict = {"kind": kind, "keys": keys}
    rng = np.random.default_rng(0)
    level = rng.uniform(20, 100, keys)
    amp = rng.uniform(0.05, 0.3, keys) * level
    phase = rng.uniform(0, 2 * np.pi, keys)
    if kind.startswith("model"):
        model = rnn("gru", learn=kind.endswith("learn"))
        model.ensure_capacity(keys)
        slots, filled = np.arange(keys), np.zeros(keys, bool)
        for w in range(windows):
            model.update(slots, synthetic_window(w, level, amp, phase, rng)[:, None], filled)
            model.forecast(slots)
        out["capacity"] = keys
        out["learned"] = bool(np.isfinite(model.last_loss))
    elif kind.startswith("pipeline"):
        pipe = build_pipeline(pipeline_config(kind.endswith("learn"), threads))
        names = np.array([f"k{i:06d}" for i in range(keys)], dtype=object)
        part = np.zeros(keys, np.int32)
        for w in range(windows):
            v = synthetic_window(w, level, amp, phase, rng)
            pipe.process(ObservationBatch(names, np.full(keys, START_NS + w * INTERVAL_NS, np.int64),
                                          v[:, None], part, w * keys + np.arange(keys, dtype=np.int64)))
        pipe.finish()
        out["capacity"] = pipe.keys.capacity
        out["learned"] = bool(np.isfinite(pipe.models["gru"].last_loss))
    out["hwm"] = proc_status_bytes("VmHWM")
    out["rss_end"] = proc_status_bytes("VmRSS")
    out["ru_maxrss"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    return out


def run_child(kind: str, keys: int, windows: int, threads: int) -> dict:
    cmd = [sys.executable, __file__, "--threads", str(threads), "--rss-child", kind, str(keys), str(windows)]
    done = subprocess.run(cmd, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        return {"kind": kind, "keys": keys, "error": done.stderr.strip().splitlines()[-1:]}
    return json.loads(done.stdout.strip().splitlines()[-1])


def bench_memory(sizes: Sizes, threads: int) -> dict:
    base = run_child("baseline", 0, 0, threads)
    rows = []
    for keys in sizes.rss_keys:
        for kind in sizes.rss_kinds:
            r = run_child(kind, keys, sizes.rss_windows, threads)
            if "error" not in r:
                r["peak_per_key"] = (r["hwm"] - base["hwm"]) / keys
                r["end_per_key"] = (r["rss_end"] - base["rss_end"]) / keys
            rows.append(r)
            log(f"rss {kind:15s} {keys:>7,d} keys: "
                + (f"peak {r['peak_per_key']:8.0f} B/key, end {r['end_per_key']:8.0f} B/key"
                   if "error" not in r else f"failed: {r['error']}"))
    # Between the two key counts the fixed cost of the first torch ops cancels.
    lo, hi = min(sizes.rss_keys), max(sizes.rss_keys)
    by = {(r["kind"], r["keys"]): r for r in rows if "error" not in r}
    marginal = {kind: (by[kind, hi]["hwm"] - by[kind, lo]["hwm"]) / (hi - lo)
                for kind in sizes.rss_kinds if (kind, lo) in by and (kind, hi) in by}
    return {"baseline": base, "windows": sizes.rss_windows, "rows": rows, "marginal_peak_per_key": marginal}


# -- optional: where a learning step spends its time ---------------------------------------------
def profile_learning(values: np.ndarray, warmup: int, steps: int = 30) -> str:
    from torch.profiler import ProfilerActivity, profile

    model = rnn("gru", learn=True)
    next(run_batched(model, values[: warmup + 1], warmup, 1))
    W, K = values.shape
    slots, filled = np.arange(K), np.zeros(K, bool)
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        for w in range(warmup + 1, warmup + 1 + steps):
            model.update(slots, values[w % W][:, None], filled)
            model.forecast(slots)
    return prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=25)


# -- main ----------------------------------------------------------------------------------------
def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true", help="small sizes, < 1 min (smoke run)")
    ap.add_argument("--profile", action="store_true", help="also profile batched GRU learning steps")
    ap.add_argument("--threads", type=int, default=DEFAULT_THREADS,
                    help=f"torch intra-op threads (default {DEFAULT_THREADS})")
    ap.add_argument("--no-rss", action="store_true", help="skip the RSS subprocesses")
    ap.add_argument("--out", default=None, help="JSON path (default bench/results/models[-quick].json)")
    ap.add_argument("--rss-child", nargs=3, metavar=("KIND", "KEYS", "WINDOWS"), help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.rss_child:
        kind, keys, windows = args.rss_child
        print(json.dumps(rss_child(kind, int(keys), int(windows), args.threads)))
        return 0

    sz = QUICK if args.quick else FULL
    set_threads(args.threads)
    info = machine()
    print(f"streamseq model bench, {'quick' if args.quick else 'full'}: {info['nproc']} cpu ({info['cpu']}), "
          f"torch {info['torch']} with {info['torch_threads']} threads, OMP_WAIT_POLICY {info['omp_wait_policy']}, "
          f"load average {info['loadavg_start']:.1f}")

    t0 = time.perf_counter()
    frame = generate(sz.keys, sz.windows, irregular=False)
    values = frame["value"].to_numpy().reshape(sz.windows, sz.keys)  # (W, K): window means
    cols = observation_arrays(frame)
    del frame
    log(f"inputs: synthetic.generate({sz.keys}, {sz.windows}, irregular=False) as ({sz.windows}, {sz.keys}) "
        f"window values, in {time.perf_counter() - t0:.1f} s")

    K, W = sz.keys, sz.windows
    models = {f"{cell}_batched_{'learn' if learn else 'infer'}": rnn(cell, learn)
              for cell in ("gru", "lstm") for learn in (False, True)}
    runners: dict[str, Iterator[Segment]] = {
        name: run_batched(m, values, sz.warmup, sz.rounds) for name, m in models.items()}
    scope = {name: (K, W - sz.warmup, False) for name in models}

    fields = {f.name for f in dataclasses.fields(RNNConfig)}
    interval_field = next((f for f in LEARN_INTERVAL_FIELDS if f in fields), None)
    if interval_field:
        for every in (1, 4):
            name = f"gru_batched_learn_every{every}"
            m = rnn("gru", True, **{interval_field: every})
            runners[name] = run_batched(m, values, sz.warmup, sz.rounds)
            scope[name] = (K, W - sz.warmup, False)
    else:
        print(f"RNNConfig has no learning-interval field ({', '.join(LEARN_INTERVAL_FIELDS)}): "
              "learning on every window only")

    sub = values[: sz.perkey_windows, : sz.perkey_keys]
    for learn in (True, False):
        name = f"gru_per_key_{'learn' if learn else 'infer'}"
        runners[name] = run_per_key(rnn("gru", learn), sub, sz.perkey_warmup, sz.rounds)
        scope[name] = (sz.perkey_keys, sz.perkey_windows - sz.perkey_warmup, True)

    snarimax = SNARIMAXForecaster(H, SEASON)
    runners["snarimax_per_key"] = run_batched(
        snarimax, values[: sz.river_windows, : sz.river_keys], sz.river_warmup, sz.rounds)
    scope["snarimax_per_key"] = (sz.river_keys, sz.river_windows - sz.river_warmup, True)

    pipes = {f"pipeline_gru_{'learn' if learn else 'infer'}": build_pipeline(pipeline_config(learn, args.threads))
             for learn in (False, True)}
    for name, pipe in pipes.items():
        runners[name] = run_pipeline(pipe, cols, K, W, sz.warmup, sz.chunk_rows, sz.rounds)
        scope[name] = (K, W - sz.warmup, False)

    log(f"timing {len(runners)} figures in {sz.rounds} rounds, one segment each per round "
        f"(warm-up in the first)")
    segs = take_turns(runners, sz.rounds)
    res = {}
    for name, s in segs.items():
        k, w, subset = scope[name]
        res[name] = summarise(s, keys=k, timed_windows_per_key=w, subset=subset)
    res["snarimax_per_key"]["diverged"] = snarimax.diverged
    for name, pipe in pipes.items():
        res[name]["chunk_rows"] = sz.chunk_rows
        res[name]["forecasts_out"] = pipe.stats.forecasts_out
    state = {
        "gru_snapshot": models["gru_batched_learn"].state_nbytes_per_key(),
        "gru_arena": arena_nbytes_per_slot(models["gru_batched_learn"], K),
        "lstm_snapshot": models["lstm_batched_learn"].state_nbytes_per_key(),
        "pipeline_snapshot": pipeline_state_bytes(pipes["pipeline_gru_learn"]),
    }
    del cols, pipes, runners

    memory = None
    if not args.no_rss:
        log("peak RSS, one fresh subprocess each:")
        memory = bench_memory(sz, args.threads)

    profile_table = profile_learning(values, sz.warmup) if args.profile else None

    # -- table and targets -------------------------------------------------------------------
    rate = {name: r["windows_per_s"] for name, r in res.items()}
    gl, gi = rate["gru_batched_learn"], rate["gru_batched_infer"]
    ratios = {
        "gru_batched_learn / gru_per_key_learn": gl / rate["gru_per_key_learn"],
        "gru_batched_infer / gru_per_key_infer": gi / rate["gru_per_key_infer"],
        "gru_batched_learn / snarimax_per_key": gl / rate["snarimax_per_key"],
        "gru_batched_infer / gru_batched_learn": gi / gl,
        "lstm_batched_learn / gru_batched_learn": rate["lstm_batched_learn"] / gl,
        "pipeline_gru_infer / gru_batched_infer": rate["pipeline_gru_infer"] / gi,
        "pipeline_gru_learn / gru_batched_learn": rate["pipeline_gru_learn"] / gl,
    }
    psnap = state["pipeline_snapshot"]
    targets = [
        (f"batched GRU learning >= {LEARN_VS_PERKEY:.0f}x the per-key loop",
         ratios["gru_batched_learn / gru_per_key_learn"], LEARN_VS_PERKEY, "x"),
        (f"batched GRU learning >= {LEARN_VS_SNARIMAX:.0f}x river SNARIMAX",
         ratios["gru_batched_learn / snarimax_per_key"], LEARN_VS_SNARIMAX, "x"),
        (f"batched GRU inference >= {INFER_MIN_WPS:,.0f} windows/s", gi, INFER_MIN_WPS, " windows/s"),
        ("GRU model state <= 4 KB/key (snapshot of a slot)", state["gru_snapshot"], -STATE_MAX_BYTES, " B"),
        ("Pipeline state <= 4 KB/key (snapshot of a key)", psnap["total"], -STATE_MAX_BYTES, " B"),
    ]
    if memory:
        big = max(sz.rss_keys)
        for r in memory["rows"]:
            if r["keys"] == big and "error" not in r:
                m = memory["marginal_peak_per_key"].get(r["kind"])
                unit = f" B  (marginal {m:,.0f} B)" if m is not None else " B"
                targets.append((f"{r['kind']} peak RSS <= 4 KB/key at {big:,} keys", r["peak_per_key"],
                                -STATE_MAX_BYTES, unit))
    # A negative bound is an upper bound.
    checks = [(label, value, value <= -bound if bound < 0 else value >= bound, unit)
              for label, value, bound, unit in targets]

    print()
    print(f"{'figure':22s} {'windows/s':>11s} {'us/window':>10s} {'segment windows/s min-max':>26s}  timed")
    for name, r in res.items():
        sr = r["segment_rates"]
        what = f"{r['keys']:,} keys x {r['timed_windows_per_key']:,} windows" + (" (SUBSET)" if r["subset"] else "")
        print(f"{name:22s} {r['windows_per_s']:11,.0f} {r['us_per_window']:10.2f} "
              f"{sr['min']:>12,.0f} - {sr['max']:<11,.0f}  {what}")
    print()
    for k, v in ratios.items():
        print(f"ratio {k:40s} {v:8.1f}x")
    print()
    print(f"state per key: GRU snapshot {state['gru_snapshot']:.0f} B (arena nbytes / capacity "
          f"{state['gru_arena']:.0f} B), LSTM snapshot {state['lstm_snapshot']:.0f} B, Pipeline snapshot "
          f"{psnap['total']:.0f} B = " + " + ".join(f"{k} {v}" for k, v in psnap["by_component"].items()))
    if memory:
        b = memory["baseline"]
        print(f"peak RSS (VmHWM) per key = (peak - baseline) / keys, baseline a process that only imported "
              f"({b['hwm'] / 2**20:.0f} MiB); each ran {memory['windows']} windows over all keys:")
        print(f"  {'kind':16s} {'keys':>8s} {'capacity':>9s} {'peak B/key':>11s} {'end B/key':>10s} {'learned':>8s}")
        for r in memory["rows"]:
            if "error" in r:
                print(f"  {r['kind']:16s} {r['keys']:>8,d}  failed: {r['error']}")
                continue
            print(f"  {r['kind']:16s} {r['keys']:>8,d} {r['capacity']:>9,d} {r['peak_per_key']:11,.0f} "
                  f"{r['end_per_key']:10,.0f} {str(r['learned']):>8s}")
        lo, hi = min(sz.rss_keys), max(sz.rss_keys)
        print(f"  marginal peak B/key from {lo:,} to {hi:,} keys (fixed costs cancel): "
              + ", ".join(f"{k} {v:,.0f}" for k, v in memory["marginal_peak_per_key"].items()))
    print()
    for label, value, ok, unit in checks:
        shown = f"{value:,.1f}{unit}" if unit == "x" else f"{value:,.0f}{unit}"
        print(f"{'PASS' if ok else 'FAIL'}  {label:50s} {shown}")
    if profile_table:
        print("\ntorch profiler, 30 batched GRU learning steps (update + forecast), by self CPU time:")
        print(profile_table)

    elapsed = time.perf_counter() - _T0
    info["loadavg_end"] = os.getloadavg()[0]
    print(f"\ntotal {elapsed:.0f} s; load average {info['loadavg_start']:.1f} at the start, "
          f"{info['loadavg_end']:.1f} at the end (above {info['nproc']}: other work shared the cores)")
    if info["loadavg_start"] > info["nproc"] or info["loadavg_end"] > info["nproc"]:
        print("WARNING: other work shared the cores; every figure is slower than on idle cores.")
        if args.threads > 1 and info["omp_wait_policy"].upper() != "PASSIVE":
            print(f"WARNING: OpenMP threads that spin while they wait make torch with {args.threads} threads many "
                  "times slower on shared cores (the per-key loops and river much less): rerun with "
                  "OMP_WAIT_POLICY=PASSIVE or --threads 1 (see bench/README.md)")
    out = Path(args.out) if args.out else RESULTS / ("models-quick.json" if args.quick else "models.json")
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({
        "date": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "mode": "quick" if args.quick else "full",
        "machine": info,
        "sizes": dataclasses.asdict(sz),
        "inputs": "streamseq.synthetic.generate(keys, windows, irregular=False); RSS subprocesses: numpy sinusoid",
        "throughput": res,
        "ratios": ratios,
        "state_bytes_per_key": state,
        "memory": memory,
        "targets": [{"target": c[0], "value": c[1], "pass": c[2]} for c in checks],
        "total_seconds": elapsed,
    }, indent=2))
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
