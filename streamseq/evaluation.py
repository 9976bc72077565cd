"""Scoring forecasts against actuals: one metrics table per run.

Inputs are the frames the replay CLI writes:

- forecasts: key, model, model_version, origin, step (1..H), target_ts, mean, lo, hi
- actuals: key, end, value, filled

A forecast row is scored against the actual of the same key whose window
``end`` equals its ``target_ts``, and only where that window holds a real
observation (``filled`` is False). Everything is vectorised polars: a replay
writes millions of forecast rows.
"""
from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path

import polars as pl

# |mean - y| beyond this many key scales (+1) is a diverged forecast, not an error to average.
ABSURD_FACTOR = 1e6

METRIC_COLUMNS = ["model", "step", "MAE", "RMSE", "MASE", "sMAPE", "coverage", "count", "diverged"]
OVERALL_COLUMNS = ["model", "MAE", "RMSE", "MASE", "sMAPE", "coverage", "count", "diverged"]
ALL_STEPS = "all"

_UTC_NS = pl.Datetime("ns", "UTC")
_SUMS = ["n", "diverged", "sum_abs", "sum_sq", "sum_scaled", "n_scaled", "sum_smape", "n_interval", "n_inside"]


def _as_utc_ns(frame: pl.DataFrame | pl.LazyFrame, *names: str) -> pl.LazyFrame:
    """Same time type on both sides of the join; naive times are taken as UTC."""
    lf = frame.lazy()
    schema = lf.collect_schema()
    exprs = []
    for name in names:
        dtype = schema[name]
        col = pl.col(name)
        if isinstance(dtype, pl.Datetime) and dtype.time_zone is None:
            col = col.dt.replace_time_zone("UTC")
        exprs.append(col.cast(_UTC_NS).alias(name))
    return lf.with_columns(exprs)


def observed(actuals: pl.DataFrame | pl.LazyFrame) -> pl.LazyFrame:
    """Real, finite observations (key, end, value), one per key and window end."""
    return (
        _as_utc_ns(actuals, "end")
        .filter(~pl.col("filled").fill_null(False) & pl.col("value").is_finite())
        .select("key", "end", "value")
        # A restored replay can write a window twice; keep the later copy.
        .unique(subset=["key", "end"], keep="last", maintain_order=True)
    )


def key_scales(actuals: pl.DataFrame | pl.LazyFrame, season: int) -> pl.DataFrame:
    """Each key's in-sample naive MAE: mean |y_t - y_{t-season}| over its real observations.

    Observations are taken in order of ``end`` (lag counted in observations, not
    in time). A key with ``season`` points or fewer falls back to lag 1; a key
    with a single point has no scale (null).

    >>> from datetime import datetime, timezone
    >>> t = [datetime(2024, 1, 1, h, tzinfo=timezone.utc) for h in range(4)]
    >>> a = pl.DataFrame({"key": ["a"] * 4, "end": t, "value": [1.0, 2.0, 4.0, 8.0],
    ...                   "filled": [False] * 4})
    >>> key_scales(a, season=2)["scale"].to_list()  # |4-1|, |8-2|
    [4.5]
    >>> key_scales(a, season=4)["scale"].round(4).to_list()  # lag 1: 1, 2, 4
    [2.3333]
    """
    if season < 1:
        raise ValueError(f"season must be >= 1, got {season}")
    value = pl.col("value")
    return (
        observed(actuals)
        .sort("key", "end")
        .with_columns(
            d_season=(value - value.shift(season).over("key")).abs(),
            d_one=(value - value.shift(1).over("key")).abs(),
        )
        .group_by("key")
        .agg(pl.len().alias("n"), pl.col("d_season").mean(), pl.col("d_one").mean())
        .select(
            "key",
            scale=pl.when(pl.col("n") > season).then(pl.col("d_season")).otherwise(pl.col("d_one")),
        )
        .sort("key")
        .collect()
    )


def _scored_rows(forecasts: pl.DataFrame, actuals: pl.DataFrame, season: int) -> pl.LazyFrame:
    """Forecast rows joined to their actual and key scale, with per-row error terms.

    ``ok`` rows count in the metrics; ``absurd`` rows had an actual but a
    diverged mean. Rows without an actual (not yet observed, or gap-filled)
    are neither.
    """
    scales = key_scales(actuals, season).lazy()
    truth = observed(actuals).select("key", pl.col("end").alias("target_ts"), pl.col("value").alias("y"))
    rows = (
        _as_utc_ns(forecasts, "origin", "target_ts")
        .select("key", "model", "model_version", "origin", "step", "target_ts", "mean", "lo", "hi")
        # At-least-once sinks may deliver a forecast twice; score it once.
        .unique(subset=["key", "model", "model_version", "origin", "step"], keep="last")
        .join(truth, on=["key", "target_ts"], how="left")
        .join(scales, on="key", how="left")
    )
    y, mean, scale = pl.col("y"), pl.col("mean"), pl.col("scale")
    abs_err = (mean - y).abs()
    scored = y.is_not_null()
    absurd = scored & (
        ~mean.is_finite().fill_null(False) | (abs_err > ABSURD_FACTOR * (scale.fill_null(0.0) + 1.0))
    ).fill_null(True)
    rows = rows.with_columns(absurd=absurd).with_columns(ok=scored & ~pl.col("absurd"))
    ok = pl.col("ok")
    has_interval = ok & (pl.col("lo").is_finite() & pl.col("hi").is_finite()).fill_null(False)
    denom = y.abs() + mean.abs()
    return rows.with_columns(
        abs_err=pl.when(ok).then(abs_err),
        sq_err=pl.when(ok).then((mean - y) ** 2),
        scaled_err=pl.when(ok & (scale > 0)).then(abs_err / scale),
        smape=pl.when(ok).then(pl.when(denom == 0).then(0.0).otherwise(200.0 * abs_err / denom)),
        has_interval=has_interval,
        inside=has_interval & (pl.col("lo") <= y) & (y <= pl.col("hi")),
    )


def _sums() -> list[pl.Expr]:
    return [
        pl.col("ok").sum().cast(pl.Int64).alias("n"),
        pl.col("absurd").sum().cast(pl.Int64).alias("diverged"),
        pl.col("abs_err").sum().alias("sum_abs"),
        pl.col("sq_err").sum().alias("sum_sq"),
        pl.col("scaled_err").sum().alias("sum_scaled"),
        pl.col("scaled_err").count().cast(pl.Int64).alias("n_scaled"),
        pl.col("smape").sum().alias("sum_smape"),
        pl.col("has_interval").sum().cast(pl.Int64).alias("n_interval"),
        pl.col("inside").sum().cast(pl.Int64).alias("n_inside"),
    ]


def _ratio(num: str, den: str) -> pl.Expr:
    return pl.when(pl.col(den) > 0).then(pl.col(num) / pl.col(den))


def _finish(sums: pl.DataFrame, by: Sequence[str] = ("model", "step")) -> pl.DataFrame:
    return sums.select(
        *by,
        MAE=_ratio("sum_abs", "n"),
        RMSE=_ratio("sum_sq", "n").sqrt(),
        MASE=_ratio("sum_scaled", "n_scaled"),
        sMAPE=_ratio("sum_smape", "n"),
        coverage=_ratio("n_inside", "n_interval"),
        count=pl.col("n"),
        diverged=pl.col("diverged"),
    )


def score(forecasts: pl.DataFrame, actuals: pl.DataFrame, season: int) -> pl.DataFrame:
    """The metrics table: one row per (model, step), then one per model with step "all".

    Columns: model, step (Utf8: "1".."H", "all"), MAE, RMSE, MASE, sMAPE (percent),
    coverage (share of rows with lo <= y <= hi among rows that have an interval),
    count (rows scored) and diverged.

    MASE scales each row's absolute error by its key's in-sample naive MAE
    (see ``key_scales``) and averages over rows; keys with a zero or unknown
    scale are left out of MASE only.

    A mean that is non-finite or further than ``1e6 * (key scale + 1)`` from
    the actual is counted in ``diverged`` and left out of every other metric:
    river's SNARIMAX can diverge to ~1e200 on unscaled series (seen on real
    pedestrian and electricity price streams), and one such row would otherwise make MAE/RMSE meaningless
    for the whole model. Metrics of a group with nothing to score are null.

    >>> from datetime import datetime, timezone
    >>> t = [datetime(2024, 1, 1, h, tzinfo=timezone.utc) for h in range(3)]
    >>> actuals = pl.DataFrame({"key": ["a"] * 3, "end": t, "value": [1.0, 2.0, 4.0],
    ...                         "filled": [False] * 3})
    >>> forecasts = pl.DataFrame({"key": ["a"] * 2, "model": ["m"] * 2, "model_version": ["1"] * 2,
    ...     "origin": t[:2], "step": pl.Series([1, 1], dtype=pl.Int16), "target_ts": t[1:],
    ...     "mean": [1.0, 5.0], "lo": [0.0, None], "hi": [3.0, None]})
    >>> score(forecasts, actuals, season=1).select("step", "MAE", "MASE", "coverage", "count").rows()
    [('1', 1.0, 0.6666666666666666, 1.0, 2), ('all', 1.0, 0.6666666666666666, 1.0, 2)]
    """
    per_step = (
        _scored_rows(forecasts, actuals, season)
        .with_columns(pl.col("step").cast(pl.Int64))
        .group_by("model", "step")
        .agg(_sums())
        .collect()
    )
    overall = per_step.group_by("model").agg(pl.col(_SUMS).sum()).with_columns(step=pl.lit(None, pl.Int64))
    sums = (
        pl.concat([per_step, overall.select(per_step.columns)])
        .sort("model", "step", nulls_last=True)
        .with_columns(pl.col("step").cast(pl.String).fill_null(ALL_STEPS))
    )
    return _finish(sums)


def score_by_key(forecasts: pl.DataFrame, actuals: pl.DataFrame, season: int) -> pl.DataFrame:
    """Overall metrics per key and model (all steps): key, model, MAE, RMSE, MASE, sMAPE, coverage, count,
    diverged; keys with nothing scored are left out. Sorted by key, then model.

    >>> from datetime import datetime, timezone
    >>> t = [datetime(2024, 1, 1, h, tzinfo=timezone.utc) for h in range(3)]
    >>> actuals = pl.DataFrame({"key": ["a"] * 3 + ["b"] * 3, "end": t * 2,
    ...                         "value": [1.0, 2.0, 4.0, 5.0, 5.0, 6.0], "filled": [False] * 6})
    >>> forecasts = pl.DataFrame({"key": ["a", "a", "b", "b"], "model": ["m"] * 4, "model_version": ["1"] * 4,
    ...     "origin": t[:2] * 2, "step": pl.Series([1] * 4, dtype=pl.Int16), "target_ts": t[1:] * 2,
    ...     "mean": [1.0, 5.0, 5.0, 5.0], "lo": [None] * 4, "hi": [None] * 4})
    >>> score_by_key(forecasts, actuals, season=1).select("key", "MAE", "count").rows()
    [('a', 1.0, 2), ('b', 0.5, 2)]
    """
    sums = (
        _scored_rows(forecasts, actuals, season)
        .group_by("key", "model")
        .agg(_sums())
        .filter(pl.col("n") > 0)
        .sort("key", "model")
        .collect()
    )
    return _finish(sums, by=("key", "model"))


def with_skill(overall_rows: pl.DataFrame, baseline: str = "seasonal_naive") -> pl.DataFrame:
    """``skill`` = 1 - MASE / MASE of ``baseline`` on the same forecasts: above 0 beats the baseline
    (0.2: a fifth less scaled error), below 0 loses to it; null without the baseline.

    >>> rows = pl.DataFrame({"model": ["gru", "seasonal_naive"], "MASE": [0.8, 1.0]})
    >>> with_skill(rows)["skill"].round(3).to_list()
    [0.2, 0.0]
    """
    ref = overall_rows.filter(pl.col("model") == baseline)["MASE"]
    base = ref[0] if len(ref) else None
    if base is None or not base > 0:
        return overall_rows.with_columns(skill=pl.lit(None, pl.Float64))
    return overall_rows.with_columns(skill=1.0 - pl.col("MASE") / base)


def error_by_step(metrics: pl.DataFrame) -> pl.DataFrame:
    """The per-step rows of ``score``'s table."""
    return metrics.filter(pl.col("step") != ALL_STEPS)


def overall(metrics: pl.DataFrame) -> pl.DataFrame:
    """The step "all" rows of ``score``'s table, without the step column."""
    return metrics.filter(pl.col("step") == ALL_STEPS).drop("step")


def error_over_time(
    forecasts: pl.DataFrame, actuals: pl.DataFrame, buckets: int = 50, *, season: int = 1
) -> pl.DataFrame:
    """MAE per model and time bucket of origin, for plots.

    The origin range of the whole run is cut into ``buckets`` equal spans (the
    same for every model). Columns: model, bucket, bucket_start (Datetime),
    MAE, MASE, count, diverged. ``season`` only sets the key scale used for
    MASE and the divergence guard (lag-1 naive by default).
    """
    if buckets < 1:
        raise ValueError(f"buckets must be >= 1, got {buckets}")
    span = _as_utc_ns(forecasts, "origin").select(
        lo=pl.col("origin").min().dt.epoch("ns"), hi=pl.col("origin").max().dt.epoch("ns")
    ).collect()
    lo, hi = span["lo"][0], span["hi"][0]
    if lo is None:
        return pl.DataFrame(
            schema={"model": pl.String, "bucket": pl.Int64, "bucket_start": _UTC_NS, "MAE": pl.Float64,
                    "MASE": pl.Float64, "count": pl.Int64, "diverged": pl.Int64}
        )
    width = max(1, -(-(hi - lo) // buckets))
    sums = (
        _scored_rows(forecasts, actuals, season)
        # The latest origin closes the last bucket instead of opening one of its own.
        .with_columns(bucket=((pl.col("origin").dt.epoch("ns") - lo) // width).clip(0, buckets - 1).cast(pl.Int64))
        .group_by("model", "bucket")
        .agg(_sums())
        .sort("model", "bucket")
        .collect()
    )
    return sums.select(
        "model",
        "bucket",
        bucket_start=(pl.col("bucket") * width + lo).cast(pl.Datetime("ns")).dt.replace_time_zone("UTC"),
        MAE=_ratio("sum_abs", "n"),
        MASE=_ratio("sum_scaled", "n_scaled"),
        count=pl.col("n"),
        diverged=pl.col("diverged"),
    )


def format_number(x: float | None, digits: int = 4) -> str:
    """A figure with about ``digits`` significant digits, plain unless very large or small.

    >>> [format_number(v) for v in (1234.567, 0.123456, 12.0, 0.0, None, float("nan"), 3.2e9)]
    ['1235', '0.1235', '12.00', '0', '-', '-', '3.200e+09']
    """
    if x is None or not math.isfinite(x):
        return "-"
    if x == 0:
        return "0"
    magnitude = math.floor(math.log10(abs(x)))
    if magnitude >= 6 or magnitude < -3:
        return f"{x:.{digits - 1}e}"
    return f"{x:.{max(0, digits - 1 - magnitude)}f}"


def format_column(values: Sequence[float | None], digits: int = 4, max_decimals: int = 4) -> list[str]:
    """One column of figures with the same number of decimals, so the points line up.

    The decimals give the smallest figure about ``digits`` significant digits
    (at most ``max_decimals``); figures of a million or more are written in
    scientific notation.

    >>> format_column([2.0, 1.5, None, 0.25])
    ['2.0000', '1.5000', '-', '0.2500']
    >>> format_column([120.0, 95.25, 3e7], digits=3)
    ['120.0', '95.2', '3.00e+07']
    """
    plain = [abs(v) for v in values if v is not None and math.isfinite(v) and 0 < abs(v) < 1e6]
    smallest = math.floor(math.log10(min(plain))) if plain else 0
    decimals = min(max_decimals, max(0, digits - 1 - smallest))
    out = []
    for v in values:
        if v is None or not math.isfinite(v):
            out.append("-")
        elif abs(v) >= 1e6:
            out.append(f"{v:.{digits - 1}e}")
        else:
            out.append(f"{v:.{decimals}f}")
    return out


def format_coverage(x: float | None) -> str:
    return "-" if x is None or not math.isfinite(x) else f"{100 * x:.1f}%"


def formatted_metrics(metrics: pl.DataFrame) -> list[list[str]]:
    """Rows of a metrics frame (any of its columns) as strings, figures aligned per column."""
    columns = []
    for name in metrics.columns:
        values = metrics[name].to_list()
        if name in ("MAE", "RMSE"):
            columns.append(format_column(values, 4))
        elif name in ("MASE", "sMAPE") or name.startswith("MASE "):
            columns.append(format_column(values, 3))
        elif name == "coverage":
            columns.append([format_coverage(v) for v in values])
        else:
            columns.append(["-" if v is None else str(v) for v in values])
    return [list(row) for row in zip(*columns)]


def overall_table(
    metrics: pl.DataFrame, models_order: Sequence[str] | None = None
) -> tuple[list[str], list[list[str]]]:
    """Header and formatted rows of the overall metrics, best MASE first.

    With ``models_order``, the listed models come first in that order and the
    others follow by MASE.
    """
    rows = overall(metrics).sort(["MASE", "MAE", "model"], nulls_last=True)
    if models_order is not None:
        rank = {m: i for i, m in enumerate(models_order)}
        order = sorted(range(rows.height), key=lambda i: rank.get(rows["model"][i], len(rank)))
        rows = rows[order]
    return list(OVERALL_COLUMNS), formatted_metrics(rows.select(OVERALL_COLUMNS))


def format_table(metrics: pl.DataFrame, models_order: Sequence[str] | None = None) -> str:
    """The overall rows as a fixed-width terminal table, best MASE first.

    >>> m = pl.DataFrame({"model": ["naive", "gru"], "step": ["all", "all"], "MAE": [2.0, 1.5],
    ...     "RMSE": [3.0, 2.0], "MASE": [1.0, 0.75], "sMAPE": [10.0, 8.25], "coverage": [None, 0.9],
    ...     "count": [10, 10], "diverged": [0, 0]})
    >>> print(format_table(m))
    model    MAE   RMSE   MASE  sMAPE  coverage  count  diverged
    -----  -----  -----  -----  -----  --------  -----  --------
    gru    1.500  2.000  0.750   8.25     90.0%     10         0
    naive  2.000  3.000  1.000  10.00         -     10         0
    """
    header, body = overall_table(metrics, models_order)
    if not any(int(r[header.index("count")]) for r in body):
        return "(no forecast could be scored)"
    widths = [max([len(h), *(len(r[i]) for r in body)]) for i, h in enumerate(header)]

    def line(cells: list[str]) -> str:
        first = cells[0].ljust(widths[0])
        return "  ".join([first, *(c.rjust(w) for c, w in zip(cells[1:], widths[1:]))]).rstrip()

    return "\n".join([line(header), line(["-" * w for w in widths]), *(line(r) for r in body)])


def write_metrics_csv(metrics: pl.DataFrame, path: str | Path) -> None:
    """The full metrics table (per step and "all") as CSV."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    metrics.write_csv(path)
