"""Stateful GRU/LSTM: carried hidden state, pure forecasts, batch invariance, learning, snapshots."""
import numpy as np
import pytest
import torch

from streamseq.models.rnn import RNNConfig, StatefulRNNForecaster

REAL = lambda n: np.zeros(n, bool)  # noqa: E731


def make(cell="gru", **kw):
    cap = kw.pop("cap", 64)
    cfg = RNNConfig(cell=cell, hidden=kw.pop("hidden", 16), horizon=kw.pop("horizon", 5), tbptt=4, **kw)
    m = StatefulRNNForecaster(cfg)
    m.ensure_capacity(cap)
    return m


def newest_inputs(m, slots):
    """The cell input the model computed for each key's newest window (recomputed from its state)."""
    slots = np.asarray(slots)
    n = m._n[slots]
    return m._inputs(slots, m._vals[slots], m._step[slots], n, np.array([m._R - 1]))[:, 0]


@pytest.mark.parametrize("cell", ["gru", "lstm"])
def test_window_by_window_equals_whole_sequence(cell):
    """The carried state is torch's GRU/LSTM over the sequence of per-window inputs: one cell step per
    window, never recomputed from history."""
    m = make(cell, learn=False, normalize=False)
    rng = np.random.default_rng(0)
    T, n = 50, 6
    xs = rng.normal(size=(T, n))
    slots = np.arange(n)
    seq = []
    for t in range(T):
        m.update(slots, xs[t][:, None], REAL(n))
        seq.append(newest_inputs(m, slots))
    rnn_cls = torch.nn.GRU if cell == "gru" else torch.nn.LSTM
    full = rnn_cls(m.net.n_in, 16, batch_first=True)
    with torch.no_grad():
        for name in ("weight_ih", "weight_hh", "bias_ih", "bias_hh"):
            getattr(full, f"{name}_l0").copy_(getattr(m.net.cell, name))
        out = full(torch.stack(seq, dim=1))  # (n, T, n_in)
        h_last = out[1] if cell == "gru" else out[1][0]
    torch.testing.assert_close(m._h[slots, :16], h_last[0], rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("cell", ["gru", "lstm"])
def test_one_update_is_one_cell_step(cell):
    m = make(cell, learn=False, normalize=False)
    rng = np.random.default_rng(1)
    for _ in range(30):
        m.update(np.array([3]), rng.normal(size=(1, 1)), REAL(1))
    before = m._h[3:4].clone()
    m.update(np.array([3]), np.array([[0.5]]), REAL(1))
    x = newest_inputs(m, [3])
    assert x[0, 0] == 0.5 and x[0, 1] == 0.0  # the window's value (not normalised here) and its gap flag
    with torch.no_grad():
        expect = m.net.step(x, before)
    torch.testing.assert_close(m._h[3:4], expect, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("learn", [False, True])
def test_forecast_changes_no_state(learn):
    m = make(learn=learn)
    rng = np.random.default_rng(2)
    slots = np.arange(10)
    for _ in range(40):
        m.update(slots, rng.normal(size=(10, 1)), REAL(10))
    snap = m.snapshot(slots)
    weights = {k: v.clone() for k, v in m.net.state_dict().items()}
    f1 = m.forecast(slots)
    f2 = m.forecast(slots)
    np.testing.assert_array_equal(f1, f2)
    for k, v in m.snapshot(slots).items():
        np.testing.assert_array_equal(v, snap[k])
    for k, v in m.net.state_dict().items():
        assert torch.equal(v, weights[k])


def test_a_keys_forecast_does_not_depend_on_its_batch():
    """Frozen weights: a key's forecasts are bitwise the same alone or among other keys."""
    rng = np.random.default_rng(3)
    xs = rng.normal(size=(60, 40)) * 3 + 10
    together = make(learn=False, hidden=64)
    alone = make(learn=False, hidden=64)
    for t in range(60):
        together.update(np.arange(40), xs[t][:, None], REAL(40))
        alone.update(np.array([7]), xs[t, 7:8][:, None], REAL(1))
        np.testing.assert_array_equal(together.forecast(np.arange(40))[7], alone.forecast(np.array([7]))[0])


def test_online_learning_lowers_error():
    m = make(hidden=32, horizon=6, lr=3e-3)
    slots = np.arange(32)
    rng = np.random.default_rng(4)
    errs, prev = [], None
    for t in range(300):
        y = 10 + 5 * np.sin(2 * np.pi * (t + slots) / 12) + 0.3 * rng.normal(size=32)
        if prev is not None:
            errs.append(np.abs(prev[:, 0] - y).mean())
        m.update(slots, y[:, None], REAL(32))
        prev = m.forecast(slots)
    assert np.mean(errs[-50:]) < 0.5 * np.mean(errs[:30])
    assert np.isfinite(m.last_loss)


def test_untrained_network_starts_near_naive():
    m = make()
    m.update(np.array([0]), np.array([[100.0]]), REAL(1))
    m.update(np.array([0]), np.array([[102.0]]), REAL(1))
    f = m.forecast(np.array([0]))
    assert np.all(f == 102.0)  # no season seen yet: the baseline is the naive forecast


def test_untrained_network_forecasts_the_better_baseline():
    """Output 0 gives the per-key blend: seasonal naive on a periodic key, naive on a random walk."""
    m = make(horizon=6, season=4, learn=False)
    rng = np.random.default_rng(12)
    periodic = np.tile([1.0, 5.0, 2.0, 8.0], 40) + 0.01 * rng.normal(size=160)
    walk = np.cumsum(rng.normal(size=160)) + 50
    for t in range(160):
        m.update(np.array([0, 1]), np.array([[periodic[t]], [walk[t]]]), REAL(2))
    f = m.forecast(np.array([0, 1]))
    snaive = periodic[-4:][np.arange(6) % 4]
    np.testing.assert_allclose(f[0], snaive, atol=0.05)
    np.testing.assert_allclose(f[1], walk[-1], atol=0.35 * np.abs(np.diff(walk)).mean())


@pytest.mark.parametrize("cell", ["gru", "lstm"])
def test_snapshot_restore_continues_identically(cell):
    rng = np.random.default_rng(5)
    xs = rng.normal(size=(80, 4))
    a = make(cell, learn=False)
    for t in range(40):
        a.update(np.arange(4), xs[t][:, None], REAL(4))
    snap = a.snapshot(np.arange(4))
    b = make(cell, learn=False)
    b.net.load_state_dict(a.net.state_dict())
    b.restore(np.array([10, 11, 12, 13]), snap)  # other slots: state is per key, not per slot
    for t in range(40, 80):
        a.update(np.arange(4), xs[t][:, None], REAL(4))
        b.update(np.array([10, 11, 12, 13]), xs[t][:, None], REAL(4))
    np.testing.assert_array_equal(a.forecast(np.arange(4)), b.forecast(np.array([10, 11, 12, 13])))


def test_gap_filled_windows_do_not_learn_but_keep_lag_aligned():
    m = make(learn=True)
    rng = np.random.default_rng(6)
    for _ in range(30):
        m.update(np.array([0]), rng.normal(size=(1, 1)), REAL(1))
    w = {k: v.clone() for k, v in m.net.state_dict().items()}
    lag = m._h_lag[0].clone()
    m.update(np.array([0]), np.array([[0.1]]), np.array([True]))
    for k, v in m.net.state_dict().items():
        assert torch.equal(v, w[k])
    assert not torch.equal(m._h_lag[0], lag)  # moved past the window that left the ring


def test_hot_swap_rewarm_rebuilds_state_from_ring():
    m = make(learn=False)
    rng = np.random.default_rng(7)
    for _ in range(50):
        m.update(np.arange(3), rng.normal(size=(3, 1)), REAL(3))
    other = make(learn=False, seed=9)
    m.load_weights(other.net.state_dict(), "v0002")
    assert m.version == "v0002"
    assert np.isfinite(m.forecast(np.arange(3))).all()
    assert m._h[:3].abs().sum() > 0


def test_state_per_key_is_small():
    m = StatefulRNNForecaster(RNNConfig(hidden=64, horizon=24, tbptt=8, season=24, calendar="day,week,year"))
    m.ensure_capacity(1)
    assert m.state_nbytes_per_key() <= 1100  # the pipeline with one model and its calibration stays under 4 KB


def test_pipeline_state_per_key_stays_under_4kb():
    from helpers import frame_batches

    from streamseq.compose import build_pipeline
    from streamseq.config import from_dict
    from streamseq.memory import MemoryPartition
    from streamseq.synthetic import generate

    cfg = from_dict({"forecast": {"horizon": 24, "season": 24, "models": ["gru"], "ensemble": False},
                     "rnn": {"hidden": 64, "tbptt": 8}})
    pipe = build_pipeline(cfg)
    pipe.run(MemoryPartition(frame_batches(generate(2, 60, seed=0, irregular=False), 1000)))
    state = pipe.snapshot_keys(pipe.keys.keys_of(np.array([0])).tolist())
    assert sum(a.nbytes for a in state.values()) <= 4096


@pytest.mark.parametrize("learn_every", [1, 3])
def test_h_lag_is_the_state_before_the_first_origin_of_the_ring(learn_every):
    """TBPTT(k, s) starts from h_lag: after an update it is the cell run over every window up to the
    ring's first origin, whichever path (learning or not) the key took."""
    rng = np.random.default_rng(8)
    T = 70
    xs = rng.normal(size=(T, 2))
    m = make(learn=True, learn_every=learn_every, lr=0.0, normalize=False, season=3)  # lr 0: weights stay put
    p, R = m._lag_pos, m._R
    slots = np.arange(2)
    h = torch.zeros(2, 16)
    for t in range(T):
        m.update(slots, xs[t][:, None], REAL(2))
        n = m._n[slots]
        if n[0] >= R - p:
            x0 = m._inputs(slots, m._vals[slots], m._step[slots], n, np.array([p]))[:, 0]
            with torch.no_grad():
                h = m.net.step(x0, h)
    torch.testing.assert_close(m._h_lag[:2], h, rtol=1e-5, atol=1e-6)
    assert np.isfinite(m.last_loss)


def test_rewarm_of_a_key_does_not_depend_on_its_batch():
    """A hot swap rebuilds each key's h and h_lag from its ring; alone or among 19 others, the same bits."""
    rng = np.random.default_rng(9)
    xs = rng.normal(size=(60, 20)) * 3 + 10
    many, alone = make(learn=False, season=3), make(learn=False, season=3)
    for t in range(60):
        many.update(np.arange(20), xs[t][:, None], REAL(20))
        alone.update(np.array([5]), xs[t, 5:6][:, None], REAL(1))
    new = make(learn=False, season=3, seed=4).net.state_dict()
    many.load_weights(new, "v2")
    alone.load_weights(new, "v2")
    assert torch.equal(many._h[5], alone._h[5]) and torch.equal(many._h_lag[5], alone._h_lag[5])
    assert not torch.equal(many._h_lag[5], many._h[5])
    np.testing.assert_array_equal(many.forecast(np.arange(20))[5], alone.forecast(np.array([5]))[0])


def test_calendar_features_come_from_window_times():
    from streamseq.grid import FixedGrid

    m = make(learn=False, horizon=3, calendar="day")
    m.bind_grid(FixedGrid(3600 * 10**9))
    assert m.net.n_in == 1 + 3 + 2
    for wid in range(100, 110):
        m.update(np.array([0]), np.array([[float(wid)]]), REAL(1), wid)
    x = newest_inputs(m, [0])
    phase = 2 * np.pi * (109 % 24) / 24
    np.testing.assert_allclose(x[0, -2:].numpy(), [np.sin(phase), np.cos(phase)], atol=1e-6)
    wids = m._ring_wids(m._step[:1], m._wid[:1])[0]
    assert wids[-1] == 109 and wids[-10] == 100
