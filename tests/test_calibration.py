"""The interval calibrator: keyed-state contract, coverage from few residuals, on heavy tails and on
a changing noise level, and the compact forecast ring."""
from __future__ import annotations

import numpy as np
import pytest

from streamseq.calibration import ConformalCalibrator, _encode
from streamseq.models import checks
from streamseq.models.base import BatchForecaster

H = 4


class CalibratedLastValue(BatchForecaster):
    """The calibrator driven as a model, so the model conformance checks run on it: update scores
    the last forecasts and records a new one (last value plus a step ramp); forecast returns the
    interval half-widths."""

    name = "calibrator"

    def __init__(self):
        self.horizon = H
        self.cal = ConformalCalibrator(H, 0.9)

    def ensure_capacity(self, capacity):
        self.cal.ensure_capacity(capacity)

    def update(self, slots, x, filled, wid=None):
        real = ~filled
        if real.any():
            self.cal.observe(slots[real], wid, x[real, 0])
        self.cal.record(slots, wid, x[:, :1] + 0.1 * np.arange(H)[None, :])

    def forecast(self, slots):
        lo, hi = self.cal.bounds(slots, np.zeros((len(slots), H)))
        return hi - lo

    def snapshot(self, slots):
        return self.cal.snapshot(slots)

    def restore(self, slots, state):
        self.cal.restore(slots, state)

    def reset(self, slots):
        self.cal.reset(slots)


@pytest.mark.parametrize("check", checks.CHECKS, ids=lambda c: c.__name__.removeprefix("check_"))
def test_calibrator_conforms(check):
    check(CalibratedLastValue)


def run_naive(y: np.ndarray, level=0.9, **kw):
    """Naive forecasts of every key (rows of y) through a calibrator: (lo, hi, mean) per origin (T, n, H)."""
    n, T = y.shape
    cal = ConformalCalibrator(H, level, **kw)
    cal.ensure_capacity(n)
    slots = np.arange(n)
    lo, hi, mean = (np.full((T, n, H), np.nan) for _ in range(3))
    for t in range(T):
        cal.observe(slots, t, y[:, t])
        m = np.repeat(y[:, t:t + 1], H, axis=1)
        lo[t], hi[t] = cal.bounds(slots, m)
        mean[t] = m
        cal.record(slots, t, m)
    return lo, hi, mean


def coverage(y, lo, hi, origins):
    inside = total = 0
    for t in origins:
        for j in range(1, H + 1):
            if t + j >= y.shape[1]:
                continue
            ok = np.isfinite(lo[t, :, j - 1])
            inside += int(((lo[t, ok, j - 1] <= y[ok, t + j]) & (y[ok, t + j] <= hi[t, ok, j - 1])).sum())
            total += int(ok.sum())
    return inside / total


def test_short_series_cover_at_their_end():
    """The competition case: many keys of 40 windows, scored only at the last origin, on the steps
    after it: the intervals rest on ~35 residuals per step and still cover about 90%. On this
    exchangeable random walk the small-sample correction errs wide (92% without it, 93.4% with it);
    it is there because real short series' later errors exceed their earlier ones (the accuracy
    suite's M1 and gap-skip streams cover 1-3 points less without it)."""
    rng = np.random.default_rng(1)
    n, T = 3000, 40 + H
    scale = np.exp(rng.normal(0, 1, (n, 1)))  # every key its own noise level
    y = np.cumsum(rng.normal(0, 1, (n, T)) * scale, axis=1) + 100 * scale
    lo, hi, _ = run_naive(y)
    assert 0.88 <= coverage(y, lo, hi, [T - H - 1]) <= 0.945
    lo, hi, _ = run_naive(y, small_sample=0.0)
    assert 0.88 <= coverage(y, lo, hi, [T - H - 1]) <= 0.93


def test_heavy_tails_cover():
    """Student t with 3 degrees of freedom: a normal-theory width would over-cover near the middle
    and miss the tails; the score quantile gets the 90% right."""
    rng = np.random.default_rng(2)
    y = np.cumsum(rng.standard_t(3, (20, 1500)), axis=1)
    lo, hi, _ = run_naive(y)
    assert 0.88 <= coverage(y, lo, hi, range(200, 1495)) <= 0.92


def test_a_changing_noise_level_is_followed():
    """The noise level jumps tenfold and back: coverage over the whole run stays near the level."""
    rng = np.random.default_rng(3)
    sd = np.r_[np.ones(600), np.full(300, 10.0), np.ones(600)]
    y = np.cumsum(rng.normal(0, 1, (20, len(sd))) * sd, axis=1)
    lo, hi, _ = run_naive(y)
    assert 0.87 <= coverage(y, lo, hi, range(100, len(sd) - H)) <= 0.93


def test_widths_grow_with_the_step_on_a_random_walk():
    rng = np.random.default_rng(4)
    y = np.cumsum(rng.normal(0, 1, (50, 400)), axis=1)
    lo, hi, _ = run_naive(y)
    width = np.nanmean(hi[-1] - lo[-1], axis=0)
    assert np.all(np.diff(width) > 0)
    assert 1.6 < width[3] / width[0] < 2.4  # sqrt(4) = 2


def test_no_interval_before_a_residual_then_every_step_has_one():
    y = np.arange(12.0)[None, :] * np.r_[1.0, 2.0][:, None]
    lo, hi, _ = run_naive(y)
    assert np.isnan(lo[0]).all()
    assert np.isfinite(lo[1]).all() and np.isfinite(hi[1]).all()  # steps 2..H borrow step 1's scale


def test_forecast_ring_keeps_forecasts_to_a_tiny_fraction_of_their_range():
    rng = np.random.default_rng(5)
    mean = rng.normal(1e5, 3e3, (200, 24)) * rng.choice([1e-6, 1.0, 1e6], (200, 1))
    mean[3, 5] = np.nan
    mean[4] = np.nan
    anchor, unit, code = _encode(mean)
    back = np.where(code == -32768, np.nan, anchor[:, None].astype(np.float64) + unit[:, None] * code)
    ok = np.isfinite(mean)
    span = np.where(ok, mean, -np.inf).max(axis=1) - np.where(ok, mean, np.inf).min(axis=1)
    assert np.array_equal(np.isfinite(back), ok)
    assert np.all(np.abs(back - mean)[ok] <= (span[:, None] * 2.0 ** -14 + np.abs(mean) * 1e-7)[ok])


def test_state_stays_small():
    cal = ConformalCalibrator(24, 0.9)
    cal.ensure_capacity(1)
    assert cal.state_nbytes_per_key() <= 2200


def test_intervals_and_member_errors_at_t_ignore_every_later_window():
    """No leak: what the calibrator gives at origin t (bounds, and the per-step errors the ensemble
    weights come from) is bitwise the same when every value after t changes."""
    rng = np.random.default_rng(6)
    y = np.cumsum(rng.normal(0, 1, (5, 80)), axis=1)
    moved = y.copy()
    t = 50
    moved[:, t + 1:] = moved[:, t + 1:] * 3 + 100 * rng.normal(size=moved[:, t + 1:].shape)

    def states(values):
        cal = ConformalCalibrator(H, 0.9)
        cal.ensure_capacity(5)
        slots = np.arange(5)
        out = []
        for s in range(values.shape[1]):
            cal.observe(slots, s, values[:, s])
            m = values[:, s:s + 1] + 0.1 * np.arange(H)[None, :]
            out.append((*cal.bounds(slots, m), *cal.step_error(slots)))
            cal.record(slots, s, m)
        return out

    base, after = states(y), states(moved)
    for s in range(t + 1):
        for a, b in zip(base[s], after[s]):
            assert np.array_equal(a, b, equal_nan=True), s
    assert not np.array_equal(base[t + 1][0], after[t + 1][0], equal_nan=True)  # the change does reach t + 1


def test_a_restored_state_no_update_writes_is_refused():
    cal = ConformalCalibrator(H, 0.9)
    cal.ensure_capacity(3)
    good = cal.snapshot(np.arange(3))
    assert not cal.state_faults(good).any()  # a fresh key's NaNs mean "not seen yet"
    bad = {k: v.copy() for k, v in good.items()}
    bad["scale"][1, 0] = -1.0
    bad["hist"][2, 3] = -5.0
    assert cal.state_faults(bad).tolist() == [False, True, True]
