"""The README's Python examples run as written (from a folder holding the repository's replay_data/).

The examples live here, verbatim; the README shows them. test_readme_shows_these_examples keeps the two
in step: every ```python block of README.md must be one of these (the Quix Streams example needs a broker
and quixstreams, whose confluent-kafka pin clashes with the test tools': it was run by hand, see its note).
"""
from __future__ import annotations

import os
import re
import sys
import textwrap
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

EXAMPLES = {
    "backtest": '''
import polars as pl
import streamseq

df = pl.read_csv("replay_data/parking.csv", try_parse_dates=True)
bt = streamseq.backtest(df, key="SystemCodeNumber", time="LastUpdated", value="Occupancy",
                        interval="1h", horizon=9, season=9, gap="skip", models=["gru", "seasonal_naive"])
print(bt.table)                    # what `streamseq replay` prints
bt.metrics                         # one row per model: MAE, RMSE, MASE, sMAPE, coverage, count
bt.forecasts                       # key, model, origin, step, target_ts, mean, lo, hi, actual
bt.report("out/parking-api.html")  # the report `streamseq replay` writes (needs streamseq[report])
''',
    "latest": '''
import polars as pl

fc = pl.read_parquet("out/parking/forecasts.parquet")
latest = fc.filter(pl.col("origin") == pl.col("origin").max().over("key"))   # each key's newest forecast
print(latest.filter(pl.col("model") == "ensemble").select("key", "step", "target_ts", "mean", "lo", "hi"))
''',
    "forecaster": '''
import polars as pl
import streamseq

df = pl.read_csv("replay_data/parking.csv", try_parse_dates=True)
fc = streamseq.Forecaster(key="SystemCodeNumber", time="LastUpdated", value="Occupancy",
                          interval="1h", horizon=9, season=9, gap="skip", models=["gru", "seasonal_naive"])
for chunk in df.iter_slices(2000):      # rows as they arrive, in time order
    new = fc.update(chunk)              # the forecasts of the windows this chunk closed
fc.save("parking.safetensors")          # every key's state, the weights, the config (safetensors + JSON)
fc = streamseq.Forecaster.load("parking.safetensors")   # carries on where it stopped
''',
    "bytewax": '''
import streamseq
from bytewax import operators as op
from bytewax.connectors.stdio import StdOutSink
from bytewax.dataflow import Dataflow
from bytewax.testing import TestingSource, run_main

readings = streamseq.synthetic.generate(n_keys=3, n_windows=100, seed=1)   # key, ts, value
forecaster = streamseq.Forecaster(interval="1h", horizon=6, models=["gru", "seasonal_naive"])

flow = Dataflow("forecasts")
chunks = op.input("readings", flow, TestingSource(list(readings.iter_slices(50))))
forecasts = op.flat_map("forecast", chunks, lambda chunk: forecaster.update(chunk).to_dicts())
op.output("print", op.filter("next-hour", forecasts, lambda f: f["step"] == 1), StdOutSink())
run_main(flow)
''',
}

# Run by hand against `streamseq broker --port 9092` after `streamseq feed obs.parquet --topic observations
# --bootstrap-servers localhost:9092 --create-topics` (296 observations in, 594 forecasts out; see the report of
# issue 11). Kept here so the README sync check knows it.
QUIX = '''
import streamseq
from quixstreams import Application

app = Application(broker_address="localhost:9092", consumer_group="streamseq-quix", auto_offset_reset="earliest")
observations = app.topic("observations", value_deserializer="json")   # {"key": ..., "ts": ..., "value": ...}
forecasts = app.topic("forecasts-quix", value_serializer="json")
forecaster = streamseq.Forecaster(interval="1h", horizon=6, models=["gru", "seasonal_naive"])

sdf = app.dataframe(observations)
sdf = sdf.apply(forecaster.update_rows, expand=True)   # each message: the forecasts of the windows it closed
sdf = sdf.to_topic(forecasts, key=lambda f: f["key"])
app.run()
'''


@pytest.fixture
def workdir(tmp_path, capsys):
    """A folder like a checkout's root: replay_data/ and out/parking from `streamseq replay`."""
    from streamseq.commands import main

    (tmp_path / "replay_data").symlink_to(ROOT / "replay_data")
    rc = main(["replay", "--config", str(ROOT / "replay_data" / "parking.toml"), "--models", "naive,seasonal_naive",
               "--end", "2016-10-20", "--out", str(tmp_path / "out" / "parking"), "--no-progress", "--no-report"])
    assert rc == 0
    capsys.readouterr()
    cwd = os.getcwd()
    os.chdir(tmp_path)
    try:
        yield tmp_path
    finally:
        os.chdir(cwd)


def run_example(code: str) -> dict:
    namespace: dict = {"__name__": "__readme__"}
    exec(compile(textwrap.dedent(code), "<README example>", "exec"), namespace)
    return namespace


def test_backtest_example(workdir, capsys):
    ns = run_example(EXAMPLES["backtest"])
    assert "seasonal_naive" in capsys.readouterr().out
    assert set(ns["bt"].metrics["model"]) == {"gru", "seasonal_naive", "ensemble"}
    assert "actual" in ns["bt"].forecasts.columns
    assert (workdir / "out" / "parking-api.html").is_file()


def test_latest_forecast_example(workdir, capsys):
    ns = run_example(EXAMPLES["latest"])
    latest = ns["latest"]
    assert latest.group_by("key").agg(latest["origin"].n_unique()).height == latest["key"].n_unique()
    assert "ensemble" in set(latest["model"]) and "target_ts" in capsys.readouterr().out


def test_forecaster_example(workdir):
    ns = run_example(EXAMPLES["forecaster"])
    assert (workdir / "parking.safetensors").is_file()
    assert len(ns["fc"].keys) == 30


@pytest.mark.skipif(sys.version_info >= (3, 13), reason="bytewax 0.21 has no build for Python 3.13 (see [test])")
def test_bytewax_example(workdir, capsys):
    run_example(EXAMPLES["bytewax"])
    printed = capsys.readouterr().out.splitlines()
    assert len(printed) > 100 and all("'step': 1" in line for line in printed)


def test_readme_shows_these_examples():
    blocks = re.findall(r"```python\n(.*?)```", (ROOT / "README.md").read_text(), flags=re.S)
    known = {textwrap.dedent(code).strip() for code in [*EXAMPLES.values(), QUIX]}
    unknown = [b for b in blocks if textwrap.dedent(b).strip() not in known]
    assert not unknown, "README.md shows Python that no test runs; add it to tests/test_readme.py:\n" + unknown[0]
