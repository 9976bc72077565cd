"""Stateful GRU/LSTM: carried hidden state, pure forecasts, batch invariance, learning, snapshots."""
import numpy as np
import pytest
import torch

from streamseq.models.rnn import RNNConfig, StatefulRNNForecaster

REAL = lambda n: np.zeros(n, bool)  # noqa: E731


def make(cell="gru", **kw):
    cfg = RNNConfig(cell=cell, hidden=kw.pop("hidden", 16), horizon=kw.pop("horizon", 5), tbptt=4, **kw)
    m = StatefulRNNForecaster(cfg)
    m.ensure_capacity(kw.get("cap", 64))
    return m


@pytest.mark.parametrize("cell", ["gru", "lstm"])
def test_window_by_window_equals_whole_sequence(cell):
    """Advancing one window at a time gives the state torch's GRU/LSTM computes over the whole sequence."""
    m = make(cell, learn=False, normalize=False)
    rng = np.random.default_rng(0)
    T, n = 50, 6
    xs = rng.normal(size=(T, n))
    slots = np.arange(n)
    for t in range(T):
        m.update(slots, xs[t][:, None], REAL(n))
    rnn_cls = torch.nn.GRU if cell == "gru" else torch.nn.LSTM
    full = rnn_cls(2, 16, batch_first=True)
    with torch.no_grad():
        for name in ("weight_ih", "weight_hh", "bias_ih", "bias_hh"):
            getattr(full, f"{name}_l0").copy_(getattr(m.net.cell, name))
        seq = torch.tensor(np.stack([xs.T, np.zeros((n, T))], axis=2), dtype=torch.float32)  # (n, T, F+1)
        out = full(seq)
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
    with torch.no_grad():
        expect = m.net.step(torch.tensor([[0.5, 0.0]]), before)
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
    assert np.all(np.abs(f - 102.0) < 2.0)


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
    m = StatefulRNNForecaster(RNNConfig(hidden=64, horizon=24, tbptt=8))
    m.ensure_capacity(1)
    assert m.state_nbytes_per_key() <= 4096


@pytest.mark.parametrize("learn_every", [1, 3])
def test_h_lag_is_the_state_before_the_oldest_window_in_the_ring(learn_every):
    """TBPTT(k, s) starts from h_lag: after an update it is the cell run over every window
    before the NEXT ring's oldest one, whichever path (learning or not) the key took."""
    rng = np.random.default_rng(8)
    T = 70
    xs = rng.normal(size=(T, 2))
    m = make(learn=True, learn_every=learn_every, lr=0.0, normalize=False)  # lr 0: weights stay put
    for t in range(T):
        m.update(np.arange(2), xs[t][:, None], REAL(2))
    R = m._R
    with torch.no_grad():
        h = torch.zeros(2, 16)
        for t in range(T - R + 1):
            h = m.net.step(torch.tensor(np.c_[xs[t], np.zeros(2)], dtype=torch.float32), h)
    torch.testing.assert_close(m._h_lag[:2], h, rtol=1e-5, atol=1e-6)
    assert np.isfinite(m.last_loss)
