"""river's SNARIMAX and Holt-Winters, one model per key, through the batch interface.

river models are per-key Python objects, so this is the one place with a
per-key loop on the hot path; it is what the baselines cost. Each key's series
is standardised with running statistics before it reaches river (unscaled
prices and counts make SNARIMAX's SGD diverge to ~1e200), and a forecast
that comes back non-finite or absurd is reported as NaN (counted as diverged
by the evaluation) and the key's model is rebuilt.

A key's river model is snapshot as plain data (``river_state``): the numbers it
has learned, never a pickle. Restoring builds the model with ``make()`` and loads
those numbers into it; a state that does not fit starts that key afresh.
"""
from __future__ import annotations

import logging
import math
import statistics

import numpy as np
from river import compose, linear_model, optim, preprocessing, time_series

from ..errors import ArtifactError
from ..keyspace import grow
from .base import BatchForecaster
from .river_state import BOOL, COUNT_MAP, FLOAT, FLOAT_MAP, FLOATS, INT, Field, StateLayout

_ABSURD = 1e3  # |forecast| in standardised units beyond this is divergence
# What a river model raises on numbers it cannot work with (diverged, or a restored state that is
# well-typed but inconsistent): the key's model is rebuilt instead of stopping the stream.
_MODEL_FAULTS = (ArithmeticError, ValueError, IndexError, KeyError, TypeError)
_NO_VALUES = np.empty(0, np.float64)
_DIVERGED = object()  # a forecast row that came back non-finite or absurd
log = logging.getLogger("streamseq.models.river")


class RiverForecaster(BatchForecaster):
    def __init__(self, horizon: int, season: int):
        self.horizon = horizon
        self.season = max(1, int(season))
        self._models: list = []
        self._mean = np.zeros(0)
        self._var = np.zeros(0)
        self._n = np.zeros(0, np.int64)
        self._last = np.zeros(0)
        self.diverged = 0
        self._layout: StateLayout | None = None

    def make(self):
        raise NotImplementedError

    def state_layout(self, fresh) -> StateLayout:
        """Where a model made by ``make()`` (``fresh``) keeps what it learns."""
        raise NotImplementedError

    @property
    def layout(self) -> StateLayout:
        if self._layout is None:
            self._layout = self.state_layout(self.make())
        return self._layout

    def can_forecast(self, model, n: int) -> bool:
        return n > 0

    def ensure_capacity(self, capacity):
        while len(self._models) < capacity:
            self._models.append(None)
        self._mean = grow(self._mean, capacity, 0.0)
        self._var = grow(self._var, capacity, 0.0)
        self._n = grow(self._n, capacity, 0)
        self._last = grow(self._last, capacity, np.nan)

    def _scale(self, slots):
        return np.sqrt(self._var[slots]) + 1e-6 * (np.abs(self._mean[slots]) + 1e-6)

    def update(self, slots, x, filled, wid=None):
        y = x[:, 0]
        n = self._n[slots]
        # Welford with a floor on the weight: long series keep adapting.
        a = np.maximum(1.0 / (n + 1), 0.01)
        delta = y - self._mean[slots]
        self._mean[slots] += a * delta
        self._var[slots] = (1 - a) * (self._var[slots] + a * delta * delta)
        self._n[slots] = n + 1
        self._last[slots] = y
        z = (y - self._mean[slots]) / self._scale(slots)
        models = self._models
        for s, zi in zip(slots.tolist(), z.tolist()):
            m = models[s]
            if m is None:
                m = models[s] = self.make()
            try:
                m.learn_one(zi)
            except _MODEL_FAULTS:
                models[s] = None  # rebuilt on the next window
                self.diverged += 1

    def advance(self, steps):
        """``update`` + ``forecast`` window end after window end, the per-key arithmetic in Python floats
        (the same IEEE operations as the arrays', so the same bits) and every forecast turned into the
        target's units in one array operation: what is left per key and window is river's own work."""
        H = self.horizon
        models, make, ncan = self._models, self.make, self.can_forecast
        mean_a, var_a, n_a, last_a = self._mean, self._var, self._n, self._last
        state: dict[int, list] = {}  # slot -> [mean, var, n, last] while the steps run
        rows: list = []  # per forecast row: the forecast list (or None: warm-up, or NaN: diverged)
        row_mean: list[float] = []
        row_scale: list[float] = []
        row_last: list[float] = []
        sizes = []
        for st in steps:
            y_all = st.x[:, 0].tolist()
            real = (~st.filled).tolist()
            k = 0
            for s, y, r in zip(st.slots.tolist(), y_all, real):
                m_ = state.get(s)
                if m_ is None:
                    m_ = state[s] = [float(mean_a[s]), float(var_a[s]), int(n_a[s]), float(last_a[s])]
                mean, var, n = m_[0], m_[1], m_[2]
                a = max(1.0 / (n + 1), 0.01)  # as update(): Welford with a floor on the weight
                delta = y - mean
                mean = mean + a * delta
                var = (1 - a) * (var + a * delta * delta)
                n += 1
                m_[0], m_[1], m_[2], m_[3] = mean, var, n, y
                scale = math.sqrt(var) + 1e-6 * (abs(mean) + 1e-6)
                m = models[s]
                if m is None:
                    m = models[s] = make()
                try:
                    m.learn_one((y - mean) / scale)
                except _MODEL_FAULTS:
                    models[s] = m = None
                    self.diverged += 1
                if not r:
                    continue
                k += 1
                row_mean.append(mean)
                row_scale.append(scale)
                row_last.append(y)
                if m is None or not ncan(m, n):
                    rows.append(None)
                    continue
                try:
                    f = m.forecast(horizon=H)
                    ok = all(math.isfinite(v) and abs(v) < _ABSURD for v in f)
                except _MODEL_FAULTS:
                    ok = False
                if ok:
                    rows.append(f)
                else:
                    rows.append(_DIVERGED)
                    self.diverged += 1
                    models[s] = None  # rebuilt on the next window
            sizes.append(k)
        if state:
            slots = np.fromiter(state, np.int64, len(state))
            vals = np.array(list(state.values()), dtype=np.float64)
            mean_a[slots], var_a[slots], n_a[slots], last_a[slots] = vals[:, 0], vals[:, 1], vals[:, 2], vals[:, 3]
        out = np.empty((len(rows), H))
        have = [i for i, f in enumerate(rows) if f is not None and f is not _DIVERGED]
        if have:
            f = np.array([rows[i] for i in have], dtype=np.float64)
            out[have] = np.array(row_mean)[have, None] + np.array(row_scale)[have, None] * f
        warm = [i for i, f in enumerate(rows) if f is None]
        if warm:
            out[warm] = np.array(row_last)[warm, None]  # warm-up: the last value
        out[[i for i, f in enumerate(rows) if f is _DIVERGED]] = np.nan
        return np.split(out, np.cumsum(sizes)[:-1]) if sizes else []

    def forecast(self, slots):
        out = np.empty((len(slots), self.horizon))
        mean, scale = self._mean[slots], self._scale(slots)
        for i, s in enumerate(slots.tolist()):
            m = self._models[s]
            if m is None or not self.can_forecast(m, int(self._n[s])):
                out[i] = self._last[s]  # warm-up: the last value
                continue
            try:
                f = m.forecast(horizon=self.horizon)
                ok = all(math.isfinite(v) and abs(v) < _ABSURD for v in f)
            except _MODEL_FAULTS:
                ok = False
            if ok:
                out[i] = mean[i] + scale[i] * np.asarray(f, dtype=np.float64)
            else:
                out[i] = np.nan
                self.diverged += 1
                self._models[s] = None  # rebuilt on the next window
        return out

    def snapshot(self, slots):
        n = len(slots)
        tree, values = np.empty(n, dtype=object), np.empty(n, dtype=object)
        layout = self.layout
        for i, s in enumerate(slots.tolist()):
            m = self._models[s]
            if m is None:
                tree[i], values[i] = b"", _NO_VALUES
            else:
                tree[i], values[i] = layout.dump(m)
        return {
            "tree": tree,  # JSON: lengths, feature names, counters (river_state.StateLayout)
            "values": values,  # float64, one vector per key: every float the model holds
            "mean": self._mean[slots].copy(),
            "var": self._var[slots].copy(),
            "n": self._n[slots].copy(),
            "last": self._last[slots].copy(),
        }

    def restore(self, slots, state):
        """Keys whose state does not fit (refused by the layout, or statistics a key cannot
        have: non-finite, negative) start afresh with a warning; the other keys are restored."""
        fields = [state[k] for k in ("tree", "values", "mean", "var", "n", "last")]
        if any(len(a) != len(slots) for a in fields):
            raise ValueError(f"{self.name} state: expected {len(slots)} rows per field")
        tree, values, mean, var, n, last = fields
        mean, var, n, last = (np.asarray(a) for a in (mean, var, n, last))
        ok = np.isfinite(mean) & np.isfinite(var) & (var >= 0) & (n >= 0) & ~np.isinf(last)
        why = "" if ok.all() else "non-finite or negative statistics"
        models = []
        for i, (t, v) in enumerate(zip(tree.tolist(), values.tolist())):
            m = None
            if ok[i]:
                try:
                    m = self._load(t, v)
                except ArtifactError as exc:
                    ok[i] = False
                    why = why or str(exc)
            models.append(m)
        for s, m in zip(slots.tolist(), models):
            self._models[s] = m
        self._mean[slots] = mean
        self._var[slots] = var
        self._n[slots] = n
        self._last[slots] = last
        if not ok.all():
            log.warning("%s: state of %d of %d keys does not fit (%s); they start afresh",
                        self.name, int((~ok).sum()), len(slots), why[:200])
            self.reset(slots[~ok])

    def _load(self, tree, values):
        if not isinstance(tree, bytes):
            raise ArtifactError("river state: the tree is not bytes")
        if not tree:
            if not isinstance(values, np.ndarray) or len(values):
                raise ArtifactError("river state: values without a model")
            return None
        m = self.make()
        self.layout.load(m, tree, values)
        return m

    def reset(self, slots):
        for s in slots.tolist():
            self._models[s] = None
        self._mean[slots] = 0.0
        self._var[slots] = 0.0
        self._n[slots] = 0
        self._last[slots] = np.nan


class SNARIMAXForecaster(RiverForecaster):
    name = "snarimax"

    def make(self):
        m = self.season if self.season > 1 else 1
        return time_series.SNARIMAX(
            p=2, d=0, q=1, m=m, sp=1 if m > 1 else 0, sd=0, sq=0,
            regressor=compose.Pipeline(
                preprocessing.StandardScaler(),
                linear_model.LinearRegression(intercept_init=0.0, optimizer=optim.SGD(0.005), intercept_lr=0.01),
            ),
        )

    def state_layout(self, fresh):
        # The feature names SNARIMAX can build with these orders: its maps hold no others.
        names = fresh._add_lag_features(None, [0.0] * fresh.y_diff.maxlen, [0.0] * fresh.errors.maxlen)
        scaler, linear = "regressor.steps.StandardScaler", "regressor.steps.LinearRegression"
        return StateLayout([
            Field("y_hist", "y_hist", FLOATS),
            Field("y_diff", "y_diff", FLOATS),
            Field("errors", "errors", FLOATS),
            Field("scaler_counts", f"{scaler}.counts", COUNT_MAP),
            Field("scaler_means", f"{scaler}.means", FLOAT_MAP),
            Field("scaler_vars", f"{scaler}.vars", FLOAT_MAP),
            Field("weights", f"{linear}._weights", FLOAT_MAP),
            Field("intercept", f"{linear}.intercept", FLOAT),
            Field("sgd_steps", f"{linear}.optimizer.n_iterations", INT),
        ], names=frozenset(names))


class AdditiveHoltWinters(time_series.HoltWinters):
    """river's additive Holt-Winters with the seasonal start it means: river 0.26 starts additive
    seasonal terms at ``y / level`` (the multiplicative start), which on standardised values (level
    near 0) makes them huge, and raises ZeroDivisionError when the first values average 0. The
    additive start is ``y - level``; the updates are river's own."""

    def learn_one(self, y, x=None):
        if self._initialized or len(self._first_values) + 1 < max(2, self.seasonality):
            return super().learn_one(y, x)
        values = [*self._first_values, y]
        level = statistics.fmean(values)
        self.level.append(level)
        if self.trend is not None:
            self.trend.append(statistics.fmean(b - a for a, b in zip(values[:-1], values[1:])))
        if self.season is not None:
            self.season.extend(v - level for v in values)
        self._first_values = values
        self._initialized = True


class HoltWintersForecaster(RiverForecaster):
    name = "holt_winters"

    def make(self):
        # beta must be > 0: river treats 0.0 as "no trend" and crashes.
        if self.season > 1:
            return AdditiveHoltWinters(alpha=0.3, beta=0.05, gamma=0.3, seasonality=self.season)
        return AdditiveHoltWinters(alpha=0.3, beta=0.05)

    def state_layout(self, fresh):
        return StateLayout([
            Field("level", "level", FLOATS),
            Field("trend", "trend", FLOATS),
            Field("season", "season", FLOATS),
            # river keeps the first max(2, seasonality) values to initialise the components
            Field("first_values", "_first_values", FLOATS, max_len=max(2, fresh.seasonality or 0)),
            Field("initialized", "_initialized", BOOL),
        ])

    def can_forecast(self, model, n):
        # forecast() raises IndexError until a whole season has been seen.
        return n > max(self.season, 2)
