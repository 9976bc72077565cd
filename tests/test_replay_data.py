"""Every replay_data/ config points at a file that loads and has the columns it names."""
from __future__ import annotations

import tomllib
from pathlib import Path

import numpy as np
import polars as pl
import pytest

DATA = Path(__file__).resolve().parent.parent / "replay_data"
CONFIGS = sorted(DATA.glob("*.toml"))
EXPECTED = {"parking", "energy", "stocks", "synthetic"}
AGGS = {"mean", "first", "last", "min", "max", "sum", "count"}


def _load(path: Path) -> pl.DataFrame:
    if path.suffix == ".parquet":
        return pl.read_parquet(path)
    return pl.read_csv(path)


def _config(name: str) -> dict:
    return tomllib.loads((DATA / f"{name}.toml").read_text())


def test_every_dataset_has_a_config():
    assert {p.stem for p in CONFIGS} == EXPECTED
    assert (DATA / "README.md").is_file()


def test_total_size_under_5_mb():
    total = sum(p.stat().st_size for p in DATA.iterdir() if p.is_file())
    assert total < 5 * 1024 * 1024


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: p.stem)
def test_config_shape(path: Path):
    cfg = tomllib.loads(path.read_text())
    assert cfg["name"] == path.stem
    assert cfg["kind"] in ("sensor", "price")
    win, fc = cfg["windowing"], cfg["forecast"]
    assert win["gap"] in ("ffill", "skip")
    agg = win["agg"]
    if isinstance(agg, dict):
        assert list(agg)[0] == cfg["source"]["value_cols"][0]  # the target stays feature 0
        assert set(agg) <= set(cfg["source"]["value_cols"])
        for aggs in agg.values():
            assert set([aggs] if isinstance(aggs, str) else aggs) <= AGGS
    else:
        assert agg in AGGS or (agg == "ohlcv" and cfg["kind"] == "price")
    assert fc["horizon"] >= 1 and fc["season"] >= 2
    assert {"naive", "seasonal_naive"} <= set(fc["models"])


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: p.stem)
def test_files_load_with_configured_columns(path: Path):
    src = tomllib.loads(path.read_text())["source"]
    for name in src["files"]:
        df = _load(path.parent / name)
        wanted = [src["key_col"], src["time_col"], *src["value_cols"]]
        assert set(wanted) <= set(df.columns)
        assert df.height > 1000
        assert df[src["key_col"]].n_unique() > 1
        for col in src["value_cols"]:
            assert df[col].dtype.is_numeric()
            assert df[col].null_count() == 0


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: p.stem)
def test_files_sorted_by_time_then_key(path: Path):
    src = tomllib.loads(path.read_text())["source"]
    for name in src["files"]:
        df = _load(path.parent / name)
        key, t = src["key_col"], src["time_col"]
        assert df.select(key, t).equals(df.select(key, t).sort([t, key]))


def test_parking_as_documented():
    df = pl.read_csv(DATA / "parking.csv")
    assert df.columns == ["SystemCodeNumber", "Capacity", "Occupancy", "LastUpdated"]
    assert df.height == 35_717 and df["SystemCodeNumber"].n_unique() == 30
    ts = df["LastUpdated"].str.to_datetime("%Y-%m-%d %H:%M:%S")  # raises on any other format
    assert ts.dt.hour().min() == 7 and ts.dt.hour().max() == 16


def test_parking_season_is_windows_per_day():
    cfg = _config("parking")
    df = pl.read_csv(DATA / "parking.csv").with_columns(
        pl.col("LastUpdated").str.to_datetime("%Y-%m-%d %H:%M:%S").dt.truncate(cfg["windowing"]["interval"])
    )
    per_day = df.select("SystemCodeNumber", "LastUpdated").unique().group_by(
        "SystemCodeNumber", pl.col("LastUpdated").dt.date()
    ).len()
    assert per_day["len"].mode().to_list() == [cfg["forecast"]["season"]]


def test_energy_as_documented():
    df = pl.read_parquet(DATA / "energy.parquet")
    assert df.columns == ["channel", "ts", "value"]
    assert df.height == 12 * 19_735
    assert set(df["channel"].unique()) == {"Appliances", "lights", "T_out", *(f"T{i}" for i in range(1, 10))}


def test_stocks_as_documented():
    df = pl.read_csv(DATA / "stocks.csv")
    assert df.columns == ["symbol", "date", "open", "high", "low", "close", "volume"]
    assert df.height == 16_194
    assert set(df["symbol"].unique()) == {"AAPL", "AMZN", "GOOG", "META", "NFLX", "NVDA"}
    assert (df["high"] >= df["low"]).all()
    assert _config("stocks")["source"]["value_cols"][0] == "close"


def test_synthetic_file_matches_generator():
    from streamseq.synthetic import generate

    df = pl.read_parquet(DATA / "synthetic.parquet")
    fresh = generate(n_keys=20, n_windows=1500, interval="1h", seed=0)
    assert df.schema == fresh.schema and df.height == fresh.height
    assert df.select("key", "ts").equals(fresh.select("key", "ts"))
    # Values agree to the last few bits: numpy's sin/exp may round differently from one release to the next.
    np.testing.assert_allclose(df["value"].to_numpy(), fresh["value"].to_numpy(), rtol=1e-12, atol=1e-9)
