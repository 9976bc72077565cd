"""The synthetic stream generator: determinism, shape, irregularity and regimes."""
from __future__ import annotations

from datetime import UTC, datetime, timedelta

import polars as pl
import pytest

from streamseq.errors import ConfigError
from streamseq.synthetic import draw_key_params, generate, main, write

HOUR_NS = 3600 * 10**9
START = datetime(2024, 1, 1, tzinfo=UTC)


@pytest.fixture(scope="module")
def small() -> pl.DataFrame:
    return generate(n_keys=20, n_windows=2000, seed=3)


def test_same_seed_same_frame(small):
    assert small.equals(generate(n_keys=20, n_windows=2000, seed=3))


def test_other_seed_other_frame(small):
    other = generate(n_keys=20, n_windows=2000, seed=4)
    assert not small.equals(other)


def test_columns_types_and_order(small):
    assert small.schema == pl.Schema(
        {"key": pl.String, "ts": pl.Datetime("ns", "UTC"), "value": pl.Float64}
    )
    assert small.select("key", "ts").equals(small.select("key", "ts").sort(["ts", "key"]))
    assert small["key"].n_unique() == 20
    assert small["key"].min() == "k00000" and small["key"].max() == "k00019"
    assert small["value"].null_count() == 0 and small["value"].is_finite().all()


def test_timestamps_inside_the_span(small):
    assert small["ts"].min() >= START
    assert small["ts"].max() < START + timedelta(hours=2000)


def test_regular_stream_is_a_full_grid():
    df = generate(n_keys=5, n_windows=100, irregular=False, obs_per_window=2)
    assert df.height == 5 * 100 * 2
    offsets = (df["ts"].dt.epoch("ns") % HOUR_NS).unique().sort().to_list()
    assert offsets == [0, HOUR_NS // 2]


def test_irregular_timestamps_and_gaps(small):
    offsets = small["ts"].dt.epoch("ns") % HOUR_NS
    assert offsets.n_unique() > 0.9 * small.height  # jittered, not on the hour
    windows = small.select("key", pl.col("ts").dt.truncate("1h")).unique()
    empty = 1 - windows.height / (20 * 2000)
    assert 0.005 < empty < 0.08  # a few percent of windows are empty
    steps = windows.sort("key", "ts").select(pl.col("ts").diff().over("key").dt.total_hours()).drop_nulls()
    assert steps["ts"].max() <= 7  # gaps are short runs


def test_obs_per_window_fraction():
    df = generate(n_keys=10, n_windows=500, obs_per_window=2.5, irregular=False)
    assert 2.3 < df.height / (10 * 500) < 2.7


def test_regime_changes_shift_the_level(small):
    p = draw_key_params(n_keys=20, n_windows=2000, seed=3)
    week = 168
    checked = 0
    for k in range(20):
        at = [int(a) for a in p.change_at[k] if a < 2000]
        assert 1 <= len(at) <= 3
        first = at[0]
        if first < week or (len(at) > 1 and at[1] - first < week):
            continue
        w = pl.col("ts").dt.epoch("ns") // HOUR_NS - int(START.timestamp()) // 3600
        rows = small.filter(pl.col("key") == f"k{k:05d}").with_columns(w.alias("w"))
        before = rows.filter((pl.col("w") >= first - week) & (pl.col("w") < first))["value"].mean()
        after = rows.filter((pl.col("w") >= first) & (pl.col("w") < first + week))["value"].mean()
        shift = p.level_shift[k, 0]
        assert abs(after - before) > 0.5 * abs(shift)
        assert (after - before) * shift > 0
        checked += 1
    assert checked >= 5


def test_no_regimes_changes_only_the_values():
    a = generate(n_keys=5, n_windows=300, seed=1, regimes=True)
    b = generate(n_keys=5, n_windows=300, seed=1, regimes=False)
    assert a.select("key", "ts").equals(b.select("key", "ts"))
    assert not a["value"].equals(b["value"])
    assert (draw_key_params(5, 300, seed=1, regimes=False).level_shift == 0).all()


def test_million_scale_row_count():
    regular = generate(n_keys=1000, n_windows=2000, irregular=False)
    assert regular.height == 2_000_000
    irregular = generate(n_keys=1000, n_windows=2000)
    assert 0.92 * 2_000_000 < irregular.height < 2_000_000


def test_other_interval_and_start():
    df = generate(n_keys=3, n_windows=10, interval="1d", start="2023-06-01", irregular=False)
    assert df["ts"].min() == datetime(2023, 6, 1, tzinfo=UTC)
    assert df["ts"].dt.date().n_unique() == 10


@pytest.mark.parametrize("kwargs", [{"n_keys": 0}, {"n_windows": 0}, {"obs_per_window": 0}, {"interval": "soon"}])
def test_bad_arguments(kwargs):
    args = {"n_keys": 2, "n_windows": 2} | kwargs
    with pytest.raises(ConfigError):
        generate(**args)


@pytest.mark.parametrize("suffix", [".parquet", ".csv"])
def test_write_and_cli(tmp_path, suffix):
    out = tmp_path / f"s{suffix}"
    assert main(["--keys", "4", "--windows", "50", "--out", str(out), "--seed", "7"]) == 0
    df = generate(n_keys=4, n_windows=50, seed=7)
    if suffix == ".parquet":
        assert pl.read_parquet(out).equals(df)
    else:
        back = pl.read_csv(out).with_columns(pl.col("ts").str.to_datetime(time_unit="ns", time_zone="UTC"))
        assert back["key"].equals(df["key"]) and back["ts"].equals(df["ts"])
        assert (back["value"] - df["value"]).abs().max() < 1e-9
    with pytest.raises(ConfigError):
        write(df, tmp_path / "s.json")


@pytest.mark.parametrize("windows", [1, 2, 5, 6])
def test_very_short_streams_generate(windows):
    df = generate(3, windows, seed=1)
    assert df["key"].n_unique() <= 3 and df.height <= 3 * windows * 2
