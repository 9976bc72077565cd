"""The accuracy suite: streamseq's models beside statsforecast and tuned river anchors, one table per data set.

    /work/wt/acc-venv/bin/python bench/accuracy/suite.py --quick          # a few keys per set, ~2-3 min
    python bench/accuracy/suite.py                                         # everything (see README.md)
    python bench/accuracy/suite.py --datasets m1_monthly,vic_elec --transformer 12

Needs the ``bench`` extra (statsforecast). Writes bench/results/accuracy-<date>[-quick].csv.
README.md beside this file gives the scoring rule and the baseline figures.
"""
from __future__ import annotations

import argparse
import contextlib
import logging
import os
import shutil
import sys
import time
import warnings
from datetime import date
from pathlib import Path

import numpy as np
import polars as pl

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from common import (  # noqa: E402
    DATASETS,
    FORECAST_COLUMNS,
    REFERENCE,
    REPO,
    UTC_NS,
    Dataset,
    actual_windows,
    anchor_origins_of,
    format_table,
    interval_ns,
    key_scales,
    load,
    reference_forecasts,
    sample_origins,
    scored_origins,
    scored_rows,
    series_of,
    stream_clock,
    summarise,
    warmup_of,
)

ETS_MAX_SEASON = 24  # statsforecast's ETS has no seasonal form beyond 24 (it would fit a non-seasonal model, slowly)
DEFAULT_MODELS = ["gru", "lstm", "snarimax", "holt_winters", "naive", "seasonal_naive"]
ORDER = ["gru", "lstm", "transformer", "ensemble", "holt_winters", "snarimax", "holt_winters (tuned)",
         "snarimax (tuned)", "AutoETS", "AutoTheta", "MSTL", "AutoARIMA", "naive", "seasonal_naive", "naive (ref)", REFERENCE]

# Small grids, chosen per key on the training part only; the first entry of each is streamseq's default.
HW_GRID = [dict(alpha=0.3, beta=0.05, gamma=0.3)] + [
    dict(alpha=a, beta=b, gamma=g) for a in (0.1, 0.5) for b in (0.01, 0.1) for g in (0.05, 0.3)]
SNARIMAX_GRID = [dict(p=2, d=0, q=1)] + [dict(p=p, d=d, q=q) for p, d, q in ((1, 0, 0), (3, 0, 1), (1, 1, 0), (2, 1, 1))]


# ---------------------------------------------------------------- streamseq


class ModelCrash(RuntimeError):
    def __init__(self, model: str, exc: BaseException):
        super().__init__(f"{model}: {type(exc).__name__}: {exc}")
        self.model = model


@contextlib.contextmanager
def model_timers(timers: dict[str, float]):
    """Time each model's update + forecast inside run_backtest (the pipeline calls them on the instances);
    an exception from a model comes out as ModelCrash naming it."""
    import streamseq.backtesting as bt

    original = bt.build_pipeline

    def timed(name, fn):
        def call(*a, **k):
            t0 = time.perf_counter()
            try:
                return fn(*a, **k)
            except Exception as exc:
                raise ModelCrash(name, exc) from exc
            finally:
                timers[name] = timers.get(name, 0.0) + time.perf_counter() - t0
        return call

    def build(cfg, *a, **k):
        pipe = original(cfg, *a, **k)
        for name, model in pipe.models.items():
            model.update = timed(name, model.update)
            model.forecast = timed(name, model.forecast)
        return pipe

    bt.build_pipeline = build
    try:
        yield
    finally:
        bt.build_pipeline = original


def run_streamseq(ds: Dataset, stream: pl.DataFrame, interval: str, warmup: int, work: Path,
                  transformer_every: int, refresh_rnn: bool = False) -> tuple[pl.DataFrame, dict[str, float], float, dict[str, str]]:
    """Replay ``stream`` through run_backtest; returns forecasts.parquet, seconds per model, total seconds
    and the models that crashed (the replay is run again without a model that raised, so the rest is measured)."""
    from streamseq.backtesting import run_backtest
    from streamseq.config import from_dict

    work.mkdir(parents=True, exist_ok=True)
    src = work / "stream.parquet"
    stream.drop("split", strict=False).sort("ts", "key").write_parquet(src)  # event-time order, as a stream arrives
    models = DEFAULT_MODELS + (["transformer"] if transformer_every else [])
    agg = dict(ds.agg) if isinstance(ds.agg, tuple) else ds.agg
    crashed: dict[str, str] = {}
    while True:
        cfg = {
            "name": ds.name, "kind": ds.kind,
            "source": {"files": [str(src)], "key_col": "key", "time_col": "ts", "value_cols": ["value", *ds.covariates]},
            "windowing": {"interval": interval, "agg": agg, "gap": ds.gap},
            "forecast": {"horizon": ds.horizon, "season": ds.season, "models": models, "warmup": warmup, "seed": 0},
        }
        if transformer_every:
            cfg["trainer"] = {"every_windows": transformer_every, "refresh_rnn": refresh_rnn}
        timers: dict[str, float] = {}
        t0 = time.perf_counter()
        try:
            with model_timers(timers):
                run_backtest(from_dict(cfg), work / "out", progress=False, report=False)
        except ModelCrash as crash:
            crashed[crash.model] = str(crash)
            print(f"  streamseq replay stopped: {crash}; replaying again without {crash.model}", flush=True)
            models = [m for m in models if m != crash.model]
            continue
        total = time.perf_counter() - t0
        return pl.read_parquet(work / "out" / "forecasts.parquet"), timers, total, crashed


# ---------------------------------------------------------------- river, tuned


def additive_holt_winters():
    """river's HoltWinters with the textbook additive start: seasonal components y - level.

    river 0.26 starts them at y / level even when additive; on streamseq's
    standardised input the level is near 0, so they start huge (or raise
    ZeroDivisionError on a flat start, e.g. a series opening with zeros).
    """
    import statistics

    from river import time_series

    class AdditiveHoltWinters(time_series.HoltWinters):
        def learn_one(self, y, x=None):
            if self._initialized or self.multiplicative or self.season is None:
                return super().learn_one(y, x)
            self._first_values.append(y)
            if len(self._first_values) < max(2, self.seasonality):
                return
            first = self._first_values
            self.level.append(statistics.mean(first))
            if self.trend is not None:
                self.trend.append(statistics.mean([b - a for a, b in zip(first[:-1], first[1:])]))
            self.season.extend([v - self.level[-1] for v in first])
            self._initialized = True

    return AdditiveHoltWinters


def river_class(family: str, params: dict):
    """streamseq's own river wrapper (running standardisation, divergence guard) with other parameters."""
    from river import compose, linear_model, optim, preprocessing, time_series

    from streamseq.models.river_baselines import HoltWintersForecaster, SNARIMAXForecaster

    if family == "holt_winters":
        hw = additive_holt_winters()

        class Tuned(HoltWintersForecaster):
            def make(self):
                if self.season > 1:
                    return hw(seasonality=self.season, **params)
                return hw(alpha=params["alpha"], beta=params["beta"])
    else:
        class Tuned(SNARIMAXForecaster):
            def make(self):
                m = self.season if self.season > 1 else 1
                return time_series.SNARIMAX(
                    m=m, sp=1 if m > 1 else 0, sd=0, sq=0, **params,
                    regressor=compose.Pipeline(preprocessing.StandardScaler(), linear_model.LinearRegression(
                        intercept_init=0.0, optimizer=optim.SGD(0.005), intercept_lr=0.01)))
    return Tuned


def river_pass(cls, series: list[np.ndarray], horizon: int, season: int, calibrate: bool):
    """Feed every key's values in order (one batch call per position) and forecast after each one.

    Returns per key an array (len, H) of means and, with ``calibrate``, lo and hi from
    streamseq's ConformalCalibrator fed the same way as in the pipeline.
    """
    from streamseq.calibration import ConformalCalibrator

    model = cls(horizon, season)
    n = len(series)
    model.ensure_capacity(n)
    cal = ConformalCalibrator(horizon, 0.9)
    cal.ensure_capacity(n)
    lengths = np.array([len(s) for s in series])
    mean = [np.full((len(s), horizon), np.nan) for s in series]
    lo = [np.full((len(s), horizon), np.nan) for s in series] if calibrate else None
    hi = [np.full((len(s), horizon), np.nan) for s in series] if calibrate else None
    for t in range(int(lengths.max(initial=0))):
        slots = np.flatnonzero(lengths > t)
        y = np.array([series[s][t] for s in slots])
        if calibrate:
            cal.observe(slots, t, y)
        model.update(slots, y[:, None], np.zeros(len(slots), bool))
        f = model.forecast(slots)
        if calibrate:
            a, b = cal.bounds(slots, f)
            cal.record(slots, t, f)
        for i, s in enumerate(slots.tolist()):
            mean[s][t] = f[i]
            if calibrate:
                lo[s][t], hi[s][t] = a[i], b[i]
    return mean, lo, hi


def training_error(mean: np.ndarray, y: np.ndarray) -> float:
    """Mean |error| of every forecast whose origin and target lie in ``y`` (inf if any diverged)."""
    n, H = mean.shape
    errs = []
    for j in range(1, H + 1):
        if n - j <= 0:
            break
        errs.append(np.abs(mean[: n - j, j - 1] - y[j:]))
    e = np.concatenate(errs) if errs else np.array([])
    if e.size == 0:
        return np.inf
    return float(np.mean(e)) if np.isfinite(e).all() else np.inf


def river_tuned(family: str, grid: list[dict], ds: Dataset, actuals: pl.DataFrame, origins: pl.DataFrame,
                interval: str, train_len: dict[str, int]) -> tuple[pl.DataFrame, float, dict]:
    """One grid entry per key, chosen on its first ``train_len`` values only; then one calibrated pass."""
    t0 = time.perf_counter()
    values = series_of(actuals)
    keys = sorted(values)
    train = [values[k][: train_len[k]] for k in keys]
    errors = np.full((len(grid), len(keys)), np.inf)
    for g, params in enumerate(grid):
        mean, _, _ = river_pass(river_class(family, params), train, ds.horizon, ds.season, calibrate=False)
        errors[g] = [training_error(m, y) for m, y in zip(mean, train)]
    choice = np.where(np.isfinite(errors).any(axis=0), np.argmin(errors, axis=0), 0)
    # holdout: the model never sees the test part; rolling: it runs through the whole stream
    full = train if ds.protocol == "holdout" else [values[k] for k in keys]
    by_key = {}
    for g in np.unique(choice).tolist():
        idx = np.flatnonzero(choice == g)
        mean, lo, hi = river_pass(river_class(family, grid[g]), [full[i] for i in idx], ds.horizon, ds.season, True)
        for j, i in enumerate(idx.tolist()):
            by_key[keys[i]] = (mean[j], lo[j], hi[j])
    frame = forecasts_at(origins, by_key, ds.horizon, interval, f"{family} (tuned)")
    counts = {str(grid[g]): int((choice == g).sum()) for g in np.unique(choice).tolist()}
    return frame, time.perf_counter() - t0, counts


def forecasts_at(origins: pl.DataFrame, by_key: dict, horizon: int, interval: str, model: str) -> pl.DataFrame:
    """Rows of forecasts.parquet's shape from per-key (mean, lo, hi) arrays indexed by origin position."""
    keys, orig, mean, lo, hi = [], [], [], [], []
    for key, origin, o in origins.select("key", "origin", "origin_idx").iter_rows():
        if key not in by_key or o >= len(by_key[key][0]):
            continue
        m, a, b = by_key[key]
        keys += [key] * horizon
        orig += [origin] * horizon
        mean.append(m[o])
        lo.append(a[o] if a is not None else np.full(horizon, np.nan))
        hi.append(b[o] if b is not None else np.full(horizon, np.nan))

    def cat(xs):
        return np.concatenate(xs) if xs else np.array([])

    step_ns = interval_ns(interval)
    return pl.DataFrame({
        "key": pl.Series(keys, dtype=pl.String), "origin": pl.Series(orig, dtype=UTC_NS),
        "step": pl.Series(np.tile(np.arange(1, horizon + 1), len(mean)), dtype=pl.Int64),
        "mean": cat(mean), "lo": cat(lo), "hi": cat(hi),
    }).with_columns(
        model=pl.lit(model), target_ts=pl.col("origin") + pl.duration(nanoseconds=pl.col("step") * step_ns),
    ).with_columns(pl.col("lo", "hi").fill_nan(None)).select(FORECAST_COLUMNS)


# ---------------------------------------------------------------- statsforecast


def warm_statsforecast() -> None:
    """Fit each anchor once on a toy series so one-off compilation and imports stay out of the timed figures."""
    import pandas as pd
    from statsforecast import StatsForecast
    from statsforecast.models import MSTL, AutoARIMA, AutoETS, AutoTheta

    y = 10 + np.sin(np.arange(48) * np.pi / 6)
    df = pd.DataFrame({"unique_id": "w", "ds": np.arange(48), "y": y})
    for m in (AutoETS(season_length=12), AutoTheta(season_length=12), AutoARIMA(season_length=12),
              MSTL(season_length=[4, 12], trend_forecaster=AutoETS(model="ZZN"))):
        StatsForecast(models=[m], freq=1, n_jobs=1).forecast(df=df, h=3, level=[90])


def statsforecast_anchor(name: str, ds: Dataset, actuals: pl.DataFrame, origins: pl.DataFrame,
                         interval: str) -> tuple[pl.DataFrame, float]:
    """One fit per origin on the history up to it (its last ``anchor_context`` windows), h = horizon, 90% interval."""
    import pandas as pd
    from statsforecast import StatsForecast
    from statsforecast import models as sfm

    values = series_of(actuals)
    ids, ds_, ys = [], [], []
    for i, (key, o) in enumerate(origins.select("key", "origin_idx").iter_rows()):
        y = values[key][: o + 1]
        if ds.anchor_context:
            y = y[-ds.anchor_context:]
        ids.append(np.full(len(y), i))
        ds_.append(np.arange(len(y)))
        ys.append(y)
    df = pd.DataFrame({"unique_id": np.concatenate(ids), "ds": np.concatenate(ds_), "y": np.concatenate(ys)})
    if name == "MSTL":  # every season of the data, the trend by non-seasonal ETS (the usual MSTL setup)
        model = sfm.MSTL(season_length=list(ds.seasons), trend_forecaster=sfm.AutoETS(model="ZZN"))
    else:
        model = getattr(sfm, name)(season_length=ds.season)
    t0 = time.perf_counter()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        fc = StatsForecast(models=[model], freq=1, n_jobs=1, fallback_model=sfm.SeasonalNaive(ds.season)).forecast(
            df=df, h=ds.horizon, level=[90])
    elapsed = time.perf_counter() - t0
    fc = pl.from_pandas(fc.reset_index() if "unique_id" not in fc.columns else fc)
    last = df.groupby("unique_id")["ds"].max()
    o = origins.with_row_index("unique_id").with_columns(pl.col("unique_id").cast(pl.Int64))
    step_ns = interval_ns(interval)
    frame = (
        fc.with_columns(pl.col("unique_id").cast(pl.Int64))
        .join(pl.DataFrame({"unique_id": last.index.to_numpy().astype(np.int64), "last": last.to_numpy()}), on="unique_id")
        .join(o, on="unique_id")
        .select("key", "origin", (pl.col("ds") - pl.col("last")).cast(pl.Int64).alias("step"),
                pl.col(name).alias("mean"), pl.col(f"{name}-lo-90").alias("lo"), pl.col(f"{name}-hi-90").alias("hi"))
        .with_columns(model=pl.lit(name), target_ts=pl.col("origin") + pl.duration(nanoseconds=pl.col("step") * step_ns))
        .select(FORECAST_COLUMNS)
    )
    return frame, elapsed


# ---------------------------------------------------------------- one data set


def run_dataset(ds: Dataset, args, work: Path) -> tuple[pl.DataFrame, dict]:
    t_start = time.perf_counter()
    frame = load(ds, quick=args.quick, max_keys=args.keys)
    stream, interval = stream_clock(frame, ds.freq)
    warmup = warmup_of(ds, args.quick)
    actuals = actual_windows(stream, interval)
    origins = scored_origins(actuals, ds, warmup)
    per_key = anchor_origins_of(ds, args.quick)
    anchor_origins = sample_origins(origins, per_key) if ds.protocol == "rolling" else origins
    replayed = stream.filter(pl.col("split") == "train") if ds.protocol == "holdout" else stream  # test parts never replayed

    forecasts, timers, replay_s, crashed = run_streamseq(ds, replayed, interval, warmup, work / ds.name, args.transformer,
                                                         args.refresh_rnn)
    forecasts = forecasts.select(FORECAST_COLUMNS)
    wall = {**timers, "ensemble": replay_s}
    parts = [forecasts]

    if ds.protocol == "holdout":
        train_len = dict(actuals.filter(pl.col("split") == "train").group_by("key").len().iter_rows())
    else:
        train_len = {k: min(len(v), warmup) for k, v in series_of(actuals).items()}
    tuned = {}
    if not args.no_river:
        for family, grid in (("holt_winters", HW_GRID), ("snarimax", SNARIMAX_GRID)):
            f, s, counts = river_tuned(family, grid, ds, actuals, origins, interval, train_len)
            parts.append(f)
            wall[f"{family} (tuned)"] = s
            tuned[family] = counts
    anchors = []
    if not args.no_statsforecast:
        names = (["AutoETS"] if ds.season <= ETS_MAX_SEASON else []) + ["AutoTheta"] \
            + (["MSTL"] if len(ds.seasons) > 1 else []) + (["AutoARIMA"] if args.arima and ds.protocol == "holdout" else [])
        for name in names:
            f, s = statsforecast_anchor(name, ds, actuals, anchor_origins, interval)
            parts.append(f)
            wall[name] = s
            anchors.append(name)
    parts.append(reference_forecasts(actuals, origins, ds.season, interval, ds.horizon))
    everything = pl.concat([p.with_columns(pl.col("step").cast(pl.Int64), pl.col("origin", "target_ts").cast(UTC_NS))
                            for p in parts])

    scales = key_scales(actuals, ds)
    table_all = summarise(scored_rows(everything, actuals, origins, scales)).with_columns(scope=pl.lit("all"))
    tables = [table_all]
    if ds.protocol == "rolling" and anchor_origins.height < origins.height:
        tables.append(summarise(scored_rows(everything, actuals, anchor_origins, scales)).with_columns(
            scope=pl.lit(f"sample {per_key}/key")))
    table = pl.concat(tables).with_columns(
        wall_s=pl.col("model").replace_strict(wall, default=None, return_dtype=pl.Float64),
        dataset=pl.lit(ds.name))
    # Printed: every model on all scored origins, except the anchors, which exist on the sample only.
    shown = table.filter(pl.col("scope") == "all")
    if len(tables) > 1:
        shown = shown.filter(~pl.col("model").is_in(anchors))
        shown = pl.concat([shown, table.filter((pl.col("scope") != "all") & pl.col("model").is_in(anchors))])
    rank = {m: i for i, m in enumerate(ORDER)}
    shown = shown.sort(pl.col("model").replace_strict(rank, default=len(rank), return_dtype=pl.Int64))
    info = {
        "keys": actuals["key"].n_unique(), "windows": actuals.height, "interval": interval, "season": ds.season,
        "horizon": ds.horizon, "protocol": ds.protocol, "warmup": warmup, "origins": origins.height,
        "anchor_origins": anchor_origins.height, "replay_s": replay_s, "tuned": tuned, "crashed": crashed,
        "sample_line": sample_line(table, anchors),
        "dataset_s": time.perf_counter() - t_start,
    }
    return table, {"shown": shown, **info}


def sample_line(table: pl.DataFrame, anchors: list[str]) -> str:
    """rel_MAE of the other models on the anchors' sample of origins, to compare with the anchors' rows."""
    s = table.filter((pl.col("scope") != "all") & ~pl.col("model").is_in(anchors) & ~pl.col("model").str.ends_with("(ref)"))
    if s.height == 0:
        return ""
    rank = {m: i for i, m in enumerate(ORDER)}
    s = s.sort(pl.col("model").replace_strict(rank, default=len(rank), return_dtype=pl.Int64))
    return "  rel_MAE on the anchors' sample: " + ", ".join(f"{m} {v:.3f}" for m, v in s.select("model", "rel_MAE").iter_rows())


def check_targets(ds: Dataset, shown: pl.DataFrame) -> list[str]:
    """Issue 15's targets that apply to this data set, as PASS/FAIL lines (nothing is asserted)."""
    m = {r["model"]: r for r in shown.iter_rows(named=True)}
    out = []

    def line(ok, text):
        out.append(f"  {'PASS' if ok else 'FAIL'}  {text}")

    def get(model, col):
        v = m.get(model, {}).get(col)
        return v if v is not None else float("nan")

    if ds.target == "hourly":
        best_river = min(get("holt_winters", "rel_MAE"), get("snarimax", "rel_MAE"),
                         get("holt_winters (tuned)", "rel_MAE"), get("snarimax (tuned)", "rel_MAE"))
        for model in ("gru", "lstm"):
            r = get(model, "rel_MAE")
            line(r <= 0.85, f"{model} rel_MAE {r:.3f} <= 0.85")
            line(r <= best_river, f"{model} rel_MAE {r:.3f} <= best river {best_river:.3f}")
    if ds.target == "short":
        ets = get("AutoETS", "sMAPE")
        best = min(get("gru", "sMAPE"), get("lstm", "sMAPE"), get("transformer", "sMAPE"))
        line(best <= ets, f"best of gru/lstm/transformer sMAPE {best:.2f} <= AutoETS {ets:.2f}")
        line(get("ensemble", "sMAPE") < ets, f"ensemble sMAPE {get('ensemble', 'sMAPE'):.2f} < AutoETS {ets:.2f}")
    if ds.target == "price":
        naive = get("naive", "MAE")
        for model in ("gru", "lstm", "ensemble"):
            line(get(model, "MAE") <= 1.01 * naive, f"{model} MAE {get(model, 'MAE'):.4g} within 1% of naive {naive:.4g}")
    metric = "sMAPE" if ds.target == "short" else "MAE"  # the ensemble and coverage targets hold on every stream
    if "ensemble" in m:
        members = [x for x in ("gru", "lstm", "transformer", "snarimax", "holt_winters", "naive", "seasonal_naive") if x in m]
        best = min(members, key=lambda x: get(x, metric))
        line(get("ensemble", metric) < get(best, metric),
             f"ensemble {metric} {get('ensemble', metric):.4g} < best member ({best}) {get(best, metric):.4g}")
        for model in ("gru", "lstm", "ensemble"):
            c = get(model, "coverage")
            line(0.88 <= c <= 0.92, f"{model} 90% interval coverage {100 * c:.1f}% in 88-92%")
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="a few keys per data set and short streams (~2-3 min)")
    ap.add_argument("--datasets", default="", help=f"comma-separated subset of: {', '.join(DATASETS)}")
    ap.add_argument("--keys", type=int, default=0, help="at most this many keys per data set (0 = the mode's default)")
    ap.add_argument("--transformer", type=int, default=0, metavar="N",
                    help="add the transformer, retrained in event time every N windows (trainer.every_windows)")
    ap.add_argument("--refresh-rnn", action="store_true", help="with --transformer: the trainer also refreshes GRU/LSTM weights")
    ap.add_argument("--arima", action="store_true", help="add statsforecast AutoARIMA on the holdout (M1) sets")
    ap.add_argument("--no-river", action="store_true", help="skip the tuned river anchors")
    ap.add_argument("--no-statsforecast", action="store_true", help="skip the statsforecast anchors")
    ap.add_argument("--out", default=str(REPO / "bench" / "results"), help="folder of the CSV (and work files)")
    ap.add_argument("--keep-work", action="store_true", help="keep each replay's forecasts.parquet under OUT/accuracy-work")
    args = ap.parse_args(argv)
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # before torch loads: its threads must not spin on a shared machine

    names = [n.strip() for n in args.datasets.split(",") if n.strip()] or [
        n for n, d in DATASETS.items() if not (args.quick and d.full_only)]
    unknown = [n for n in names if n not in DATASETS]
    if unknown:
        ap.error(f"unknown data set(s) {', '.join(unknown)}; known: {', '.join(DATASETS)}")
    logging.basicConfig(level=logging.WARNING)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    work = out / "accuracy-work"
    t0 = time.perf_counter()
    if not args.no_statsforecast:
        warm_statsforecast()
    load_avg = os.getloadavg()
    print(f"accuracy suite {'(quick) ' if args.quick else ''}on {date.today()}: {', '.join(names)}; "
          f"load average {load_avg[0]:.1f}, {os.cpu_count()} cores", flush=True)
    tables = []
    for name in names:
        ds = DATASETS[name]
        table, info = run_dataset(ds, args, work)
        tables.append(table)
        print(f"\n== {name}: {info['keys']} keys, {info['windows']} windows, interval {info['interval']}"
              f"{' (months/quarters as synthetic days)' if ds.freq in ('1mo', '1q') else ''}, season {info['season']}, "
              f"H {info['horizon']}; {info['protocol']}: {info['origins']} origins"
              + (f" after {info['warmup']} warm-up windows per key, anchors on {info['anchor_origins']}"
                 if ds.protocol == "rolling" else " (end of each train part), steps 1..h vs the published test part")
              + f"; replay {info['replay_s']:.1f} s, data set {info['dataset_s']:.1f} s")
        print(format_table(info["shown"]))
        if info["sample_line"]:
            print(info["sample_line"])
        for model, error in info["crashed"].items():
            print(f"  CRASH {error} (streamseq's {model} left out of this table)")
        for family, counts in info["tuned"].items():
            top = sorted(counts.items(), key=lambda pc: -pc[1])
            print(f"  {family} (tuned) picks: " + "; ".join(f"{c} x {p}" for p, c in top[:4])
                  + (f"; {len(top) - 4} more" if len(top) > 4 else ""))
        for lineout in check_targets(ds, info["shown"]):
            print(lineout)
        sys.stdout.flush()
    total = time.perf_counter() - t0
    csv = out / f"accuracy-{date.today()}{'-quick' if args.quick else ''}.csv"
    cols = ["dataset", "scope", "model", "rel_MAE", "MAE", "MASE", "sMAPE", "coverage", "rows", "origins", "diverged", "wall_s"]
    pl.concat(tables).select(cols).write_csv(csv)
    if not args.keep_work:
        shutil.rmtree(work, ignore_errors=True)
    print(f"\nsuite took {total:.0f} s (load average now {os.getloadavg()[0]:.1f}); wrote {csv}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
