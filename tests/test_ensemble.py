"""The ensemble's weights (streamseq.ensemble) and the ensemble in the pipeline."""
from __future__ import annotations

import numpy as np
from helpers import H, obs, pipeline, run

from streamseq.ensemble import combine, weights
from streamseq.pipeline import ENSEMBLE


def one(*values):
    """(m, 1, 1) from one value per member."""
    return np.array(values, float)[:, None, None]


def test_members_count_equally_before_any_error_is_known():
    w = weights(one(1, 2, 3), one(np.nan, np.nan, np.nan), one(0, 0, 0))
    assert np.allclose(w[:, 0, 0], 1 / 3)


def test_a_member_without_a_finite_forecast_gets_nothing():
    w = weights(one(1, np.nan, 3), one(1, 1, 1), one(5, 5, 5))
    assert w[1, 0, 0] == 0 and np.isclose(w.sum(), 1)
    assert np.isnan(combine(one(np.nan, np.nan), one(1, 1), one(5, 5))[0, 0])


def test_a_member_far_worse_than_the_best_is_left_out():
    w = weights(one(1, 2, 3), one(1.0, 1.1, 5.0), one(1, 1, 1))  # one residual each: little evidence
    assert w[2, 0, 0] == 0 and w[1, 0, 0] > 0.4


def test_weights_concentrate_on_the_better_member_as_evidence_grows():
    few = weights(one(1, 2), one(1.0, 1.2), one(2, 2))[:, 0, 0]
    many = weights(one(1, 2), one(1.0, 1.2), one(100, 100))[:, 0, 0]
    clear = weights(one(1, 2), one(1.0, 1.5), one(100, 100))[:, 0, 0]
    assert 0.5 < few[0] < 0.6
    assert 0.85 < many[0] < 0.95  # evidence counts up to EVIDENCE residuals: a close member keeps a share
    assert clear[0] > 0.99


def test_a_close_member_keeps_a_share_however_long_the_stream():
    """Residuals of a stream are correlated: 10,000 of them do not make a member 10% worse useless."""
    w = weights(one(1, 2), one(1.0, 1.1), one(10_000, 10_000))[:, 0, 0]
    assert 0.2 < w[1] < 0.35


def test_weights_are_per_step():
    """Member 0 is better at step 1, member 1 at the last step: each step follows its own best."""
    m, n, h = 2, 1, 6
    means = np.stack([np.zeros((n, h)), np.ones((n, h))])
    errors = np.stack([np.linspace(1, 4, h)[None], np.linspace(2, 2, h)[None]])
    w = weights(means, errors, np.full((m, n, h), 100.0))
    assert w[0, 0, 0] > 0.9 and w[1, 0, -1] > 0.9


def test_a_member_that_has_just_diverged_is_left_out_before_its_errors_show():
    w = weights(one(10.0, 10.5, 1e9), one(1.0, 1.0, 1.0), one(50, 50, 50))
    assert w[2, 0, 0] == 0


def test_weights_of_a_key_do_not_depend_on_other_keys():
    rng = np.random.default_rng(0)
    means, errors = rng.normal(size=(3, 5, 4)), rng.uniform(1, 2, (3, 5, 4))
    counts = rng.integers(0, 30, (3, 5, 4)).astype(float)
    errors[0, 2] = np.nan
    together = combine(means, errors, counts)
    alone = combine(means[:, 2:3], errors[:, 2:3], counts[:, 2:3])
    assert np.array_equal(together[2:3], alone)


def test_the_ensemble_is_no_worse_than_its_best_member():
    """Naive, seasonal naive and SNARIMAX on seasonal series with noise and level shifts: the
    ensemble's MAE after warm-up is below every member's."""
    rng = np.random.default_rng(7)
    n, T, season = 8, 600, 12
    t = np.arange(T)
    level = np.cumsum(rng.normal(0, 0.3, (n, T)), axis=1)
    y = 20 + 5 * np.sin(2 * np.pi * t / season)[None] * rng.uniform(0.5, 2, (n, 1)) + level + rng.normal(0, 1, (n, T))
    keys = np.tile([f"k{i}" for i in range(n)], T)
    pipe, sink, _ = pipeline(models=("naive", "seasonal_naive", "snarimax"), horizon=6, season=season, ensemble=True)
    run(pipe, [obs(keys, np.repeat(t * H, n), y.T.ravel())])
    actual = {(f"k{i}", int(s) * H): y[i, s] for i in range(n) for s in range(T)}
    errors: dict[str, list[float]] = {}
    for b in sink.batches:
        if b.origin < 200 * H:
            continue
        for i, k in enumerate(b.keys.tolist()):
            for j in range(b.horizon):
                a = actual.get((k, int(b.targets[j]) - H))  # step j's window starts at its end - H
                if a is not None:
                    errors.setdefault(b.model, []).append(abs(b.mean[i, j] - a))
    mae = {m: float(np.mean(e)) for m, e in errors.items()}
    best = min(v for m, v in mae.items() if m != ENSEMBLE)
    assert mae[ENSEMBLE] < best, mae
