"""advance() over many window ends at once gives the same bits as update() + forecast() one window end
at a time (Forecaster.advance, the loop the worker runs): forecasts, per-key state and shared weights."""
import numpy as np
import pytest
import torch

from streamseq.grid import FixedGrid
from streamseq.models.base import Forecaster, WindowStep
from streamseq.models.river_baselines import HoltWintersForecaster, SNARIMAXForecaster
from streamseq.models.rnn import RNNConfig, StatefulRNNForecaster


def window_ends(n_keys=5, T=90, seed=0, season=6):
    """Window ends of a few keys: seasonal values, some gap-filled windows, keys that join late and
    skip window ends (the slots differ from one end to the next), now and then the same keys twice."""
    rng = np.random.default_rng(seed)
    steps = []
    t = np.arange(T)
    ys = 5 + np.sin(2 * np.pi * t[:, None] / season + np.arange(n_keys)) * np.arange(1, n_keys + 1) + rng.normal(0, .3, (T, n_keys))
    for i in range(T):
        live = np.flatnonzero((np.arange(n_keys) <= i // 10) & (rng.random(n_keys) > 0.15))
        if len(live) == 0:
            continue
        filled = rng.random(len(live)) < 0.1
        x = np.stack([ys[i, live], rng.normal(size=len(live))], axis=1)
        steps.append(WindowStep(live.astype(np.int64), x, filled, 1000 + i))
    return steps


def blocks(steps, seed=1):
    """The window ends cut in runs of random length, as a replay's source batches cut them."""
    rng = np.random.default_rng(seed)
    out, a = [], 0
    while a < len(steps):
        b = a + int(rng.integers(1, 12))
        out.append(steps[a:b])
        a = b
    return out


def run_both(make, steps):
    one, many = make(), make()
    for m in (one, many):
        m.bind_grid(FixedGrid(3600 * 10**9))  # hourly windows: wid 1000 + i is a calendar hour
        m.ensure_capacity(16)
    expect = Forecaster.advance(one, steps)
    got = [f for block in blocks(steps) for f in many.advance(block)]
    assert len(got) == len(expect)
    for e, g in zip(expect, got):
        assert e.shape == g.shape
        np.testing.assert_array_equal(g, e)  # NaN == NaN here; every other value to the bit
    return one, many


@pytest.mark.parametrize("cell", ["gru", "lstm"])
@pytest.mark.parametrize("learn", [True, False])
@pytest.mark.parametrize("calendar", ["", "day,week"])
def test_rnn_advance_is_the_window_by_window_loop(cell, learn, calendar):
    cfg = dict(cell=cell, hidden=8, horizon=4, n_features=2, tbptt=3, learn_every=2, season=6, learn=learn,
               calendar=calendar, seed=3)
    one, many = run_both(lambda: StatefulRNNForecaster(RNNConfig(**cfg)), window_ends())
    for a, b in zip(one.net.state_dict().values(), many.net.state_dict().values()):
        assert torch.equal(a, b)
    slots = np.arange(5)
    for name, a in one.snapshot(slots).items():
        np.testing.assert_array_equal(many.snapshot(slots)[name], a, err_msg=name)


@pytest.mark.parametrize("cls", [SNARIMAXForecaster, HoltWintersForecaster])
def test_river_advance_is_the_window_by_window_loop(cls):
    one, many = run_both(lambda: cls(4, 6), window_ends())
    assert one.diverged == many.diverged
    slots = np.arange(5)
    a, b = one.snapshot(slots), many.snapshot(slots)
    for name in ("mean", "var", "n", "last"):
        np.testing.assert_array_equal(b[name], a[name], err_msg=name)
    for va, vb in zip(a["values"], b["values"]):
        np.testing.assert_array_equal(vb, va)


def test_replay_with_river_in_a_model_process_gives_the_same_forecasts(monkeypatch):
    """build_pipeline(parallel=True) (a replay on two cores: SNARIMAX and Holt-Winters advance in a child
    process) emits the same forecasts, to the bit, as everything in this process (the worker's way)."""
    from helpers import frame_batches

    from streamseq import compose
    from streamseq.compose import build_pipeline, close_pipeline
    from streamseq.config import from_dict
    from streamseq.memory import ListSink, MemoryPartition
    from streamseq.synthetic import generate

    monkeypatch.setattr(compose.os, "cpu_count", lambda: 2)  # the child runs even on a one-core machine
    df = generate(3, 160, seed=5)  # irregular: gap-filled windows too
    out = []
    for parallel in (False, True):
        cfg = from_dict({"forecast": {"horizon": 4, "season": 6, "models": ["gru", "snarimax", "holt_winters", "naive"]},
                         "rnn": {"hidden": 8, "tbptt": 4}})
        pipe = build_pipeline(cfg, parallel=parallel)
        assert (type(pipe.models["snarimax"]).__name__ == "RemoteModel") == parallel
        sink = ListSink()
        pipe.add_sink(sink)
        try:
            pipe.run(MemoryPartition(frame_batches(df, 37)))
        finally:
            close_pipeline(pipe)
        out.append(sink.batches)
    a, b = out
    assert len(a) == len(b) > 0
    for x, y in zip(a, b):
        assert (x.model, x.origin, x.keys.tolist()) == (y.model, y.origin, y.keys.tolist())
        for f in ("mean", "lo", "hi"):
            np.testing.assert_array_equal(getattr(x, f), getattr(y, f))


def test_model_process_takes_long_source_batches(monkeypatch):
    """A source batch that closes thousands of window ends: requests and answers each larger than a pipe
    holds (the two river models' requests go out before either answer is read)."""
    from helpers import frame_batches

    from streamseq import compose
    from streamseq.compose import build_pipeline, close_pipeline
    from streamseq.config import from_dict
    from streamseq.memory import ListSink, MemoryPartition
    from streamseq.synthetic import generate

    monkeypatch.setattr(compose.os, "cpu_count", lambda: 2)
    df = generate(1, 6000, irregular=False, seed=6)
    cfg = from_dict({"forecast": {"horizon": 24, "season": 24, "models": ["gru", "snarimax", "holt_winters"]},
                     "rnn": {"hidden": 4, "learn": False}})
    pipe = build_pipeline(cfg, parallel=True)
    sink = ListSink()
    pipe.add_sink(sink)
    try:
        pipe.run(MemoryPartition(frame_batches(df, len(df))))
    finally:
        close_pipeline(pipe)
    per_model = {m: sum(len(b) for b in sink.batches if b.model == m) for m in ("gru", "snarimax", "holt_winters")}
    assert per_model == {"gru": 6000, "snarimax": 6000, "holt_winters": 6000}  # run() closes the last window too


def test_model_process_stops_when_the_pipeline_cannot_be_built(monkeypatch):
    from streamseq import compose, offload
    from streamseq.config import from_dict

    monkeypatch.setattr(compose.os, "cpu_count", lambda: 2)
    closed = []
    real_close = offload.ModelHost.close
    monkeypatch.setattr(offload.ModelHost, "close", lambda self: (closed.append(self), real_close(self)))

    def broken(*a, **k):
        raise ValueError("no such model")

    monkeypatch.setattr(compose, "build_model", broken)
    cfg = from_dict({"forecast": {"horizon": 4, "season": 6, "models": ["gru", "snarimax"]}})
    with pytest.raises(ValueError, match="no such model"):
        compose.build_pipeline(cfg, parallel=True)
    assert len(closed) == 1 and closed[0]._proc is None  # stopped and waited for
