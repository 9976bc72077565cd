"""Calendar windows: weeks from Monday, months of different lengths, quarters, years, local days."""
from __future__ import annotations

from datetime import UTC, datetime

import numpy as np
import polars as pl
import pytest

from streamseq import config as config_mod
from streamseq.backtesting import run_backtest
from streamseq.errors import ConfigError
from streamseq.grid import CalendarGrid, FixedGrid, default_season, parse_interval
from streamseq.specs import season

DAY = 86_400 * 10**9


def ns(*args, tz=UTC) -> int:
    return int(datetime(*args, tzinfo=tz).timestamp()) * 10**9


@pytest.mark.parametrize("text,tz", [("1mo", "UTC"), ("1q", "UTC"), ("1y", "UTC"), ("3mo", "Europe/Berlin"),
                                      ("1w", "UTC"), ("2w", "America/New_York"), ("1d", "Europe/Berlin"),
                                      ("1h", "UTC"), ("30min", "UTC"), ("1d", "UTC")])
def test_every_time_falls_in_exactly_one_window(text, tz):
    grid = parse_interval(text, tz)
    rng = np.random.default_rng(0)
    ts = rng.integers(ns(1990, 1, 1), ns(2030, 1, 1), 5_000)
    wid = grid.wid_of(ts)
    assert (grid.start_of(wid) <= ts).all() and (ts < grid.end_of(wid)).all()
    assert (grid.end_of(wid) == grid.start_of(wid + 1)).all()


def test_months_quarters_and_years_follow_the_calendar():
    m = parse_interval("1mo")
    wid = m.wid_of(np.array([ns(2024, 2, 10)]))
    assert m.start_of(wid)[0] == ns(2024, 2, 1) and m.end_of(wid)[0] == ns(2024, 3, 1)  # 29 days: a leap year
    ends = m.end_of(wid + np.arange(4))
    assert np.diff(np.r_[ns(2024, 2, 1), ends]).tolist() == [d * DAY for d in (29, 31, 30, 31)]
    q = parse_interval("1q")
    assert q.start_of(q.wid_of(np.array([ns(2024, 8, 15)])))[0] == ns(2024, 7, 1)
    y = parse_interval("1y")
    assert y.end_of(y.wid_of(np.array([ns(2023, 12, 31, 23)])))[0] == ns(2024, 1, 1)


def test_weeks_start_on_monday_and_local_days_follow_daylight_saving():
    w = parse_interval("1w")
    assert isinstance(w, FixedGrid)
    start = w.start_of(w.wid_of(np.array([ns(2024, 5, 16)])))[0]  # a Thursday
    assert datetime.fromtimestamp(start / 1e9, tz=UTC).weekday() == 0 and start == ns(2024, 5, 13)
    d = parse_interval("1d", "Europe/Berlin")
    assert isinstance(d, CalendarGrid)
    wid = d.wid_of(np.array([ns(2024, 3, 31, 12)]))  # the day clocks go forward
    assert (d.end_of(wid) - d.start_of(wid))[0] == 23 * 3600 * 10**9
    assert d.start_of(wid)[0] == ns(2024, 3, 30, 23)  # local midnight, UTC+1


def test_season_defaults_follow_the_interval():
    assert [default_season(parse_interval(t)) for t in ("1h", "30min", "1d", "1w", "1mo", "1q", "1y")] == \
        [24, 48, 7, 52, 12, 4, 1]
    cfg = config_mod.from_dict({"windowing": {"interval": "1mo"}})
    assert season(cfg) == 12
    assert season(config_mod.from_dict({"windowing": {"interval": "1mo"}, "forecast": {"season": 6}})) == 6


def test_bad_intervals_and_zones_are_config_errors():
    with pytest.raises(ConfigError, match="windowing.interval"):
        config_mod.from_dict({"windowing": {"interval": "0mo"}})
    with pytest.raises(ConfigError, match="windowing.timezone"):
        config_mod.from_dict({"windowing": {"interval": "1d", "timezone": "Mars/Olympus"}})


def test_monthly_replay_forecasts_target_the_month_ends(tmp_path):
    rng = np.random.default_rng(1)
    rows = []
    for key in ("a", "b"):
        for i in range(60):
            t = datetime(2015 + i // 12, i % 12 + 1, 1 + int(rng.integers(0, 27)), tzinfo=UTC)
            rows.append((key, t, 100 + 10 * np.sin(2 * np.pi * i / 12) + rng.normal()))
    df = pl.DataFrame(rows, schema=["key", "ts", "value"], orient="row")
    df.write_csv(tmp_path / "monthly.csv")
    cfg = config_mod.from_dict({
        "source": {"files": [str(tmp_path / "monthly.csv")]},
        "windowing": {"interval": "1mo"}, "forecast": {"horizon": 3, "models": ["seasonal_naive", "naive"]},
    })
    run_backtest(cfg, tmp_path / "out", progress=False, report=False)
    fc = pl.read_parquet(tmp_path / "out" / "forecasts.parquet")
    one = fc.filter((pl.col("key") == "a") & (pl.col("model") == "seasonal_naive")).sort("origin", "step")
    first = one.filter(pl.col("origin") == one["origin"].min())
    origin = first["origin"][0]
    assert origin.day == 1 and origin.hour == 0
    targets = first["target_ts"].to_list()
    assert [t.day for t in targets] == [1, 1, 1] and [t.month for t in targets] == [
        (origin.month + j - 1) % 12 + 1 for j in (1, 2, 3)]
    windows = pl.read_parquet(tmp_path / "out" / "windows.parquet")
    assert windows.filter(pl.col("key") == "a").height == 60  # one window per month, whatever its length
    # seasonal naive with the monthly default season (12): step 1 is the value 12 months before the target
    w = windows.filter(pl.col("key") == "a").sort("end")
    at = {e: v for e, v in zip(w["end"].to_list(), w["value"].to_list())}
    later = one.filter(pl.col("origin") == w["end"][30]).sort("step")
    expected = [at[w["end"][30 + j - 12]] for j in (1, 2, 3)]
    assert later["mean"].to_list() == pytest.approx(expected)
