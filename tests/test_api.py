"""The Python API: backtest(df) is the CLI's replay on a frame; Forecaster streams chunk by chunk and saves state."""
from __future__ import annotations

import subprocess
import sys
import warnings
from pathlib import Path

import numpy as np
import pandas as pd
import polars as pl
import pytest

import streamseq
from streamseq.commands import main
from streamseq.errors import ArtifactError, ConfigError, InputError, StreamseqWarning
from streamseq.synthetic import generate

ROOT = Path(__file__).resolve().parents[1]
MODELS = ["gru", "lstm", "snarimax", "holt_winters", "naive", "seasonal_naive"]


@pytest.fixture(scope="module")
def frame() -> pl.DataFrame:
    return generate(n_keys=3, n_windows=120, seed=5)


def test_import_stays_light():
    code = "import sys, streamseq; print('torch' in sys.modules, 'polars' in sys.modules, callable(streamseq.backtest))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, check=True)
    assert out.stdout.split() == ["False", "False", "True"]


def test_backtest_gives_the_cli_forecasts(tmp_path, frame, capsys):
    """Same data, same settings: the frame through streamseq.backtest and its file through `streamseq replay`."""
    path = tmp_path / "data.parquet"
    frame.write_parquet(path)
    rc = main(["replay", str(path), "--interval", "1h", "--horizon", "4", "--season", "24", "--models", ",".join(MODELS),
               "--out", str(tmp_path / "cli"), "--no-progress", "--no-report"])
    assert rc == 0
    capsys.readouterr()
    bt = streamseq.backtest(frame, key="key", time="ts", value="value", interval="1h", horizon=4, season=24,
                            models=MODELS)
    cli = pl.read_parquet(tmp_path / "cli" / "forecasts.parquet")
    assert bt.forecasts.drop("actual").equals(cli)
    assert set(bt.metrics["model"]) == set(MODELS) | {"ensemble"}
    cli_metrics = pl.read_csv(tmp_path / "cli" / "metrics.csv").filter(pl.col("step") == "all")
    assert bt.metrics.sort("model")["MAE"].to_list() == pytest.approx(cli_metrics.sort("model")["MAE"].to_list())


def test_backtest_joins_the_actuals(frame):
    with pytest.warns(StreamseqWarning, match="not in time order .* replaying it sorted by time"):
        bt = streamseq.backtest(frame.sample(fraction=1.0, shuffle=True, seed=1), interval="1h", horizon=3,
                                models="naive")
    fc = bt.forecasts
    windows = bt.windows.filter(~pl.col("filled"))
    row = fc.filter(pl.col("actual").is_not_null()).row(100, named=True)
    truth = windows.filter((pl.col("key") == row["key"]) & (pl.col("end") == row["target_ts"]))["value"].item()
    assert row["actual"] == truth
    # targets past the end of the data have no actual yet
    last = windows["end"].max()
    assert fc.filter(pl.col("target_ts") > last)["actual"].null_count() == fc.filter(pl.col("target_ts") > last).height
    assert bt.summary["dead letters"] == 0  # a shuffled frame is sorted first, as the CLI sorts a file


def test_pandas_in_pandas_out(frame, tmp_path):
    pdf = frame.to_pandas().set_index("ts")  # time as the index is common in pandas
    bt = streamseq.backtest(pdf, interval="1h", horizon=3, models=["naive", "seasonal_naive"])
    assert isinstance(bt.forecasts, pd.DataFrame) and isinstance(bt.metrics, pd.DataFrame)
    assert str(bt.forecasts["origin"].dtype) == "datetime64[ns, UTC]"
    assert {"actual", "mean", "lo", "hi"} <= set(bt.forecasts.columns)
    report = bt.report(tmp_path / "r" / "report.html")
    assert "<h1>streamseq backtest" in report.read_text()


def test_backtest_warns_and_refuses_unknown_settings(frame):
    with pytest.warns(StreamseqWarning, match="horizon 500 is longer than the data"):
        streamseq.backtest(frame, interval="1h", horizon=500, models="naive")
    with pytest.raises(ConfigError, match="horizn"):
        streamseq.backtest(frame, horizn=3)
    with pytest.raises(InputError, match="column 'price' not found"):
        streamseq.backtest(frame, value="price")


def test_settings_reach_the_config():
    from streamseq.api import make_config

    cfg = make_config("k", "t", ["v", "w"], {"interval": "15min", "lateness": "5min", "level": 0.8,
                                               "models": "gru,naive", "rnn": {"hidden": 8}, "learn": False})
    assert (cfg.windowing.interval, cfg.windowing.allowed_lateness, cfg.forecast.interval_level) == ("15min", "5min", 0.8)
    assert cfg.forecast.models == ["gru", "naive"] and cfg.rnn.hidden == 8 and cfg.rnn.learn is False
    assert cfg.source.value_cols == ["v", "w"]


# -- Forecaster ----------------------------------------------------------------------------


def stream(df: pl.DataFrame, cuts, **kw) -> pl.DataFrame:
    fc = streamseq.Forecaster(**kw)
    bounds = [0, *cuts, df.height]
    out = [fc.update(df.slice(a, b - a)) for a, b in zip(bounds[:-1], bounds[1:])]
    out.append(fc.flush())
    return pl.concat(out)


@pytest.mark.parametrize("name,data,extra", [
    ("irregular times, empty windows skipped", dict(irregular=True), dict(gap="skip")),
    ("regular times, forward fill", dict(irregular=False), {}),
    ("irregular times, forward fill, no online learning", dict(irregular=True), dict(learn=False)),
])
def test_forecaster_gives_the_same_forecasts_whatever_the_chunks(name, data, extra):
    df = generate(n_keys=3, n_windows=80, seed=3, **data)
    kw = dict(interval="1h", horizon=4, season=24, models=["gru", "lstm", "snarimax", "seasonal_naive"], **extra)
    whole = stream(df, [], **kw)
    rng = np.random.default_rng(0)
    random_cuts = sorted(rng.choice(np.arange(1, df.height), 30, replace=False).tolist())
    assert whole.height > 1000
    assert stream(df, list(range(37, df.height, 37)), **kw).equals(whole)
    assert stream(df, random_cuts, **kw).equals(whole)
    assert stream(df, list(range(1, 120)), **kw).equals(whole)  # a row at a time, then the rest


def test_forecaster_update_returns_what_the_chunk_closed():
    t = pl.datetime_range(pl.datetime(2024, 1, 1), pl.datetime(2024, 1, 1, 5), "1h", time_zone="UTC", eager=True)
    df = pl.DataFrame({"key": ["a"] * 6, "ts": t, "value": [1.0, 2, 3, 4, 5, 6]})
    fc = streamseq.Forecaster(interval="1h", horizon=2, models=["naive"])
    assert fc.update(df.head(1)).height == 0  # the first window is still open
    out = fc.update(df.slice(1, 1))  # 01:00 closes the window ending 01:00
    assert out["origin"].unique().to_list() == [t[1]] and out["mean"].to_list() == [1.0, 1.0]
    assert out["target_ts"].to_list() == [t[2], t[3]]


def test_forecaster_save_and_load_continue_exactly(tmp_path, frame):
    kw = dict(interval="1h", horizon=4, season=24, models=MODELS, gap="skip")
    whole = stream(frame, [], **kw)
    half = frame.height // 2
    fc = streamseq.Forecaster(**kw)
    first = fc.update(frame.head(half))
    path = fc.save(tmp_path / "state.safetensors")
    assert path.read_bytes()[:8] != b"\x80\x04\x95"[:8]  # not a pickle
    again = streamseq.Forecaster.load(path)
    assert again.keys == fc.keys and again.config.forecast.models == MODELS
    rest = pl.concat([again.update(frame.slice(half)), again.flush()])
    assert pl.concat([first, rest]).equals(whole)


def test_load_refuses_a_foreign_file(tmp_path):
    bad = tmp_path / "x.safetensors"
    bad.write_bytes(b"not safetensors")
    with pytest.raises(ArtifactError):
        streamseq.Forecaster.load(bad)


def test_forecaster_bad_rows_are_dead_letters_not_errors():
    df = pl.DataFrame({"key": ["a", None, "a", "a"], "ts": ["2024-01-01T00:10:00", "2024-01-01T00:20:00", "yesterday",
                                                           "2024-01-01T01:10:00"], "value": ["1", "2", "3", "x"]})
    fc = streamseq.Forecaster(interval="1h", horizon=2, models=["naive"])
    fc.update(df)
    reasons = [(d.offset, d.reason) for d in fc.dead_letters]
    assert [o for o, _ in reasons] == [1, 2, 3]
    assert "missing key" in reasons[0][1] and "time" in reasons[1][1] and "value" in reasons[2][1]
    assert fc.stats.records_in == 1


def test_forecaster_pandas_chunks():
    df = generate(n_keys=2, n_windows=60, seed=1).to_pandas()
    fc = streamseq.Forecaster(interval="1h", horizon=3, models=["seasonal_naive"])
    outs = [fc.update(df.iloc[i:i + 25]) for i in range(0, len(df), 25)]
    assert all(isinstance(o, pd.DataFrame) for o in outs)
    assert sum(len(o) for o in outs) > 0
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert isinstance(fc.flush(like="pandas"), pd.DataFrame)
