"""Synthetic multi-key sensor streams of any size, deterministic in their arguments.

Each key is level + linear trend + daily and weekly seasonality (amplitude and
phase drawn per key) + AR(1) noise at the window level + white noise per
observation. With ``regimes`` each key has 1-3 change points where its level
shifts and its daily amplitude is rescaled. With ``irregular`` timestamps are
jittered uniformly inside their window and separate short runs of windows
(1-6) are left empty, about 3 % of all windows.

>>> df = generate(n_keys=3, n_windows=48, seed=1)
>>> df.columns
['key', 'ts', 'value']
>>> df["key"].unique().sort().to_list()
['k00000', 'k00001', 'k00002']
>>> str(df.schema["ts"])
"Datetime(time_unit='ns', time_zone='UTC')"
>>> df.equals(generate(n_keys=3, n_windows=48, seed=1))
True
>>> generate(n_keys=2, n_windows=3, irregular=False).height
6
"""
from __future__ import annotations

import argparse
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import polars as pl

from .errors import ConfigError
from .timeutil import parse_duration

_DAY_NS = 86_400 * 10**9
_MAX_CHANGES = 3
_GAP_START_P = 0.008  # per key and window; with lengths 1-6 (mean 3.5) about 2.7 % of windows are empty
_GAP_MAX = 6


@dataclass(frozen=True)
class KeyParams:
    """What was drawn per key (arrays of shape (K,) or (K, _MAX_CHANGES)); tests read the regimes here."""

    level: np.ndarray
    drift: np.ndarray  # total trend over the generated span, in value units
    daily_amp: np.ndarray
    daily_phase: np.ndarray
    weekly_amp: np.ndarray
    weekly_phase: np.ndarray
    ar_phi: np.ndarray
    ar_sd: np.ndarray
    obs_sd: np.ndarray
    change_at: np.ndarray  # (K, R) window index where a regime starts; n_windows when unused
    level_shift: np.ndarray  # (K, R) added to the level from change_at on
    amp_factor: np.ndarray  # (K, R) multiplies the daily amplitude from change_at on


def draw_key_params(n_keys: int, n_windows: int, seed: int = 0, regimes: bool = True) -> KeyParams:
    """The per-key parameters ``generate`` uses for the same arguments."""
    rng = np.random.default_rng(np.random.SeedSequence(seed).spawn(2)[0])
    k = n_keys
    level = rng.uniform(20.0, 100.0, k)
    drift = rng.uniform(-0.3, 0.3, k) * level
    daily_amp = rng.uniform(0.05, 0.3, k) * level
    daily_phase = rng.uniform(0.0, 2 * np.pi, k)
    weekly_amp = rng.uniform(0.02, 0.15, k) * level
    weekly_phase = rng.uniform(0.0, 2 * np.pi, k)
    ar_phi = rng.uniform(0.5, 0.9, k)
    ar_sd = rng.uniform(0.01, 0.04, k) * level
    obs_sd = rng.uniform(0.01, 0.04, k) * level
    # Drawn even without regimes so that the switch changes nothing else.
    n_changes = rng.integers(1, _MAX_CHANGES + 1, k)
    change_at = np.sort(rng.uniform(0.1, 0.9, (k, _MAX_CHANGES)), axis=1)
    change_at = np.floor(change_at * n_windows).astype(np.int64)
    sign = rng.choice([-1.0, 1.0], (k, _MAX_CHANGES))
    size = rng.uniform(0.15, 0.5, (k, _MAX_CHANGES)) * level[:, None]
    total = np.zeros(k)
    for r in range(_MAX_CHANGES):  # turn back once the level has moved far: keeps the level positive
        sign[:, r] = np.where(total < -0.3 * level, 1.0, np.where(total > 0.6 * level, -1.0, sign[:, r]))
        total += sign[:, r] * size[:, r]
    level_shift = sign * size
    amp_factor = np.exp(rng.uniform(np.log(0.5), np.log(2.0), (k, _MAX_CHANGES)))
    unused = np.arange(_MAX_CHANGES)[None, :] >= n_changes[:, None]
    if not regimes:
        unused[:] = True
    change_at[unused] = n_windows
    level_shift[unused] = 0.0
    amp_factor[unused] = 1.0
    return KeyParams(level, drift, daily_amp, daily_phase, weekly_amp, weekly_phase,
                     ar_phi, ar_sd, obs_sd, change_at, level_shift, amp_factor)


def _ar1_windows(rng: np.random.Generator, p: KeyParams, n_windows: int) -> np.ndarray:
    """(K, W) AR(1) noise at the window level, stationary from the first window."""
    shocks = rng.standard_normal((n_windows, p.level.size)) * p.ar_sd  # (W, K)
    out = np.empty_like(shocks)
    out[0] = shocks[0] / np.sqrt(1.0 - p.ar_phi**2)
    for w in range(1, n_windows):  # a loop over windows, vectorised over keys
        out[w] = p.ar_phi * out[w - 1] + shocks[w]
    return out.T


def _counts(rng: np.random.Generator, n_keys: int, n_windows: int,
            obs_per_window: float, irregular: bool) -> np.ndarray:
    """(K, W) observations per window: floor(obs_per_window) plus one with the fractional part's probability."""
    base = int(np.floor(obs_per_window))
    counts = base + (rng.random((n_keys, n_windows)) < obs_per_window - base)
    if irregular:
        drawn = rng.random((n_keys, n_windows)) < _GAP_START_P
        starts = drawn.copy()
        for d in range(1, min(_GAP_MAX, n_windows - 1) + 1):  # drop a start close after another: runs never merge
            starts[:, d:] &= ~drawn[:, : n_windows - d]
        lengths = rng.integers(1, _GAP_MAX + 1, (n_keys, n_windows))
        empty = np.zeros((n_keys, n_windows), dtype=bool)
        for d in range(min(_GAP_MAX, n_windows)):
            empty[:, d:] |= (starts & (lengths > d))[:, : n_windows - d]
        counts[empty] = 0
    return counts.astype(np.int64)


def generate(
    n_keys: int,
    n_windows: int,
    interval: str = "1h",
    seed: int = 0,
    obs_per_window: float = 1.0,
    irregular: bool = True,
    regimes: bool = True,
    start: str = "2024-01-01",
) -> pl.DataFrame:
    """A frame ``key, ts, value`` sorted by ts then key; the same arguments give the same frame.

    Windows are ``[start + i * interval, start + (i + 1) * interval)`` in UTC. Without
    ``irregular`` every window holds exactly ``obs_per_window`` observations (when whole),
    evenly spaced from the window start.
    """
    if n_keys < 1:
        raise ConfigError("n_keys", f"at least 1, got {n_keys}")
    if n_windows < 1:
        raise ConfigError("n_windows", f"at least 1, got {n_windows}")
    if not obs_per_window > 0:
        raise ConfigError("obs_per_window", f"a positive number, got {obs_per_window}")
    step = parse_duration(interval, "interval")
    if step <= 0:
        raise ConfigError("interval", f"a positive duration, got {interval!r}")
    start_ns = int(np.datetime64(str(start).rstrip("Zz"), "ns").astype(np.int64))

    p = draw_key_params(n_keys, n_windows, seed, regimes)
    rng = np.random.default_rng(np.random.SeedSequence(seed).spawn(2)[1])
    ar = _ar1_windows(rng, p, n_windows)  # (K, W)
    counts = _counts(rng, n_keys, n_windows, obs_per_window, irregular)  # (K, W)

    # Rows in window-major order, keys ascending inside a window.
    flat = counts.T.ravel()  # (W*K,)
    n = int(flat.sum())
    cell = np.repeat(np.arange(flat.size, dtype=np.int64), flat)  # (N,)
    win, key = np.divmod(cell, n_keys)
    if irregular:
        offset = (rng.random(n) * step).astype(np.int64)
    else:
        first = np.cumsum(flat) - flat  # index of each cell's first row
        rank = np.arange(n, dtype=np.int64) - np.repeat(first, flat)
        offset = (rank * step) // np.repeat(np.maximum(flat, 1), flat)
    ts = start_ns + win * step + offset

    regime = (win[:, None] >= p.change_at[key]).sum(axis=1)  # (N,) regimes entered so far
    shift = np.concatenate([np.zeros((n_keys, 1)), np.cumsum(p.level_shift, axis=1)], axis=1)
    factor = np.concatenate([np.ones((n_keys, 1)), np.cumprod(p.amp_factor, axis=1)], axis=1)
    days = ts / _DAY_NS  # seasonality follows the wall clock (UTC), not the start
    value = (
        p.level[key]
        + shift[key, regime]
        + p.drift[key] * (win + offset / step) / n_windows
        + p.daily_amp[key] * factor[key, regime] * np.sin(2 * np.pi * days + p.daily_phase[key])
        + p.weekly_amp[key] * np.sin(2 * np.pi * days / 7.0 + p.weekly_phase[key])
        + ar[key, win]
        + rng.standard_normal(n) * p.obs_sd[key]
    )

    width = max(5, len(str(n_keys - 1)))  # fixed width: string order equals key order
    names = pl.Series("key", [f"k{i:0{width}d}" for i in range(n_keys)])
    frame = pl.DataFrame({"_key": key, "ts": ts, "value": value}).sort(["ts", "_key"])
    return frame.select(
        names.gather(frame["_key"]).alias("key"),
        pl.col("ts").cast(pl.Datetime("ns", "UTC")),
        pl.col("value").cast(pl.Float64),
    )


def write(df: pl.DataFrame, path: str | Path) -> Path:
    """Write ``df`` as parquet or csv, chosen by the file suffix."""
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix not in (".parquet", ".csv"):
        raise ConfigError("out", f"a path ending in .parquet or .csv, got {str(path)!r}")
    path.parent.mkdir(parents=True, exist_ok=True)
    if suffix == ".parquet":
        df.write_parquet(path, compression="zstd")
    else:
        df.write_csv(path, datetime_format="%Y-%m-%dT%H:%M:%S%.fZ")
    return path


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m streamseq.synthetic",
        description="Write a deterministic synthetic multi-key stream (key, ts, value).",
    )
    parser.add_argument("--keys", type=int, required=True, help="number of keys")
    parser.add_argument("--windows", type=int, required=True, help="number of windows per key")
    parser.add_argument("--out", required=True, help="output path, .parquet or .csv")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--interval", default="1h", help="window length, e.g. 1h, 10min, 1d")
    parser.add_argument("--obs-per-window", type=float, default=1.0)
    parser.add_argument("--start", default="2024-01-01", help="first window start, UTC")
    parser.add_argument("--regular", action="store_true", help="no jitter and no empty windows")
    parser.add_argument("--no-regimes", action="store_true", help="no level or amplitude changes")
    args = parser.parse_args(argv)
    df = generate(
        n_keys=args.keys,
        n_windows=args.windows,
        interval=args.interval,
        seed=args.seed,
        obs_per_window=args.obs_per_window,
        irregular=not args.regular,
        regimes=not args.no_regimes,
        start=args.start,
    )
    path = write(df, args.out)
    print(f"wrote {df.height} rows, {args.keys} keys x {args.windows} windows of {args.interval} to {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
