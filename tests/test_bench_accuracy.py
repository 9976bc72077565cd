"""The accuracy suite's scoring rule (bench/accuracy/common.py): calendar mapping, origins, metrics, data files."""
from __future__ import annotations

import sys
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import polars as pl
import pytest

ACC = Path(__file__).resolve().parents[1] / "bench" / "accuracy"
sys.path.insert(0, str(ACC))

import common  # noqa: E402


def month_frame(lengths: dict[str, int], h: int, seed: int = 0) -> pl.DataFrame:
    """Monthly series whose train parts all end in 1999-12, with ``h`` test months after."""
    rng = np.random.default_rng(seed)
    rows = []
    for key, n in lengths.items():
        for i in range(n + h):
            m = 1999 * 12 + 11 + (i - n + 1)
            season = 10 * np.sin(2 * np.pi * (m % 12) / 12)
            rows.append((key, datetime(m // 12, m % 12 + 1, 1, tzinfo=UTC), 100 + season + rng.normal(),
                         "train" if i < n else "test"))
    return pl.DataFrame(rows, schema={"key": pl.String, "ts": common.UTC_NS, "value": pl.Float64, "split": pl.String},
                        orient="row")


def test_stream_clock_maps_months_and_quarters_to_consecutive_days():
    f = pl.DataFrame({"ts": [datetime(1999, m, 1, tzinfo=UTC) for m in (10, 11, 12)] + [datetime(2000, 1, 1, tzinfo=UTC)]})
    g, interval = common.stream_clock(f.with_columns(pl.col("ts").cast(common.UTC_NS)), "1mo")
    assert interval == "1d"
    assert g["ts"].diff().drop_nulls().dt.total_days().to_list() == [1, 1, 1]
    q, interval = common.stream_clock(f.with_columns(pl.col("ts").cast(common.UTC_NS)), "1q")
    # Q4 1999 is quarter 119 since 1970 (three months, one day); Q1 2000 the next day
    assert q["ts"].dt.date().to_list() == [datetime(1970, 4, 30).date()] * 3 + [datetime(1970, 5, 1).date()]
    h, interval = common.stream_clock(f, "1h")
    assert interval == "1h" and h.equals(f)


def test_holdout_origin_is_end_of_train_part_and_reference_matches_streamseq(tmp_path):
    """Replay the train parts: streamseq's seasonal naive at the scored origin equals the suite's own."""
    from streamseq.backtesting import run_backtest
    from streamseq.config import from_dict

    ds = common.Dataset("toy", "", "1mo", 12, 6, "holdout")
    frame = month_frame({"a": 30, "b": 14, "c": 40}, h=6)
    stream, interval = common.stream_clock(frame, ds.freq)
    actuals = common.actual_windows(stream, interval)
    origins = common.scored_origins(actuals, ds, 0)
    assert origins["h"].to_list() == [6, 6, 6]
    assert origins["origin_idx"].to_list() == [29, 13, 39]
    assert origins["origin"].n_unique() == 1  # aligned ends: one instant for every key

    src = tmp_path / "s.parquet"
    stream.filter(pl.col("split") == "train").drop("split").sort("ts", "key").write_parquet(src)
    cfg = from_dict({"source": {"files": [str(src)]}, "windowing": {"interval": interval},
                     "forecast": {"horizon": 6, "season": 12, "models": ["naive", "seasonal_naive"], "ensemble": False}})
    run_backtest(cfg, tmp_path / "out", progress=False, report=False)
    ours = pl.read_parquet(tmp_path / "out" / "forecasts.parquet").select(common.FORECAST_COLUMNS)
    ref = common.reference_forecasts(actuals, origins, 12, interval, 6)
    rows = common.scored_rows(pl.concat([ours.with_columns(pl.col("step").cast(pl.Int64)), ref]), actuals, origins,
                              common.key_scales(actuals, ds))
    assert rows.group_by("model").len().sort("model")["len"].to_list() == [18] * 4  # 3 keys x h, no more
    assert rows.filter(pl.col("model") != "naive (ref)")["target_ts"].min() > origins["origin"][0]
    table = {r["model"]: r for r in common.summarise(rows).iter_rows(named=True)}
    assert table["seasonal_naive"]["MAE"] == pytest.approx(table[common.REFERENCE]["MAE"], rel=1e-12)
    assert table["naive"]["MAE"] == pytest.approx(table["naive (ref)"]["MAE"], rel=1e-12)
    assert table["seasonal_naive"]["rel_MAE"] == pytest.approx(1.0)


def test_summarise_by_hand():
    t0 = datetime(2024, 1, 1, tzinfo=UTC)
    actuals = pl.DataFrame({"key": ["k"] * 4, "end": [datetime(2024, 1, 1, h, tzinfo=UTC) for h in range(4)],
                            "idx": [0, 1, 2, 3], "value": [10.0, 12.0, 10.0, 12.0]}).with_columns(pl.col("end").cast(common.UTC_NS))
    origins = pl.DataFrame({"key": ["k"], "origin": [t0], "origin_idx": [0], "h": [2]}).with_columns(
        pl.col("origin").cast(common.UTC_NS))
    f = pl.DataFrame({
        "key": ["k"] * 6, "model": ["m", "m", common.REFERENCE, common.REFERENCE, "x", "x"],
        "origin": [t0] * 6, "step": [1, 2] * 3,
        "target_ts": [datetime(2024, 1, 1, h, tzinfo=UTC) for h in (1, 2)] * 3,
        "mean": [11.0, 10.0, 10.0, 11.0, 1e30, 10.0], "lo": [10.5, 9.0, None, None, None, None],
        "hi": [11.5, 11.0, None, None, None, None],
    }).with_columns(pl.col("origin", "target_ts").cast(common.UTC_NS))
    scales = pl.DataFrame({"key": ["k"], "scale": [2.0]})
    table = {r["model"]: r for r in common.summarise(common.scored_rows(f, actuals, origins, scales)).iter_rows(named=True)}
    m = table["m"]
    assert m["MAE"] == pytest.approx(0.5)  # |11-12|, |10-10|
    assert m["rel_MAE"] == pytest.approx(1.0 / 3.0)  # against |10-12| + |11-10|
    assert m["MASE"] == pytest.approx(0.25)
    assert m["sMAPE"] == pytest.approx((200 * 1 / 23 + 0) / 2)
    assert m["coverage"] == pytest.approx(0.5)  # 12 outside [10.5, 11.5], 10 inside [9, 11]
    assert table["x"]["diverged"] == 1 and table["x"]["MAE"] == pytest.approx(0.0)  # the absurd row is left out


def test_sample_origins_spreads_evenly_per_key():
    t = [datetime(2024, 1, 1, h, tzinfo=UTC) for h in range(10)]
    o = pl.DataFrame({"key": ["a"] * 10 + ["b"] * 2, "origin": t + t[:2], "origin_idx": list(range(10)) + [0, 1]})
    s = common.sample_origins(o, 4)
    assert s.filter(pl.col("key") == "a")["origin_idx"].to_list() == [0, 3, 6, 9]
    assert s.filter(pl.col("key") == "b").height == 2


@pytest.mark.parametrize("name", sorted(common.DATASETS))
def test_committed_data_loads_in_stream_order(name):
    ds = common.DATASETS[name]
    frame = common.load(ds)
    assert frame["value"].null_count() == 0 and frame["ts"].dtype == common.UTC_NS
    if ds.path.startswith("bench/"):
        raw = pl.read_parquet(common.REPO / ds.path)
        assert raw["ts"].is_sorted(), "files are in stream order (ts, then key)"
    if ds.protocol == "holdout":
        h = frame.filter(pl.col("split") == "test").group_by("key").len()["len"].unique().to_list()
        assert h == [ds.horizon]


def test_tuned_river_never_sees_the_test_part():
    """The grid choice and the forecast at the holdout origin do not move when only the test values change."""
    import suite

    ds = common.Dataset("toy", "", "1mo", 12, 6, "holdout")
    out = []
    for seed_shift in (0.0, 1e3):
        frame = month_frame({"a": 40, "b": 30}, h=6).with_columns(
            pl.when(pl.col("split") == "test").then(pl.col("value") + seed_shift).otherwise(pl.col("value")).alias("value"))
        stream, interval = common.stream_clock(frame, ds.freq)
        actuals = common.actual_windows(stream, interval)
        origins = common.scored_origins(actuals, ds, 0)
        train_len = dict(actuals.filter(pl.col("split") == "train").group_by("key").len().iter_rows())
        f, _, picks = suite.river_tuned("holt_winters", suite.HW_GRID, ds, actuals, origins, interval, train_len)
        out.append((f.sort("key", "step"), picks))
    assert out[0][1] == out[1][1]
    assert out[0][0]["mean"].to_list() == out[1][0]["mean"].to_list()
    assert out[0][0].height == 2 * 6 and out[0][0]["mean"].is_finite().all()
