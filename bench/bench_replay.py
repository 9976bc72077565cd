"""Replay speed (issue 13): streamseq replays beside river's SNARIMAX and Holt-Winters, in one run.

    python bench/bench_replay.py              # the table (1, 4, 30 keys) and both end-to-end targets
    python bench/bench_replay.py --quick      # smoke run: fewer windows, one end-to-end round
    python bench/bench_replay.py --only table # or: e2e4, e2e1000 (comma list)

Inputs: streamseq.synthetic.generate (hourly, horizon 24, season 24), written to a temporary folder.

(1) The table: for 1, 4 and 30 keys, a replay of the file in this process (run_backtest: windowing,
    models, calibration, ensemble, Parquet sinks; no report) with ``--models gru``, ``lstm``, the
    default set, each with learning on and ``--no-learn``, and ``seasonal_naive``. windows/s = windows
    closed / the replay's wall time (pipe.run to the sinks' close; not start-up, not scoring). Beside
    them, river's SNARIMAX and Holt-Winters (the models streamseq's baselines build, on values
    standardised by the series' mean and std) do ``learn_one`` + ``forecast(24)`` per key and window on
    the same values, on the first min(keys, 4) keys: windows/s per key.
(2) End to end through the CLI, start-up to exit (``python -m streamseq replay FILE --out D``):
    e2e4: 4 keys x 16,000 hourly windows (irregular stream, as generate writes it), default set,
          forecasts, metrics and report.html written. Target: <= 30 s on 2 cores.
    e2e1000: 1,000 keys x 600 hourly windows from CSV, ``--models gru`` (as issue 13 measured it);
          windows/s = 600,000 / wall time, beside river SNARIMAX per key on 20 of the keys' values.
          Target: >= 10x SNARIMAX.

Every figure is timed in segments that take turns round by round (one segment each per round), so
load from other work falls on all of them alike; a row prints the median of its segments and their
spread (min-max). Ratios are of medians from this run; "per round" gives the range of the ratio
taken within each round. Nothing is asserted; targets print PASS/FAIL. Figures go to
bench/results/replay.json (replay-quick.json with --quick).
"""
from __future__ import annotations

import argparse
import datetime as dt
import io
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from streamseq.commands import build_parser  # noqa: E402
from streamseq.commands.args import config_from_args  # noqa: E402
from streamseq.synthetic import generate  # noqa: E402

H = 24
RESULTS = Path(__file__).resolve().parent / "results"
CONFIGS = [  # (row label, CLI options)
    ("--models gru", ["--models", "gru"]),
    ("--models gru --no-learn", ["--models", "gru", "--no-learn"]),
    ("--models lstm", ["--models", "lstm"]),
    ("--models lstm --no-learn", ["--models", "lstm", "--no-learn"]),
    ("default set", []),
    ("default set --no-learn", ["--no-learn"]),
    ("--models seasonal_naive", ["--models", "seasonal_naive"]),
]
TARGETS = {"gru_learn_vs_snarimax": 1.0, "gru_nolearn_wps": 10_000.0, "e2e4_s": 30.0, "e2e1000_vs_snarimax": 10.0}


def summary(xs: list[float]) -> dict:
    return {"median": statistics.median(xs), "min": min(xs), "max": max(xs), "n": len(xs)}


def fmt(s: dict, unit: str = "") -> str:
    return f"{s['median']:>10,.0f}{unit} ({s['min']:,.0f}-{s['max']:,.0f})"


# -- river, per key ------------------------------------------------------------
def river_rate(kind: str, series: list[np.ndarray]) -> float:
    """learn_one + forecast(H) per key and window on standardised values: windows/s per key."""
    from streamseq.models.river_baselines import HoltWintersForecaster, SNARIMAXForecaster

    maker = (SNARIMAXForecaster if kind == "snarimax" else HoltWintersForecaster)(H, 24)
    zs = [((y - y.mean()) / (y.std() or 1.0)).tolist() for y in series]
    models = [maker.make() for _ in zs]
    t0 = time.perf_counter()
    n = 0
    can = maker.can_forecast  # Holt-Winters forecasts once it has seen a season
    for m, z in zip(models, zs):
        for i, v in enumerate(z, 1):
            m.learn_one(v)
            if can(m, i):
                m.forecast(horizon=H)
        n += len(z)
    return n / (time.perf_counter() - t0)


# -- streamseq replays in this process -----------------------------------------
def replay_rate(path: Path, opts: list[str], out: Path) -> float:
    from streamseq.backtesting import run_backtest

    a = build_parser().parse_args(["replay", str(path), "--out", str(out), "-q", "--no-progress", *opts])
    cfg = config_from_args(a)
    res = run_backtest(cfg, out, progress=False, report=False, stream=io.StringIO())
    return res.summary["windows closed"] / res.seconds


def warm_up(tmp: Path) -> None:
    """An untimed replay with every model learning: first-call costs (autograd, lazy imports, the
    model process's start) fall on none of the timed segments."""
    f = tmp / "warm.parquet"
    if not f.exists():
        generate(2, 300, irregular=False).write_parquet(f)
    replay_rate(f, [], tmp / "out")


def table(tmp: Path, keys_windows: list[tuple[int, int]], rounds: int) -> dict:
    files, values = {}, {}
    for K, W in keys_windows:
        df = generate(K, W, irregular=False, seed=K)
        files[K] = tmp / f"k{K}.parquet"
        df.write_parquet(files[K])
        values[K] = [g.sort("ts")["value"].to_numpy() for _, g in df.group_by("key", maintain_order=True)][:4]
    rates: dict = {K: {label: [] for label, _ in CONFIGS} | {"river SNARIMAX": [], "river Holt-Winters": []}
                   for K, _ in keys_windows}
    warm_up(tmp)
    for r in range(rounds):
        for K, _ in keys_windows:
            jobs = [(label, lambda o=opts, K=K: replay_rate(files[K], o, tmp / "out")) for label, opts in CONFIGS]
            jobs += [("river SNARIMAX", lambda K=K: river_rate("snarimax", values[K])),
                     ("river Holt-Winters", lambda K=K: river_rate("holt_winters", values[K]))]
            jobs = jobs[r % len(jobs):] + jobs[:r % len(jobs)]  # a different order each round
            for label, job in jobs:
                rates[K][label].append(job())
                print(f"  round {r + 1} {K:>2} keys {label:<26} {rates[K][label][-1]:>10,.0f} windows/s", flush=True)
    out = {}
    for K, W in keys_windows:
        rk = rates[K]
        rows = {label: summary(v) for label, v in rk.items()}
        sn, hw = rows["river SNARIMAX"]["median"], rows["river Holt-Winters"]["median"]
        print(f"\n{K} key(s) x {W:,} windows: windows/s, median (min-max) of {rounds} segments; "
              f"ratios of medians (per round)")
        print(f"  {'':<26} {'streamseq':>27}  {'/ SNARIMAX':>22}  {'/ Holt-Winters':>22}")
        for label, _ in CONFIGS:
            per_sn = [a / b for a, b in zip(rk[label], rk["river SNARIMAX"])]
            per_hw = [a / b for a, b in zip(rk[label], rk["river Holt-Winters"])]
            s = rows[label]
            rows[label]["vs_snarimax"] = s["median"] / sn
            rows[label]["vs_holt_winters"] = s["median"] / hw
            print(f"  {label:<26} {fmt(s)}  {s['median'] / sn:>6.2f}x ({min(per_sn):.2f}-{max(per_sn):.2f})"
                  f"  {s['median'] / hw:>6.3f}x ({min(per_hw):.3f}-{max(per_hw):.3f})")
        for label in ("river SNARIMAX", "river Holt-Winters"):
            print(f"  {label:<26} {fmt(rows[label])}   per key")
        out[str(K)] = {"windows_per_key": W, "rows": rows, "segments": rk}
    return out


# -- where a replay's time goes ------------------------------------------------
PARTS = [  # (part, (file suffix, function)): cumulative time of these functions
    ("source read + decode", [("replay.py", "next_batch")]),
    ("windowing", [("windowing.py", "process")]),
    ("gru/lstm advance", [("models/rnn.py", "advance")]),
    # in a model process: the time this process waits to hand it windows or for its answers
    ("river advance (waited for)", [("river_baselines.py", "advance"), ("offload.py", "result"),
                                    ("offload.py", "advance_async")]),
    ("naive, seasonal naive", [("models/naive.py", "advance"), ("models/naive.py", "update"),
                               ("models/naive.py", "forecast")]),
    ("calibration", [("calibration.py", "observe"), ("calibration.py", "bounds"), ("calibration.py", "record")]),
    ("ensemble", [("pipeline.py", "_ensemble")]),
    ("sinks (write + close)", [("files.py", "write"), ("files.py", "write_windows")]),  # + close, below
]


def profile(tmp: Path, keys_windows: list[tuple[int, int]]) -> dict:
    """cProfile of one replay per (keys, config) after a warm-up replay: seconds per part of the path."""
    import cProfile
    import pstats

    out = {}
    for K, W in keys_windows:
        f = tmp / f"p{K}.parquet"
        generate(K, W, irregular=False, seed=K).write_parquet(f)
        warm_up(tmp)
        for label, opts in (CONFIGS[0], CONFIGS[1], CONFIGS[4]):
            prof = cProfile.Profile()
            t0 = time.perf_counter()
            prof.enable()
            replay_rate(f, opts, tmp / "out")
            prof.disable()
            st = pstats.Stats(prof).stats  # (file, line, function) -> (cc, nc, tt, ct, callers)
            total = sum(ct for (fn, _, name), (_, _, _, ct, _) in st.items()
                        if fn.endswith("pipeline.py") and name == "run")
            close = max(ct for (fn, _, name), (_, _, _, ct, _) in st.items()
                        if fn.endswith("files.py") and name == "close")  # the sink's (it closes its files)
            total += close
            parts = {}
            for part, funcs in PARTS:
                parts[part] = sum(ct for (fn, _, name), (_, _, _, ct, _) in st.items()
                                  if any(fn.endswith(sfx) and name == fname for sfx, fname in funcs))
            parts["sinks (write + close)"] += close
            parts["other (emission, batching, sorting)"] = total - sum(parts.values())
            wall = time.perf_counter() - t0
            print(f"\n{K} key(s) x {W:,} windows, {label}: replay {total:.2f} s under the profiler "
                  f"({wall:.2f} s with scoring), {K * W / total:,.0f} windows/s profiled")
            for part, sec in parts.items():
                print(f"  {part:<38} {sec:7.2f} s  {100 * sec / total:5.1f}%  {1e6 * sec / W:8.1f} us per window end")
            out[f"{K}:{label}"] = {"total_s": total, "parts_s": parts}
    return out


# -- end to end through the CLI ------------------------------------------------
def cli_seconds(args: list[str]) -> float:
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]))
    t0 = time.perf_counter()
    p = subprocess.run([sys.executable, "-m", "streamseq", "replay", *args, "-q", "--no-progress"],
                       env=env, capture_output=True, text=True)
    dt_ = time.perf_counter() - t0
    if p.returncode:
        raise SystemExit(f"replay failed ({p.returncode}): {p.stderr[-2000:]}")
    return dt_


def e2e4(tmp: Path, windows: int, rounds: int) -> dict:
    f = tmp / "e2e4.parquet"
    generate(4, windows, seed=4).write_parquet(f)
    secs = []
    for r in range(rounds):
        secs.append(cli_seconds([str(f), "--out", str(tmp / "e2e4")]))
        print(f"  round {r + 1} 4 keys x {windows:,} windows, default set, report: {secs[-1]:.1f} s", flush=True)
    s = summary(secs)
    print(f"\n4 keys x {windows:,} hourly windows, default set, end to end (CLI, report written): "
          f"{s['median']:.1f} s ({s['min']:.1f}-{s['max']:.1f}), {4 * windows / s['median']:,.0f} windows/s")
    return {"windows_per_key": windows, "seconds": s, "segments": secs}


def e2e1000(tmp: Path, keys: int, windows: int, rounds: int) -> dict:
    f = tmp / "e2e1000.csv"
    df = generate(keys, windows, irregular=False, seed=1000)
    df.write_csv(f)
    vals = [g.sort("ts")["value"].to_numpy() for _, g in df.group_by("key", maintain_order=True)][:20]
    cli, sn = [], []
    for r in range(rounds):
        jobs = [("cli", lambda: cli.append(keys * windows / cli_seconds([str(f), "--models", "gru",
                                                                          "--out", str(tmp / "e2e1000")]))),
                ("snarimax", lambda: sn.append(river_rate("snarimax", vals)))]
        for _name, job in (jobs if r % 2 == 0 else jobs[::-1]):
            job()
        print(f"  round {r + 1} {keys} keys x {windows} windows CLI --models gru {cli[-1]:,.0f} windows/s; "
              f"SNARIMAX {sn[-1]:,.0f} per key", flush=True)
    c, s = summary(cli), summary(sn)
    per = [a / b for a, b in zip(cli, sn)]
    print(f"\n{keys:,} keys x {windows} windows from CSV, --models gru, end to end: {fmt(c)} windows/s; "
          f"river SNARIMAX per key {fmt(s)}; ratio {c['median'] / s['median']:.2f}x "
          f"(per round {min(per):.2f}-{max(per):.2f})")
    return {"keys": keys, "windows_per_key": windows, "cli_wps": c, "snarimax_wps": s,
            "ratio": c["median"] / s["median"], "segments": {"cli": cli, "snarimax": sn}}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--rounds", type=int, default=None, help="segments per figure (default 3; --quick 2)")
    ap.add_argument("--table-windows", default=None,
                    help="windows per key of the 1, 4 and 30 key rows (default 5000,5000,1000; --quick 1000,500,200)")
    ap.add_argument("--e2e-rounds", type=int, default=None, help="segments of the end-to-end runs (default 2; --quick 1)")
    ap.add_argument("--only", default="table,e2e4,e2e1000", help="comma list of table, e2e4, e2e1000, profile")
    a = ap.parse_args()
    only = set(a.only.split(","))
    rounds = a.rounds or (2 if a.quick else 3)
    tw = a.table_windows or ("1000,500,200" if a.quick else "5000,5000,1000")
    kw = list(zip((1, 4, 30), (int(w) for w in tw.split(","))))
    res: dict = {"when": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"), "host": platform.node(),
                 "cpus": os.cpu_count(), "load_before": os.getloadavg(), "rounds": rounds}
    with tempfile.TemporaryDirectory() as d:
        tmp = Path(d)
        if "profile" in only:
            res["profile"] = profile(tmp, kw)
        if "table" in only:
            res["table"] = table(tmp, kw, rounds)
        if "e2e4" in only:
            res["e2e4"] = e2e4(tmp, 2000 if a.quick else 16_000, a.e2e_rounds or (1 if a.quick else 2))
        if "e2e1000" in only:
            res["e2e1000"] = e2e1000(tmp, 100 if a.quick else 1000, 600, a.e2e_rounds or (1 if a.quick else 2))
    res["load_after"] = os.getloadavg()
    print(f"\nload average before {res['load_before'][0]:.1f}, after {res['load_after'][0]:.1f} "
          f"({os.cpu_count()} cpus)\ntargets (issue 13):")
    if "table" in res:
        one = res["table"]["1"]["rows"]
        v = one["--models gru"]["vs_snarimax"]
        print(f"  {'PASS' if v >= TARGETS['gru_learn_vs_snarimax'] else 'FAIL'} 1 key --models gru learning: "
              f"{v:.2f}x SNARIMAX (target >= 1x)")
        w = one["--models gru --no-learn"]["median"]
        print(f"  {'PASS' if w >= TARGETS['gru_nolearn_wps'] else 'FAIL'} 1 key --models gru --no-learn: "
              f"{w:,.0f} windows/s (target >= 10,000)")
    if "e2e4" in res:
        s = res["e2e4"]["seconds"]["median"]
        print(f"  {'PASS' if s <= TARGETS['e2e4_s'] else 'FAIL'} 4 keys x {res['e2e4']['windows_per_key']:,} "
              f"windows, default set, end to end: {s:.1f} s (target <= 30 s)")
    if "e2e1000" in res:
        v = res["e2e1000"]["ratio"]
        print(f"  {'PASS' if v >= TARGETS['e2e1000_vs_snarimax'] else 'FAIL'} {res['e2e1000']['keys']:,} keys x 600 "
              f"windows CLI --models gru: {v:.2f}x SNARIMAX per key (target >= 10x)")
    RESULTS.mkdir(exist_ok=True)
    path = RESULTS / ("replay-quick.json" if a.quick else "replay.json")
    path.write_text(json.dumps(res, indent=1))
    print(f"figures: {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
