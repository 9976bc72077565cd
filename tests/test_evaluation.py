"""Metrics on tiny frames, computed by hand."""
from __future__ import annotations

import math
from datetime import UTC, datetime, timedelta

import polars as pl
import pytest

from streamseq import evaluation as ev

T0 = datetime(2024, 1, 1, tzinfo=UTC)
H = timedelta(hours=1)
NAN = float("nan")


def t(i: int) -> datetime:
    return T0 + i * H


def actuals_frame(rows: list[tuple[str, int, float, bool]]) -> pl.DataFrame:
    return pl.DataFrame(
        {
            "key": [r[0] for r in rows],
            "end": [t(r[1]) for r in rows],
            "value": [r[2] for r in rows],
            "filled": [r[3] for r in rows],
        },
        schema={"key": pl.String, "end": pl.Datetime("ns", "UTC"), "value": pl.Float64, "filled": pl.Boolean},
    )


def forecasts_frame(rows: list[tuple]) -> pl.DataFrame:
    """rows: (key, model, origin index, step, mean, lo, hi)."""
    return pl.DataFrame(
        {
            "key": [r[0] for r in rows],
            "model": [r[1] for r in rows],
            "model_version": ["v1"] * len(rows),
            "origin": [t(r[2]) for r in rows],
            "step": [r[3] for r in rows],
            "target_ts": [t(r[2] + r[3]) for r in rows],
            "mean": [r[4] for r in rows],
            "lo": [r[5] for r in rows],
            "hi": [r[6] for r in rows],
        },
        schema={
            "key": pl.String,
            "model": pl.String,
            "model_version": pl.String,
            "origin": pl.Datetime("ns", "UTC"),
            "step": pl.Int16,
            "target_ts": pl.Datetime("ns", "UTC"),
            "mean": pl.Float64,
            "lo": pl.Float64,
            "hi": pl.Float64,
        },
    )


# season 2. Key a: 10 12 11 13 12 14 -> every lag-2 difference is 1, scale 1; the
# filled 99 at t6 must neither be scored nor enter the scale. Key b has 2 <= season
# points: lag-1 scale |7-5| = 2. Keys c and d have zero scale.
ACTUALS = actuals_frame(
    [("a", i, v, False) for i, v in enumerate([10.0, 12.0, 11.0, 13.0, 12.0, 14.0])]
    + [("a", 6, 99.0, True)]
    + [("b", 0, 5.0, False), ("b", 1, 7.0, False)]
    + [("c", i, 3.0, False) for i in range(3)]
    + [("d", 0, 0.0, False), ("d", 1, 0.0, False)]
)

FORECASTS = forecasts_frame(
    [
        # model m, origin t3: y(t4)=12, y(t5)=14, t6 gap-filled
        ("a", "m", 3, 1, 13.0, 12.0, 14.0),  # err 1, inside
        ("a", "m", 3, 1, 13.0, 12.0, 14.0),  # the same forecast delivered twice
        ("a", "m", 3, 2, 11.0, 12.0, 13.0),  # err 3, outside
        ("a", "m", 3, 3, 50.0, 0.0, 100.0),  # target filled: not scored
        # model m, origin t2: y(t3)=13, y(t4)=12, y(t5)=14
        ("a", "m", 2, 1, 13.0, None, None),  # err 0, no interval
        ("a", "m", 2, 2, 1e300, 0.0, 1.0),  # diverged
        ("a", "m", 2, 3, NAN, None, None),  # diverged
        ("b", "m", 0, 1, 8.0, NAN, NAN),  # err 1, scale 2, no interval
        ("b", "m", 1, 1, 8.0, 7.0, 9.0),  # target t2 not yet observed: not scored
        # model z
        ("c", "z", 1, 1, 0.0, None, None),  # err 3, zero scale: no MASE, sMAPE 200
        ("a", "z", 0, 1, 12.0, None, None),  # err 0
        ("d", "z", 0, 1, 0.0, None, None),  # 0 vs 0: sMAPE 0, zero scale
    ]
)


@pytest.fixture(scope="module")
def metrics() -> pl.DataFrame:
    return ev.score(FORECASTS, ACTUALS, season=2)


def row(metrics: pl.DataFrame, model: str, step: str) -> dict:
    rows = metrics.filter((pl.col("model") == model) & (pl.col("step") == step)).to_dicts()
    assert len(rows) == 1
    return rows[0]


def test_table_shape(metrics):
    assert metrics.columns == ev.METRIC_COLUMNS
    assert metrics.schema["step"] == pl.String
    assert metrics.select("model", "step").rows() == [
        ("m", "1"), ("m", "2"), ("m", "3"), ("m", "all"), ("z", "1"), ("z", "all"),
    ]


def test_key_scales_seasonal_and_fallback():
    scales = dict(ev.key_scales(ACTUALS, season=2).rows())
    assert scales == {"a": 1.0, "b": 2.0, "c": 0.0, "d": 0.0}
    one_point = actuals_frame([("e", 0, 4.0, False)])
    assert ev.key_scales(one_point, season=2)["scale"].to_list() == [None]


def test_step_one(metrics):
    r = row(metrics, "m", "1")
    assert r["count"] == 3 and r["diverged"] == 0
    assert r["MAE"] == pytest.approx(2 / 3)
    assert r["RMSE"] == pytest.approx(math.sqrt(2 / 3))
    assert r["MASE"] == pytest.approx((1 + 0 + 0.5) / 3)
    assert r["sMAPE"] == pytest.approx((200 / 25 + 0 + 200 / 15) / 3)
    assert r["coverage"] == pytest.approx(1.0)  # one row with an interval, inside


def test_diverged_rows_are_counted_and_excluded(metrics):
    r = row(metrics, "m", "2")
    assert (r["count"], r["diverged"]) == (1, 1)
    assert r["MAE"] == pytest.approx(3.0) and r["RMSE"] == pytest.approx(3.0)
    assert r["MASE"] == pytest.approx(3.0)
    assert r["sMAPE"] == pytest.approx(24.0)
    assert r["coverage"] == 0.0

    r = row(metrics, "m", "3")  # one filled target, one NaN mean
    assert (r["count"], r["diverged"]) == (0, 1)
    assert r["MAE"] is None and r["MASE"] is None and r["coverage"] is None


def test_all_steps(metrics):
    r = row(metrics, "m", "all")
    assert (r["count"], r["diverged"]) == (4, 2)
    assert r["MAE"] == pytest.approx(5 / 4)
    assert r["RMSE"] == pytest.approx(math.sqrt(11 / 4))
    assert r["MASE"] == pytest.approx((1 + 0 + 0.5 + 3) / 4)
    assert r["sMAPE"] == pytest.approx((8 + 0 + 200 / 15 + 24) / 4)
    assert r["coverage"] == pytest.approx(0.5)


def test_zero_scale_keys_left_out_of_mase_only(metrics):
    r = row(metrics, "z", "all")
    assert (r["count"], r["diverged"]) == (3, 0)
    assert r["MAE"] == pytest.approx(1.0)
    assert r["RMSE"] == pytest.approx(math.sqrt(3.0))
    assert r["MASE"] == pytest.approx(0.0)  # only key a counts
    assert r["sMAPE"] == pytest.approx(200 / 3)
    assert r["coverage"] is None


def test_filled_actuals_never_scored():
    only_filled = forecasts_frame([("a", "m", 5, 1, 99.0, 98.0, 100.0)])
    r = ev.score(only_filled, ACTUALS, season=2).to_dicts()
    assert [(x["step"], x["count"], x["diverged"], x["MAE"]) for x in r] == [("1", 0, 0, None), ("all", 0, 0, None)]


def test_other_time_units_join():
    actuals = ACTUALS.with_columns(pl.col("end").cast(pl.Datetime("us", "UTC")))
    assert ev.score(FORECASTS, actuals, season=2).equals(ev.score(FORECASTS, ACTUALS, season=2))


def test_empty_forecasts():
    out = ev.score(FORECASTS.head(0), ACTUALS, season=2)
    assert out.height == 0 and out.columns == ev.METRIC_COLUMNS


def test_error_by_step_and_overall(metrics):
    assert ev.error_by_step(metrics)["step"].to_list() == ["1", "2", "3", "1"]
    assert ev.overall(metrics)["model"].to_list() == ["m", "z"]


def test_format_table(metrics):
    text = ev.format_table(metrics)
    lines = text.splitlines()
    assert lines[0].split() == ev.OVERALL_COLUMNS
    assert [ln.split()[0] for ln in lines[2:]] == ["z", "m"]  # best MASE first
    assert lines[3].split() == ["m", "1.250", "1.658", "1.12", "11.3", "50.0%", "4", "2"]
    assert lines[2].split()[5] == "-"  # no interval
    forced = ev.format_table(metrics, models_order=["m", "z"]).splitlines()
    assert [ln.split()[0] for ln in forced[2:]] == ["m", "z"]
    assert len({len(ln) for ln in lines[:2]}) == 1


def test_write_metrics_csv(metrics, tmp_path):
    path = tmp_path / "out" / "metrics.csv"
    ev.write_metrics_csv(metrics, path)
    back = pl.read_csv(path, schema_overrides={"step": pl.String})
    assert back.columns == ev.METRIC_COLUMNS
    assert back.height == metrics.height
    assert back["MAE"].to_list()[0] == pytest.approx(2 / 3)


def test_error_over_time():
    out = ev.error_over_time(FORECASTS, ACTUALS, buckets=2)
    assert out.columns == ["model", "bucket", "bucket_start", "MAE", "MASE", "count", "diverged"]
    # origins t0..t3 in two buckets of 1.5 hours
    m = out.filter(pl.col("model") == "m")
    assert m.select("bucket", "count", "diverged").rows() == [(0, 1, 0), (1, 3, 2)]
    assert m["MAE"].to_list() == pytest.approx([1.0, 4 / 3])
    assert m["bucket_start"].to_list() == [t(0), t(0) + 1.5 * H]
    assert ev.error_over_time(FORECASTS.head(0), ACTUALS).height == 0
