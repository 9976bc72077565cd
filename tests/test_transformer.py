"""Transformer forecaster: naive at init, batched and pure, per-key state, normalisation shared with the RNN."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from streamseq.compose import build_model, build_pipeline
from streamseq.config import from_dict
from streamseq.memory import ListSink, MemoryPartition
from streamseq.models.rnn import RNNConfig, StatefulRNNForecaster
from streamseq.models.transformer import TransformerConfig, TransformerForecaster, TransformerNet, init_net
from streamseq.records import ObservationBatch
from streamseq.specs import transformer_config

torch.set_num_threads(2)
SMALL = TransformerConfig(context=8, d_model=16, heads=2, layers=2, ff=32, horizon=3, n_features=2)


def feed(m, n_keys=40, steps=12, seed=0):
    rng = np.random.default_rng(seed)
    m.ensure_capacity(n_keys)
    slots = np.arange(n_keys)
    for t in range(steps):
        x = np.stack([50 + 10 * np.sin(t / 3 + slots) + rng.normal(size=n_keys), rng.normal(size=n_keys)], axis=1)
        m.update(slots, x, rng.random(n_keys) < 0.1)
    return slots


def test_untrained_is_about_naive():
    m = TransformerForecaster(SMALL)
    slots = feed(m)
    f = m.forecast(slots)
    last = m._ctx[slots, -1, 0].double().numpy()
    assert f.shape == (40, 3)
    scale = np.sqrt(m._stats.var[slots, 0])
    assert np.all(np.abs(f - last[:, None]) < 0.2 * scale[:, None])


@pytest.mark.parametrize("threads", [1, 2])
def test_forecast_is_pure_and_batch_invariant(threads):
    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        m = TransformerForecaster(SMALL)
        slots = feed(m, n_keys=150)
        snap = m.snapshot(slots)
        full = m.forecast(slots)
        assert np.array_equal(full, m.forecast(slots))
        rng = np.random.default_rng(threads)
        for n in (1, 6, 20, 63, 64, 65, 129):
            sub = rng.permutation(slots)[:n]
            assert np.array_equal(m.forecast(sub), full[sub]), n  # bitwise: whatever keys share the call
        after = m.snapshot(slots)
        assert all(np.array_equal(snap[k], after[k]) for k in snap)
    finally:
        torch.set_num_threads(before)


def test_last_block_shortcut_is_exact():
    net = init_net(SMALL).eval()
    x = torch.randn(10, 8, 3)
    x[:3, :5] = float("nan")
    with torch.no_grad():
        pad = torch.isnan(x[..., 0])
        h = net.inp(torch.nan_to_num(x)) + net.pos
        for block in net.blocks:
            h = block(h, ~pad[:, None, None, :])
        ref = net.head(net.norm(h[:, -1]))
        assert torch.allclose(net(x), ref, atol=1e-5)


def test_short_history_is_padded_and_masked():
    m = TransformerForecaster(SMALL)
    m.ensure_capacity(2)
    for v in (10.0, 11.0, 12.0):
        m.update(np.array([0]), np.array([[v, 0.0]]), np.array([False]))
    ref = m.forecast(np.array([0]))
    assert np.isfinite(ref).all()
    # garbage in the padded part of the context changes nothing: it is masked
    m._ctx[0, :4] = 1e6
    assert np.allclose(m.forecast(np.array([0])), ref)


def test_snapshot_restore_reset():
    m = TransformerForecaster(SMALL)
    slots = feed(m, n_keys=6)
    snap = m.snapshot(slots)
    f = m.forecast(slots)
    other = TransformerForecaster(SMALL)
    other.ensure_capacity(16)
    moved = slots + 10
    other.restore(moved, snap)
    assert np.array_equal(other.forecast(moved), f)
    other.reset(moved[:1])
    assert other._n[moved[0]] == 0 and float(other._ctx[moved[0]].abs().sum()) == 0.0


def test_load_weights_changes_version_not_state():
    m = TransformerForecaster(SMALL)
    slots = feed(m, n_keys=5)
    before = m.snapshot(slots)
    torch.manual_seed(7)
    other = TransformerNet(SMALL)
    with torch.no_grad():
        other.head.weight.normal_(0, 0.5)
    f0 = m.forecast(slots)
    m.load_weights(other.state_dict(), "v0002")
    assert m.version == "v0002"
    assert not np.allclose(m.forecast(slots), f0)
    after = m.snapshot(slots)
    assert all(np.array_equal(before[k], after[k]) for k in before)
    wrong = init_net(TransformerConfig(context=8, d_model=8, heads=2, layers=1, ff=8, horizon=3, n_features=2))
    with pytest.raises(RuntimeError):
        m.load_weights(wrong.state_dict(), "v0003")


def test_running_statistics_match_the_rnn():
    """Both neural models keep the same per-key running statistics (models/normalise.RunningStats)."""
    t = TransformerForecaster(TransformerConfig(context=4, d_model=8, heads=2, layers=1, ff=8, horizon=2,
                                                n_features=2, norm_alpha=0.05))
    r = StatefulRNNForecaster(RNNConfig(hidden=4, horizon=2, n_features=2, learn=False, norm_alpha=0.05))
    rng = np.random.default_rng(3)
    for m in (t, r):
        m.ensure_capacity(8)
    for _ in range(30):
        x, filled = rng.normal(5, 2, (8, 2)), rng.random(8) < 0.2
        t.update(np.arange(8), x, filled)
        r.update(np.arange(8), x, filled)
    assert np.allclose(t._stats.mean, r._stats.mean) and np.allclose(t._stats.var, r._stats.var)
    assert np.allclose(t._stats.dvar, r._stats.dvar)


def test_config_and_pipeline():
    cfg = from_dict({"forecast": {"horizon": 2, "models": ["transformer", "naive"], "ensemble": False, "seed": 3},
                     "transformer": {"context": 6, "d_model": 8, "heads": 2, "layers": 1, "ff": 16}})
    tc = transformer_config(cfg, 1)
    assert (tc.context, tc.horizon, tc.seed, tc.norm_alpha, tc.scale) == (6, 2, 3, cfg.rnn.norm_alpha, "level")
    cfg.kind = "price"
    assert transformer_config(cfg, 1).scale == "change"  # rnn.scale = "auto", as the RNN
    assert build_model(cfg, "transformer", 1).name == "transformer"
    pipe = build_pipeline(cfg)
    sink = ListSink()
    pipe.add_sink(sink)
    H = 3600 * 10**9
    keys = np.array(["a", "b"] * 10, dtype=object)
    ts = np.repeat(np.arange(10), 2) * H
    vals = np.arange(20, dtype=float)[:, None]
    pipe.run(MemoryPartition([ObservationBatch(keys, ts, vals, np.zeros(20, np.int32), np.arange(20))]))
    tf = [b for b in sink.batches if b.model == "transformer"]
    assert len(tf) == 10 and all(b.model_version == "init" and np.isfinite(b.mean).all() for b in tf)
