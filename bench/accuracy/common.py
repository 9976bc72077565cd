"""The accuracy suite's data sets, calendar mapping, scoring rule and tables (shared by suite.py and its tests).

Everything here works on long frames with the columns of forecasts.parquet:
``key, model, origin, step, target_ts, mean, lo, hi`` (times in stream time, UTC).
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import polars as pl

HERE = Path(__file__).parent
REPO = HERE.parent.parent
UTC_NS = pl.Datetime("ns", "UTC")
EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
ABSURD_FACTOR = 1e6  # |error| beyond this many key scales (+1) is a diverged forecast (as streamseq.evaluation)
REFERENCE = "seasonal_naive (ref)"  # the suite's own seasonal naive: the denominator of rel_MAE


@dataclass(frozen=True)
class Dataset:
    """One stream of the suite and how it is replayed and scored."""

    name: str
    path: str  # relative to the repository root
    freq: str  # period of the data: 1h, 1d, 1w, 1mo, 1q
    season: int
    horizon: int
    protocol: str  # "holdout": one origin per key at the end of its published train part; "rolling": every origin after warm-up
    warmup: int = 0  # rolling: windows per key before the first scored origin (the training part for tuning)
    covariates: tuple[str, ...] = ()  # extra value columns replayed beside the target
    agg: str | tuple = "mean"  # windowing agg (a tuple of (column, agg) pairs for a table)
    gap: str = "ffill"
    kind: str = "sensor"
    columns: tuple[tuple[str, str], ...] = ()  # renames to key/ts/value for files with other names
    anchor_origins: int = 0  # rolling: origins per key where the statsforecast anchors are fitted (0 = every origin)
    anchor_context: int = 0  # rolling: trailing windows an anchor fit sees (0 = all history)
    quick_keys: int = 3  # --quick: this many keys (evenly spread over the sorted key list)
    quick_windows: int = 0  # --quick, rolling: keep the first N windows per key (0 = all)
    quick_warmup: int = 0  # --quick, rolling: warm-up in the shortened stream
    quick_anchor_origins: int = 10  # --quick, rolling: anchor origins per key
    seasons: tuple[int, ...] = ()  # every seasonal period of the data (MSTL anchor), when more than one
    start: str = ""  # first timestamp replayed (ISO, UTC); "" = the whole file
    full_only: bool = False  # left out of --quick
    target: str = ""  # which of issue 15's targets applies: hourly | price | short | ""
    notes: str = ""


DATASETS: dict[str, Dataset] = {d.name: d for d in [
    Dataset("vic_elec", "bench/accuracy/data/vic_elec.parquet", "1h", 24, 24, "rolling", warmup=28 * 24,
            covariates=("temperature",), anchor_origins=30, anchor_context=28 * 24, seasons=(24, 168), start="2014-01-01",
            quick_windows=42 * 24, quick_warmup=14 * 24, target="hourly", notes="Victoria demand, hourly means, temperature covariate"),
    Dataset("vic_elec_s168", "bench/accuracy/data/vic_elec.parquet", "1h", 168, 24, "rolling", warmup=28 * 24,
            covariates=("temperature",), anchor_origins=30, anchor_context=28 * 24, full_only=True, start="2014-01-01",
            target="hourly", notes="the same stream with the weekly season"),
    Dataset("energy", "replay_data/energy.parquet", "1h", 24, 12, "rolling", warmup=14 * 24,
            columns=(("channel", "key"),), anchor_origins=8, anchor_context=28 * 24, seasons=(24, 168), quick_anchor_origins=4,
            quick_windows=42 * 24, quick_warmup=14 * 24, target="hourly", notes="replay_data: appliances, lights, room temperatures"),
    Dataset("bank_calls", "bench/accuracy/data/bank_calls.parquet", "1h", 14, 14, "rolling", warmup=10 * 14,
            gap="skip", anchor_origins=30, anchor_context=20 * 14, seasons=(14, 70),
            quick_windows=40 * 14, quick_warmup=10 * 14, target="hourly", notes="calls per hour, 07-20 h weekdays (gap skip)"),
    Dataset("stocks", "replay_data/stocks.csv", "1d", 5, 5, "rolling", warmup=250, covariates=("volume",),
            agg=(("value", "last"), ("volume", "sum")), gap="skip", kind="price",
            columns=(("symbol", "key"), ("date", "ts"), ("close", "value")), anchor_origins=15, anchor_context=250,
            quick_anchor_origins=5,
            quick_windows=500, quick_warmup=250, target="price", notes="replay_data: daily closes (gap skip)"),
    Dataset("us_gasoline", "bench/accuracy/data/us_gasoline.parquet", "1w", 52, 13, "rolling", warmup=5 * 52,
            anchor_origins=40, anchor_context=10 * 52, full_only=True, notes="weekly, 1 series"),
    Dataset("aus_retail", "bench/accuracy/data/aus_retail.parquet", "1mo", 12, 12, "rolling", warmup=60,
            anchor_origins=3, anchor_context=120, quick_keys=6, notes="monthly retail turnover, long series"),
    Dataset("tourism", "bench/accuracy/data/tourism.parquet", "1q", 4, 8, "rolling", warmup=32,
            anchor_origins=6, quick_keys=10, notes="quarterly trips by region/purpose"),
    Dataset("m1_monthly", "bench/accuracy/data/m1_monthly.parquet", "1mo", 12, 18, "holdout",
            quick_keys=40, target="short", notes="M1 competition, published train/test"),
    Dataset("m1_quarterly", "bench/accuracy/data/m1_quarterly.parquet", "1q", 4, 8, "holdout",
            quick_keys=40, target="short", notes="M1 competition, published train/test"),
]}

# Until streamseq has calendar windows, a month or quarter is replayed as one synthetic day.
MONTHS_PER_PERIOD = {"1mo": 1, "1q": 3}


def stream_clock(frame: pl.DataFrame, freq: str) -> tuple[pl.DataFrame, str]:
    """The frame in the time streamseq replays, and the window interval.

    Calendar periods (1mo, 1q) become consecutive synthetic days counted from
    1970-01-01 (period index since 1970 -> that many days), interval ``1d``.
    When ``--interval 1mo | 1q`` lands, return ``frame, freq`` here instead.

    >>> f = pl.DataFrame({"ts": [datetime(1970, 3, 1, tzinfo=UTC)]})
    >>> g, interval = stream_clock(f, "1mo")
    >>> g["ts"][0].isoformat(), interval
    ('1970-01-03T00:00:00+00:00', '1d')
    """
    if freq not in MONTHS_PER_PERIOD:
        return frame, freq
    months = (pl.col("ts").dt.year().cast(pl.Int64) - 1970) * 12 + pl.col("ts").dt.month().cast(pl.Int64) - 1
    period = months // MONTHS_PER_PERIOD[freq]
    return frame.with_columns((pl.lit(EPOCH).cast(UTC_NS) + pl.duration(days=period)).alias("ts")), "1d"


def interval_ns(interval: str) -> int:
    from streamseq.timeutil import parse_duration

    return parse_duration(interval, "interval")


def load(ds: Dataset, quick: bool = False, max_keys: int = 0) -> pl.DataFrame:
    """The data set as ``key, ts, value[, covariates][, split]``, ts in UTC (ns), sorted by key and ts."""
    path = REPO / ds.path
    frame = pl.read_parquet(path) if path.suffix == ".parquet" else pl.read_csv(path, try_parse_dates=True)
    frame = frame.rename(dict(ds.columns))
    ts = frame.schema["ts"]
    if not isinstance(ts, pl.Datetime):
        frame = frame.with_columns(pl.col("ts").cast(pl.Datetime("ns")))
        ts = frame.schema["ts"]
    if ts.time_zone is None:
        frame = frame.with_columns(pl.col("ts").dt.replace_time_zone("UTC"))
    keep = ["key", "ts", "value", *ds.covariates] + (["split"] if "split" in frame.columns else [])
    frame = frame.select(keep).with_columns(pl.col("ts").cast(UTC_NS), pl.col("value").cast(pl.Float64)).sort("key", "ts")
    if ds.start:
        frame = frame.filter(pl.col("ts") >= datetime.fromisoformat(ds.start).replace(tzinfo=UTC))
    keys = frame["key"].unique().sort().to_list()
    n = max_keys or (ds.quick_keys if quick else 0)
    if n and n < len(keys):
        picked = [keys[i] for i in np.linspace(0, len(keys) - 1, n).round().astype(int)]
        frame = frame.filter(pl.col("key").is_in(picked))
    if quick and ds.protocol == "rolling" and ds.quick_windows:
        period = pl.col("ts") if ds.freq in MONTHS_PER_PERIOD else pl.col("ts").dt.epoch("ns") // interval_ns(ds.freq)
        frame = frame.filter(period.rank("dense").over("key") <= ds.quick_windows)
    return frame


def warmup_of(ds: Dataset, quick: bool) -> int:
    return ds.quick_warmup if quick and ds.quick_warmup else ds.warmup


def anchor_origins_of(ds: Dataset, quick: bool) -> int:
    return min(ds.anchor_origins, ds.quick_anchor_origins) if quick and ds.anchor_origins else ds.anchor_origins


def actual_windows(stream: pl.DataFrame, interval: str) -> pl.DataFrame:
    """Each observation as the window streamseq closes: ``key, end, idx, value[, split]``.

    ``end`` = the end of streamseq's window holding the observation (its grid: weeks from Monday),
    ``idx`` = the observation's position in its key (0, 1, ...). The raw values
    are one per period, so the window mean is the value itself.
    """
    from streamseq.grid import parse_interval

    grid = parse_interval(interval)  # streamseq's window grid: weeks start on Monday
    cols = ["split"] if "split" in stream.columns else []
    end = grid.end_of(grid.wid_of(stream["ts"].dt.epoch("ns").to_numpy()))
    return (
        stream.with_columns(end=pl.Series(end, dtype=pl.Int64).cast(pl.Datetime("ns", "UTC")))
        .group_by("key", "end").agg(pl.col("value").mean(), *[pl.col(c).first() for c in cols])
        .sort("key", "end")
        .with_columns(idx=pl.int_range(pl.len()).over("key"))
        .select("key", "end", "idx", "value", *cols)
    )


def series_of(actuals: pl.DataFrame) -> dict[str, np.ndarray]:
    """Each key's values in window order (position = ``idx``)."""
    return {k[0]: g["value"].to_numpy() for k, g in actuals.sort("key", "end").group_by("key", maintain_order=True)}


def scored_origins(actuals: pl.DataFrame, ds: Dataset, warmup: int) -> pl.DataFrame:
    """The origins the scoring rule uses: ``key, origin, origin_idx, h``.

    holdout: the end of each key's last ``train`` window, h = its number of
    ``test`` windows (the competition protocol). rolling: every window end
    with at least ``warmup`` windows before it and one after, h = horizon.
    """
    if ds.protocol == "holdout":
        return (
            actuals.group_by("key")
            .agg(pl.col("end").filter(pl.col("split") == "train").max().alias("origin"),
                 pl.col("idx").filter(pl.col("split") == "train").max().alias("origin_idx"),
                 (pl.col("split") == "test").sum().cast(pl.Int64).alias("h"))
            .sort("key")
        )
    last = pl.col("idx").max().over("key")
    return (
        actuals.filter((pl.col("idx") >= warmup) & (pl.col("idx") < last))
        .select("key", pl.col("end").alias("origin"), pl.col("idx").alias("origin_idx"), h=pl.lit(ds.horizon, pl.Int64))
    )


def sample_origins(origins: pl.DataFrame, per_key: int) -> pl.DataFrame:
    """``per_key`` origins per key, evenly spread over its scored origins (all of them when 0 or fewer exist)."""
    if per_key <= 0 or origins.height == 0:
        return origins

    def pick(g: pl.DataFrame) -> pl.DataFrame:
        if g.height <= per_key:
            return g
        return g[np.unique(np.linspace(0, g.height - 1, per_key).round().astype(int)).tolist()]

    return pl.concat([pick(g) for _, g in origins.sort("key", "origin").group_by("key", maintain_order=True)])


def reference_forecasts(actuals: pl.DataFrame, origins: pl.DataFrame, season: int, interval: str,
                        horizon: int) -> pl.DataFrame:
    """The suite's own naive and seasonal naive at the given origins, from the raw actuals.

    In observation steps, as streamseq's models see the stream: step j of the
    origin at position o is ``y[o]`` (naive) and ``y[o + j - s*ceil(j/s)]``
    (seasonal naive; naive while a key has fewer than s windows).
    """
    step_ns = interval_ns(interval)
    values = series_of(actuals)
    keys, orig, steps, naive, snaive = [], [], [], [], []
    for key, origin, o in origins.select("key", "origin", "origin_idx").iter_rows():
        y = values[key]
        j = np.arange(1, horizon + 1)
        lag = o + j - season * np.ceil(j / season).astype(int)
        sn = np.where(lag >= 0, y[np.clip(lag, 0, None)], y[o])
        keys += [key] * horizon
        orig += [origin] * horizon
        steps.append(j)
        naive.append(np.full(horizon, y[o]))
        snaive.append(sn)
    base = pl.DataFrame({"key": keys, "origin": orig}, schema={"key": pl.String, "origin": UTC_NS}).with_columns(
        step=pl.Series(np.concatenate(steps) if steps else [], dtype=pl.Int64))
    base = base.with_columns(target_ts=pl.col("origin") + pl.duration(nanoseconds=pl.col("step") * step_ns))
    none = pl.lit(None, pl.Float64)
    frames = []
    for model, means in (("naive (ref)", naive), (REFERENCE, snaive)):
        mean = pl.Series(np.concatenate(means) if means else [], dtype=pl.Float64)
        frames.append(base.with_columns(model=pl.lit(model), mean=mean, lo=none, hi=none))
    return pl.concat(frames).select(FORECAST_COLUMNS)


FORECAST_COLUMNS = ["key", "model", "origin", "step", "target_ts", "mean", "lo", "hi"]


def key_scales(actuals: pl.DataFrame, ds: Dataset) -> pl.DataFrame:
    """MASE scale per key: in-sample MAE of the seasonal naive (lag 1 when a key has s points or fewer).

    holdout: over the train part only (the M-competition definition);
    rolling: over the whole series (as streamseq.evaluation.key_scales).
    """
    a = actuals.filter(pl.col("split") == "train") if ds.protocol == "holdout" else actuals
    s = ds.season
    v = pl.col("value")
    return (
        a.sort("key", "end")
        .with_columns(d_s=(v - v.shift(s).over("key")).abs(), d_1=(v - v.shift(1).over("key")).abs())
        .group_by("key")
        .agg(pl.len().alias("n"), pl.col("d_s").mean(), pl.col("d_1").mean())
        .select("key", scale=pl.when(pl.col("n") > s).then(pl.col("d_s")).otherwise(pl.col("d_1")))
    )


def scored_rows(forecasts: pl.DataFrame, actuals: pl.DataFrame, origins: pl.DataFrame,
                scales: pl.DataFrame) -> pl.DataFrame:
    """Forecast rows at the scored origins and steps 1..h joined to their actual and key scale."""
    f = forecasts.with_columns(pl.col("origin").cast(UTC_NS), pl.col("target_ts").cast(UTC_NS), pl.col("step").cast(pl.Int64))
    f = f.unique(subset=["key", "model", "origin", "step"], keep="last")
    truth = actuals.select("key", pl.col("end").alias("target_ts"), pl.col("value").alias("y"))
    rows = (
        f.join(origins.select("key", "origin", "h"), on=["key", "origin"], how="inner")
        .filter(pl.col("step") <= pl.col("h"))
        .join(truth, on=["key", "target_ts"], how="inner")
        .join(scales, on="key", how="left")
    )
    err = (pl.col("mean") - pl.col("y")).abs()
    absurd = (~pl.col("mean").is_finite()).fill_null(True) | (err > ABSURD_FACTOR * (pl.col("scale").fill_null(0.0) + 1.0))
    return rows.with_columns(diverged=absurd.fill_null(True), abs_err=err)


def summarise(rows: pl.DataFrame) -> pl.DataFrame:
    """Metrics per model from ``scored_rows``: rel_MAE (against the suite's seasonal naive on the same rows),
    MAE, MASE, sMAPE (%), coverage of [lo, hi], rows, origins, diverged."""
    ok = rows.filter(~pl.col("diverged"))
    ref = ok.filter(pl.col("model") == REFERENCE).select("key", "origin", "step", pl.col("abs_err").alias("ref_err"))
    y, mean = pl.col("y"), pl.col("mean")
    denom = y.abs() + mean.abs()
    ok = ok.join(ref, on=["key", "origin", "step"], how="left").with_columns(
        scaled=pl.when(pl.col("scale") > 0).then(pl.col("abs_err") / pl.col("scale")),
        smape=pl.when(denom == 0).then(0.0).otherwise(200.0 * pl.col("abs_err") / denom),
        has_iv=(pl.col("lo").is_finite() & pl.col("hi").is_finite()).fill_null(False),
    ).with_columns(inside=pl.col("has_iv") & (pl.col("lo") <= y) & (y <= pl.col("hi")))
    paired = pl.col("ref_err").is_not_null()
    metrics = ok.group_by("model").agg(
        (pl.col("abs_err").filter(paired).sum() / pl.col("ref_err").filter(paired).sum()).alias("rel_MAE"),
        pl.col("abs_err").mean().alias("MAE"),
        pl.col("scaled").mean().alias("MASE"),
        pl.col("smape").mean().alias("sMAPE"),
        (pl.col("inside").sum() / pl.col("has_iv").sum()).alias("coverage"),
        pl.len().alias("rows"),
        pl.struct("key", "origin").n_unique().alias("origins"),
    )
    div = rows.group_by("model").agg(pl.col("diverged").sum().cast(pl.Int64).alias("diverged"))
    return metrics.join(div, on="model", how="full", coalesce=True).with_columns(
        pl.col("coverage").fill_nan(None), pl.col("diverged").fill_null(0))


def fmt(x, kind: str) -> str:
    if x is None or (isinstance(x, float) and not math.isfinite(x)):
        return "-"
    if kind == "pct":
        return f"{100 * x:.1f}%"
    if kind == "int":
        return str(int(x))
    if kind == "s":
        return f"{x:.1f}"
    return f"{x:.4g}" if abs(x) >= 1e4 else (f"{x:.3f}" if abs(x) < 100 else f"{x:.1f}")


TABLE = [("model", "str"), ("rel_MAE", "num"), ("MAE", "num"), ("MASE", "num"), ("sMAPE", "num"),
         ("coverage", "pct"), ("origins", "int"), ("diverged", "int"), ("wall_s", "s"), ("scope", "str")]


def format_table(table: pl.DataFrame) -> str:
    """Fixed-width text of the suite's per-dataset table (rows in the order given)."""
    cells = [[name for name, _ in TABLE]]
    for row in table.iter_rows(named=True):
        cells.append([str(row.get(n) if row.get(n) is not None else "-") if k == "str" else fmt(row.get(n), k)
                      for n, k in TABLE])
    widths = [max(len(r[i]) for r in cells) for i in range(len(TABLE))]
    lines = ["  ".join(c.ljust(w) if i == 0 or i == len(TABLE) - 1 else c.rjust(w) for i, (c, w) in enumerate(zip(r, widths))).rstrip()
             for r in cells]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)
