"""Baselines: naive, seasonal naive, river SNARIMAX and Holt-Winters; snapshot/restore of each; river adapter."""
import numpy as np
import pytest

from streamseq.models.naive import NaiveForecaster, SeasonalNaiveForecaster
from streamseq.models.river_baselines import HoltWintersForecaster, SNARIMAXForecaster


def series(n=120, keys=3, season=6, seed=0):
    rng = np.random.default_rng(seed)
    t = np.arange(n)[:, None]
    return 50 + 10 * np.sin(2 * np.pi * t / season) + rng.normal(size=(n, keys))


@pytest.mark.parametrize("cls", [NaiveForecaster, SeasonalNaiveForecaster, SNARIMAXForecaster, HoltWintersForecaster])
def test_snapshot_restore_and_purity(cls):
    make = (lambda: cls(4)) if cls is NaiveForecaster else (lambda: cls(4, 6))
    a, b = make(), make()
    a.ensure_capacity(8)
    b.ensure_capacity(8)
    ys = series()
    slots = np.arange(3)
    for t in range(60):
        a.update(slots, ys[t][:, None], np.zeros(3, bool))
    f1 = a.forecast(slots)
    np.testing.assert_array_equal(f1, a.forecast(slots))  # forecasting changes nothing
    b.restore(np.array([5, 6, 7]), a.snapshot(slots))
    for t in range(60, 120):
        a.update(slots, ys[t][:, None], np.zeros(3, bool))
        b.update(np.array([5, 6, 7]), ys[t][:, None], np.zeros(3, bool))
    np.testing.assert_allclose(a.forecast(slots), b.forecast(np.array([5, 6, 7])), rtol=1e-12)


def test_holt_winters_warm_up_uses_last_value():
    m = HoltWintersForecaster(3, 6)
    m.ensure_capacity(1)
    m.update(np.array([0]), np.array([[5.0]]), np.zeros(1, bool))
    assert m.forecast(np.array([0])).tolist() == [[5.0, 5.0, 5.0]]


def test_seasonal_baselines_beat_naive_on_a_seasonal_series():
    ys = series(n=300, keys=2, season=6)
    models = {"naive": NaiveForecaster(1), "seasonal_naive": SeasonalNaiveForecaster(1, 6),
              "holt_winters": HoltWintersForecaster(1, 6), "snarimax": SNARIMAXForecaster(1, 6)}
    errs = {k: [] for k in models}
    for m in models.values():
        m.ensure_capacity(2)
    for t in range(300):
        for name, m in models.items():
            if t > 100:
                errs[name].append(np.abs(m.forecast(np.arange(2))[:, 0] - ys[t]).mean())
            m.update(np.arange(2), ys[t][:, None], np.zeros(2, bool))
    mae = {k: np.mean(v) for k, v in errs.items()}
    for name in ("seasonal_naive", "holt_winters", "snarimax"):
        assert mae[name] < mae["naive"], mae


def test_diverged_river_forecast_is_nan_and_counted():
    m = SNARIMAXForecaster(3, 1)
    m.ensure_capacity(1)
    for v in (1.0, 2.0, 3.0, 4.0):
        m.update(np.array([0]), np.array([[v]]), np.zeros(1, bool))

    class Exploding:
        def forecast(self, horizon):
            return [1e200] * horizon

    m._models[0] = Exploding()
    f = m.forecast(np.array([0]))
    assert np.isnan(f).all() and m.diverged == 1 and m._models[0] is None


def test_refuses_state_blob_that_would_run_code(tmp_path):
    import pickle

    from streamseq import safepickle
    from streamseq.errors import ArtifactError

    marker = tmp_path / "pwned"

    class Evil:
        def __reduce__(self):
            return (open, (str(marker), "w"))

    with pytest.raises(ArtifactError):
        safepickle.loads(pickle.dumps(Evil()))
    assert not marker.exists()


def test_rnn_as_a_river_forecaster_with_river_evaluation():
    from river import evaluate, metrics

    from streamseq.models.river_adapter import RNNRiverForecaster

    ys = series(n=200, keys=1, season=6)[:, 0]
    dataset = [(None, float(y)) for y in ys]
    model = RNNRiverForecaster(horizon=3, hidden=16, tbptt=4, lr=0.005)
    result = evaluate.evaluate(dataset, model, metrics.MAE(), horizon=3)
    naive = evaluate.evaluate(dataset, _RiverNaive(), metrics.MAE(), horizon=3)
    assert result.get() < naive.get()  # learns the season, which the last value cannot


class _RiverNaive:
    def __init__(self):
        self.last = 0.0

    def learn_one(self, y, x=None):
        self.last = y

    def forecast(self, horizon, xs=None):
        return [self.last] * horizon
