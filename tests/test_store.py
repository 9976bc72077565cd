"""Window store: Parquet by day, atomic deterministic files, retention, unreadable files, training samples."""
from __future__ import annotations

import logging

import numpy as np
import polars as pl
import pytest

from streamseq.models.transformer import TransformerConfig, TransformerForecaster
from streamseq.records import WindowBatch
from streamseq.store import DAY_NS, WindowStore

HOUR = 3600 * 10**9


def batch(end_h: int, keys=("a", "b", "c"), value=None, filled=None) -> WindowBatch:
    n = len(keys)
    v = np.full(n, float(end_h)) if value is None else np.asarray(value, float)
    return WindowBatch(np.array(keys, dtype=object), np.full(n, end_h * HOUR, np.int64), np.ones(n, np.int64),
                       np.zeros(n, bool) if filled is None else np.asarray(filled, bool),
                       np.stack([v, v * 2], axis=1), ["value_mean", "value_max"])


def fill(store: WindowStore, hours: range, **kw) -> None:
    for h in hours:
        store.write_windows(batch(h, **kw))


def test_write_read_partitioned_and_deterministic(tmp_path):
    a, b = WindowStore(tmp_path / "a", flush_rows=20), WindowStore(tmp_path / "b", flush_rows=20)
    for s in (a, b):
        fill(s, range(1, 60))  # 59 hours: windows ending on 1970-01-01 .. 01-03
        s.close()
    names = [p.relative_to(a.path).as_posix() for p in a.files()]
    assert names == [p.relative_to(b.path).as_posix() for p in b.files()]
    assert names[0] == "date=1970-01-01/part-000001.parquet"
    assert {n.split("/")[0] for n in names} == {"date=1970-01-01", "date=1970-01-02", "date=1970-01-03"}
    assert not list(a.path.rglob("*.tmp"))
    df = a.read()
    assert df.columns == ["key", "end", "count", "filled", "value_mean", "value_max"]
    assert df.height == 59 * 3 and df["end"].dtype == pl.Datetime("ns", "UTC")
    for p, q in zip(a.files(), b.files()):
        assert pl.read_parquet(p).equals(pl.read_parquet(q))
    sub = a.read(start=10 * HOUR, end=20 * HOUR)
    assert sub["end"].dt.epoch("ns").min() == 10 * HOUR and sub["end"].dt.epoch("ns").max() == 19 * HOUR
    assert a.newest() == 59 * HOUR


def test_buffer_is_read_and_files_are_appended(tmp_path):
    s = WindowStore(tmp_path, flush_rows=1000)
    fill(s, range(1, 5))
    assert s.files() == [] and s.read().height == 12  # still buffered, but visible to the trainer in-process
    s.flush()
    fill(s, range(5, 7))
    s.flush()
    assert [p.name for p in s.files()] == ["part-000001.parquet", "part-000002.parquet"]
    again = WindowStore(tmp_path)  # a new writer continues the sequence
    fill(again, range(7, 8))
    again.flush()
    assert [p.name for p in again.files()][-1] == "part-000003.parquet"
    (s.files()[0].parent / ".part-000009.parquet.tmp").write_bytes(b"half a file")  # a crashed write
    assert again.read().height == 7 * 3 and again.unreadable == 0


def test_retention_by_age(tmp_path):
    s = WindowStore(tmp_path, retention_ns=DAY_NS, flush_rows=10)
    fill(s, range(1, 24 * 4))  # four days
    s.close()
    days = [p.name for _, p in s.partitions()]
    # newest window ends late on day 4 (1970-01-04); a day is dropped once all of it is older than 1 day
    assert days == ["date=1970-01-03", "date=1970-01-04"]
    assert s.read()["end"].dt.epoch("ns").min() >= 2 * DAY_NS
    removed = s.enforce_retention(now_ns=6 * DAY_NS)
    assert removed and s.partitions() == []


def test_retention_by_size(tmp_path):
    s = WindowStore(tmp_path, flush_rows=3)
    fill(s, range(1, 40))
    s.close()
    total = s.total_bytes()
    newest = s.files()[-1]
    s.max_bytes = total // 3
    s.enforce_retention()
    assert s.total_bytes() <= total // 3 and newest.exists()
    s.max_bytes = 1
    s.enforce_retention()
    assert s.files() == [newest]  # the newest file is always kept
    assert s.read()["end"].dt.epoch("ns").max() == 39 * HOUR


def test_unreadable_file_is_skipped_and_counted(tmp_path, caplog):
    s = WindowStore(tmp_path, flush_rows=6)
    fill(s, range(1, 9))
    s.close()
    bad = s.files()[1]
    bad.write_bytes(bad.read_bytes()[:40])  # truncated
    (s.files()[0].parent / "part-000077.parquet").write_text("not parquet")  # foreign
    with caplog.at_level(logging.WARNING, logger="streamseq.store"):
        df = s.read()
    assert s.unreadable == 2 and "skipping unreadable file" in caplog.text
    assert df.height == 8 * 3 - 6
    s.read()
    assert s.unreadable == 2  # counted once per file
    X, Y, Xv, Yv = s.training_samples(L=3, H=2, holdout=2)  # training still works on the rest
    assert len(X) > 0


def test_training_samples_shapes_and_holdout(tmp_path):
    s = WindowStore(tmp_path)
    fill(s, range(1, 31), keys=("a", "b"), value=None)
    ts = s.training_samples(L=5, H=3, holdout=4)
    X, Y, Xv, Yv = ts
    assert X.shape[1:] == (5, 3) and Y.shape[1:] == (3,) and X.dtype == np.float32
    # per key: origins 0..24 train (first target <= 25th window), 25..28 validation
    assert len(X) == 2 * 25 and len(Xv) == 2 * 4
    assert np.isnan(X[0, :4]).all() and not np.isnan(X[0, 4]).any()  # first origin: left padding
    assert ts.info["keys"] == 2 and ts.info["data_end"] == 30 * HOUR
    assert (ts.val_end >= 26 * HOUR).all()
    # no training target inside the held-out span: the last training origin sees only 1 target
    last = ts.X_train[24], ts.Y_train[24]
    assert np.isfinite(last[1][0]) and np.isnan(last[1][1:]).all()
    # validation targets beyond the data are masked
    assert np.isnan(Yv[-1, 1:]).all() and np.isfinite(Yv[-1, 0])


def test_gap_filled_windows_are_flagged_never_targets(tmp_path):
    s = WindowStore(tmp_path)
    for h in range(1, 21):
        s.write_windows(batch(h, keys=("a",), filled=[h in (8, 9)]))
    ts = s.training_samples(L=4, H=2, holdout=2, min_context=1)
    origins = (ts.train_end // HOUR).tolist()
    # real origins whose first target is before the held-out hours 19-20; hour 7 has only filled targets
    assert origins == [h for h in range(1, 18) if h not in (7, 8, 9)]
    i = origins.index(6)  # targets hours 7 (real) and 8 (filled)
    assert np.isfinite(ts.Y_train[i, 0]) and np.isnan(ts.Y_train[i, 1])
    j = origins.index(10)  # context hours 7-10: the filled ones are flagged
    assert ts.X_train[j, :, -1].tolist() == [0.0, 1.0, 1.0, 0.0]


@pytest.mark.parametrize("scale", ["level", "change"])
def test_samples_match_the_models_contexts(tmp_path, scale):
    """The store normalises inputs and targets exactly as the forecaster does at each origin."""
    cfg = TransformerConfig(context=6, d_model=8, heads=2, layers=1, ff=8, horizon=2, n_features=2, norm_alpha=0.05,
                            scale=scale, baseline="blend" if scale == "level" else "none")
    m = TransformerForecaster(cfg)
    m.ensure_capacity(3)
    s = WindowStore(tmp_path)
    rng = np.random.default_rng(1)
    seen, values = [], []
    for h in range(1, 41):
        v = rng.normal(20, 5, 3)
        filled = rng.random(3) < 0.15
        wb = batch(h, value=v, filled=filled)
        s.write_windows(wb)
        m.update(np.arange(3), wb.features, wb.filled)
        seen.append((m.contexts(np.array([1])).numpy()[0], filled[1], m._target_scale(np.array([1]))[0]))
        values.append(v[1])
    ts = s.training_samples(L=6, H=2, holdout=1, norm_alpha=0.05, min_context=1, scale=scale)
    is_b = ts.train_keys == "b"
    X_b, Y_b = ts.X_train[is_b], ts.Y_train[is_b]
    hours = (ts.train_end[is_b] // HOUR).tolist()
    assert len(X_b) >= 30 and not any(seen[h - 1][1] for h in hours)
    expected = [seen[h - 1][0] for h in hours]
    np.testing.assert_allclose(np.nan_to_num(X_b, nan=-99), np.nan_to_num(np.stack(expected), nan=-99),
                               rtol=1e-5, atol=1e-5)
    for i, h in enumerate(hours):
        unit = seen[h - 1][2]
        for j in range(2):
            if np.isfinite(Y_b[i, j]):
                want = np.clip((values[h + j] - values[h - 1]) / unit[j], -20, 20)
                assert Y_b[i, j] == pytest.approx(want, rel=1e-5, abs=1e-6)


def test_empty_store(tmp_path):
    s = WindowStore(tmp_path / "none")
    assert s.read().height == 0 and s.newest() is None
    X, Y, Xv, Yv = s.training_samples(L=4, H=2, holdout=2)
    assert len(X) == len(Xv) == 0


@pytest.mark.parametrize("flush_rows", [1, 7])
def test_flush_size_does_not_change_content(tmp_path, flush_rows):
    s = WindowStore(tmp_path, flush_rows=flush_rows)
    fill(s, range(1, 10))
    s.close()
    assert s.read().sort("key", "end")["value_mean"].to_list() == list(range(1, 10)) * 3


def test_workers_sharing_one_store_never_overwrite_each_other(tmp_path):
    """Two workers on one volume, each with its own writer id (as build_worker gives them): every
    window either of them wrote is there afterwards."""
    from streamseq.compose import writer_id

    ids = {writer_id() for _ in range(50)}
    assert len(ids) == 50
    a, b = (WindowStore(tmp_path, flush_rows=3, writer=w) for w in sorted(ids)[:2])
    rows = {}
    for i in range(30):
        for name, store in (("a", a), ("b", b)):
            key = f"{name}{i % 4}"
            end = (i + 1) * 3600 * 10**9
            store.write_windows(WindowBatch(np.array([key], dtype=object), np.array([end]), np.array([1]),
                                            np.array([False]), np.array([[float(i)]]), ["value"]))
            rows[(key, end)] = float(i)
    a.close(), b.close()
    got = WindowStore(tmp_path).read()
    assert got.height == len(rows) == 60
    assert {(k, e.value if hasattr(e, "value") else e): v for k, e, v in
            zip(got["key"], got["end"].dt.epoch("ns"), got["value"])} == rows
