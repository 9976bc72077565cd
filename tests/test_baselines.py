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
    np.testing.assert_array_equal(a.forecast(slots), b.forecast(np.array([5, 6, 7])))


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


# -- river state as plain data ------------------------------------------------------------------
RIVER = [SNARIMAXForecaster, HoltWintersForecaster]
# river compose.Pipeline's execution plan: a cache rebuilt from its steps on first use, not learned state
PLAN_CACHE = {"_plan", "_inference_transformers", "_last_step_cached", "_last_step_params"}


def plain(obj, seen=None):
    """Everything an object holds, recursively, as comparable plain data (NaN as a string)."""
    import collections
    import math

    from river import utils

    seen = {} if seen is None else seen
    if obj is None or isinstance(obj, (bool, int, str, bytes)):
        return obj
    if isinstance(obj, float):
        return "nan" if math.isnan(obj) else obj
    if isinstance(obj, type) or callable(obj) and not hasattr(obj, "__dict__"):
        return ("callable", getattr(obj, "__qualname__", repr(obj)))
    if id(obj) in seen:
        return ("same object as", seen[id(obj)])
    seen[id(obj)] = len(seen)
    out = [type(obj).__qualname__]
    if isinstance(obj, utils.VectorDict):
        out.append([(k, plain(v, seen)) for k, v in obj.items()])
    elif isinstance(obj, dict):
        out.append([(plain(k, seen), plain(v, seen)) for k, v in obj.items()])
        out.append(plain(getattr(obj, "default_factory", None), seen))
    elif isinstance(obj, (set, frozenset)):
        out.append(sorted(plain(v, seen) for v in obj))
    elif isinstance(obj, (list, tuple, collections.deque)):
        out.append([plain(v, seen) for v in obj])
        out.append(getattr(obj, "maxlen", None))
    if hasattr(obj, "__dict__"):
        out.append([(k, plain(v, seen)) for k, v in sorted(vars(obj).items()) if k not in PLAN_CACHE])
    return out


def advance(m, ys, slots, windows, filled=None):
    for t in windows:
        m.update(slots, ys[t][:, None], np.zeros(len(slots), bool) if filled is None else filled)


@pytest.mark.parametrize("cls", RIVER)
@pytest.mark.parametrize("season", [1, 6, 24])
def test_river_state_restores_the_whole_model_bit_for_bit(cls, season):
    """At points through warm-up and after many windows: the restored model holds exactly what the
    original holds (every attribute, not only those the layout names), and it goes on to forecast
    bit for bit what the original forecasts."""
    ys = series(n=120, keys=3, season=max(season, 2), seed=1)
    slots, other = np.arange(3), np.array([7, 2, 4])
    a = cls(5, season)
    a.ensure_capacity(3)
    restored = []
    for t in range(120):
        advance(a, ys, slots, [t])
        for b in restored:
            advance(b, ys, other, [t])
            assert a.forecast(slots).tobytes() == b.forecast(other).tobytes(), t
        if t in (0, 1, 2, season - 1, season, season + 1, 2 * season + 3, 119):
            b = cls(5, season)
            b.ensure_capacity(8)
            b.restore(other, a.snapshot(slots))
            for s, o in zip(slots.tolist(), other.tolist()):
                assert plain(b._models[o]) == plain(a._models[s]), (t, s)
            assert a.forecast(slots).tobytes() == b.forecast(other).tobytes()
            restored.append(b)


@pytest.mark.parametrize("cls", RIVER)
def test_river_state_of_diverged_and_rebuilt_keys(cls):
    """A key whose model diverged (reset, rebuilt on the next window) restores to the same place."""
    ys = series(n=80, keys=2, season=6, seed=2)
    slots = np.arange(2)
    a, b = cls(4, 6), cls(4, 6)
    a.ensure_capacity(2)
    b.ensure_capacity(2)
    advance(a, ys, slots, range(30))

    class Exploding:
        def forecast(self, horizon):
            return [float("inf")] * horizon

    a._models[1] = Exploding()
    assert np.isnan(a.forecast(slots)[1]).all() and a._models[1] is None and a.diverged == 1
    b.restore(slots, a.snapshot(slots))  # diverged: no model, statistics kept
    assert b._models[1] is None and b._n[1] == a._n[1]
    for t in range(30, 34):
        advance(a, ys, slots, [t])
        advance(b, ys, slots, [t])
        assert a.forecast(slots).tobytes() == b.forecast(slots).tobytes()
    b = cls(4, 6)
    b.ensure_capacity(2)
    b.restore(slots, a.snapshot(slots))  # rebuilt: a young model next to an old one
    for t in range(34, 80):
        advance(a, ys, slots, [t])
        advance(b, ys, slots, [t])
    assert a.forecast(slots).tobytes() == b.forecast(slots).tobytes()


def test_river_state_keeps_non_finite_numbers_of_a_diverging_model():
    m = SNARIMAXForecaster(3, 1)
    m.ensure_capacity(1)
    advance(m, series(n=10, keys=1, season=2), np.arange(1), range(10))
    m._models[0].regressor["LinearRegression"]._weights["y-1"] = float("inf")
    tree, values = m.snapshot(np.arange(1))["tree"][0], m.snapshot(np.arange(1))["values"][0]
    assert np.isinf(values).any() and b"inf" not in tree.lower()
    b = SNARIMAXForecaster(3, 1)
    b.ensure_capacity(1)
    b.restore(np.arange(1), m.snapshot(np.arange(1)))
    assert plain(b._models[0]) == plain(m._models[0])


def test_river_state_is_plain_data():
    import orjson

    m = SNARIMAXForecaster(4, 6)
    m.ensure_capacity(1)
    advance(m, series(n=30, keys=1), np.arange(1), range(30))
    snap = m.snapshot(np.arange(1))
    tree = orjson.loads(snap["tree"][0])
    assert set(tree) == {"y_hist", "y_diff", "errors", "scaler_counts", "scaler_means", "scaler_vars", "weights",
                         "intercept", "sgd_steps"}
    assert snap["values"][0].dtype == np.float64 and snap["values"][0].ndim == 1
    assert tree["weights"] == ["y-1", "e-1", "y-2", "sy-6"] and tree["sgd_steps"] == 30


def _crafted(cls, edit):
    """A snapshot of two keys where key 0's tree was changed by ``edit(tree, values) -> (tree, values)``."""
    import json

    import orjson

    m = cls(4, 6)
    m.ensure_capacity(2)
    advance(m, series(n=40, keys=2), np.arange(2), range(40))
    snap = m.snapshot(np.arange(2))
    tree, values = edit(orjson.loads(snap["tree"][0]), snap["values"][0].copy())
    snap["tree"][0] = tree if isinstance(tree, bytes) else json.dumps(tree).encode()
    snap["values"][0] = values
    return m, snap


SNARIMAX_EDITS = {
    "unknown field": lambda t, v: ({**t, "eval": 1}, v),
    "missing field": lambda t, v: ({k: x for k, x in t.items() if k != "weights"}, v),
    "deque longer than its maxlen": lambda t, v: ({**t, "errors": 2}, np.r_[v, 0.0]),
    "negative length": lambda t, v: ({**t, "errors": -1}, v),
    "length as a string": lambda t, v: ({**t, "errors": "1"}, v),
    "length as a bool": lambda t, v: ({**t, "errors": True}, v),
    "unknown feature name": lambda t, v: ({**t, "weights": t["weights"][:-1] + ["__class__"]}, v),
    "duplicate feature name": lambda t, v: ({**t, "weights": [t["weights"][0]] * len(t["weights"])}, v),
    "feature name not a string": lambda t, v: ({**t, "weights": [1] + t["weights"][1:]}, v),
    "too few values": lambda t, v: (t, v[:-1]),
    "too many values": lambda t, v: (t, np.r_[v, 1.0]),
    "values not float64": lambda t, v: (t, v.astype(np.float32)),
    "values not a vector": lambda t, v: (t, v[:, None]),
    "negative count": lambda t, v: ({**t, "scaler_counts": [t["scaler_counts"][0], [-1] * 4]}, v),
    "float count": lambda t, v: ({**t, "scaler_counts": [t["scaler_counts"][0], [1.5] * 4]}, v),
    "counts of another length": lambda t, v: ({**t, "scaler_counts": [t["scaler_counts"][0], [1]]}, v),
    "huge integer": lambda t, v: ({**t, "sgd_steps": 2**70}, v),
    "bool for an integer": lambda t, v: ({**t, "sgd_steps": True}, v),
    "value for a float placeholder": lambda t, v: ({**t, "intercept": 1.0}, v),
    "not an object": lambda t, v: ([1, 2], v),
    "not JSON": lambda t, v: (b"\x80\x04\x95", v),
    "nested too deep": lambda t, v: (b"[" * 100_000, v),
    "values without a model": lambda t, v: (b"", v),
}


@pytest.mark.parametrize("what", sorted(SNARIMAX_EDITS))
def test_river_state_that_does_not_fit_starts_that_key_afresh(what, caplog):
    m, snap = _crafted(SNARIMAXForecaster, SNARIMAX_EDITS[what])
    b = SNARIMAXForecaster(4, 6)
    b.ensure_capacity(2)
    b.restore(np.arange(2), snap)
    assert b._models[0] is None and b._n[0] == 0 and np.isnan(b._last[0])  # afresh
    assert plain(b._models[1]) == plain(m._models[1])  # the other key is restored
    assert "does not fit" in caplog.text
    advance(b, series(n=3, keys=2), np.arange(2), range(3))  # and the stream goes on
    assert np.isfinite(b.forecast(np.arange(2))).all()


@pytest.mark.parametrize("edit", [
    lambda t, v: ({**t, "initialized": 1}, v),
    lambda t, v: ({**t, "season": 8}, np.r_[v, 0.0]),  # one more than seasonality + 1
    lambda t, v: ({**t, "first_values": 7}, np.r_[v, 0.0]),
])
def test_holt_winters_state_that_does_not_fit(edit):
    m, snap = _crafted(HoltWintersForecaster, edit)
    b = HoltWintersForecaster(4, 6)
    b.ensure_capacity(2)
    b.restore(np.arange(2), snap)
    assert b._models[0] is None and plain(b._models[1]) == plain(m._models[1])


def test_inconsistent_but_well_typed_state_rebuilds_the_model_instead_of_failing():
    """Holt-Winters marked initialised with empty components: learning raises inside river."""
    m, snap = _crafted(HoltWintersForecaster, lambda t, v: (
        {**t, "level": 0, "trend": 0, "season": 0}, v[t["level"] + t["trend"] + t["season"]:]))
    b = HoltWintersForecaster(4, 6)
    b.ensure_capacity(2)
    b.restore(np.arange(2), snap)
    assert b._models[0] is not None
    advance(b, series(n=2, keys=2), np.arange(2), range(2))
    assert b.diverged >= 1 and np.isfinite(b.forecast(np.arange(2))[1]).all()


@pytest.mark.parametrize("field,value", [("mean", np.nan), ("var", -1.0), ("var", np.inf), ("n", -3),
                                         ("last", np.inf)])
def test_river_statistics_that_a_key_cannot_have(field, value):
    m, snap = _crafted(SNARIMAXForecaster, lambda t, v: (t, v))
    snap[field] = snap[field].copy()
    snap[field][0] = value
    b = SNARIMAXForecaster(4, 6)
    b.ensure_capacity(2)
    b.restore(np.arange(2), snap)
    assert b._models[0] is None and b._n[0] == 0 and b._var[0] == 0.0
    assert plain(b._models[1]) == plain(m._models[1])
