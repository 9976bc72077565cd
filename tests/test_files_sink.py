"""The Parquet sinks: every forecast and window row written comes back as written (types and values),
across row groups written by the background thread, and an empty replay still leaves valid files."""
import numpy as np
import polars as pl

from streamseq.records import ForecastBatch, WindowBatch
from streamseq_connectors.files import ParquetForecastSink


def test_rows_come_back_as_written(tmp_path):
    rng = np.random.default_rng(0)
    sink = ParquetForecastSink(str(tmp_path / "f.parquet"), str(tmp_path / "w.parquet"), row_group=50)
    expect_f, expect_w = [], []
    H = 3
    for t in range(60):
        n = int(rng.integers(0, 4))
        keys = np.array([f"key-{i}" for i in rng.choice(6, n, replace=False)], dtype=object)
        targets = 10_000 + t + np.arange(1, H + 1)
        for model in ("gru", "naïve"):
            mean = rng.normal(size=(n, H))
            sink.write(ForecastBatch(model, f"v{t % 2}", 1000 + t, "1h", targets, keys, mean, mean - 1, mean + 2, 7))
            expect_f += [(k, model, f"v{t % 2}", 1000 + t, j + 1, int(targets[j]), mean[i, j], mean[i, j] - 1,
                          mean[i, j] + 2) for i, k in enumerate(keys) for j in range(H)]
        feats, filled = rng.normal(size=(n, 2)), rng.random(n) < 0.3
        sink.write_windows(WindowBatch(keys, np.full(n, 5000 + t, np.int64), np.arange(n, dtype=np.int64), filled,
                                       feats, ["value", "x"]))
        expect_w += [(k, 5000 + t, feats[i, 0], bool(filled[i]), i, feats[i, 0], feats[i, 1]) for i, k in enumerate(keys)]
    sink.close()
    f = pl.read_parquet(tmp_path / "f.parquet")
    assert f.schema["key"] == pl.String and f.schema["origin"] == pl.Datetime("ns", "UTC")
    assert f.schema["step"] == pl.Int16
    got = [(r[0], r[1], r[2], r[3].value if hasattr(r[3], "value") else r[3], *r[4:]) for r in
           f.with_columns(pl.col("origin", "target_ts").dt.epoch("ns")).rows()]
    assert got == expect_f
    w = pl.read_parquet(tmp_path / "w.parquet")
    assert w.columns == ["key", "end", "value", "filled", "count", "f_value", "f_x"]
    assert w.with_columns(pl.col("end").dt.epoch("ns")).rows() == expect_w


def test_empty_replay_leaves_an_empty_forecast_file(tmp_path):
    sink = ParquetForecastSink(str(tmp_path / "f.parquet"), str(tmp_path / "w.parquet"))
    sink.close()
    f = pl.read_parquet(tmp_path / "f.parquet")
    assert f.height == 0 and f.columns == ["key", "model", "model_version", "origin", "step", "target_ts",
                                           "mean", "lo", "hi"]
