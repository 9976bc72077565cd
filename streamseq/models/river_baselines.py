"""river's SNARIMAX and Holt-Winters, one model per key, through the batch interface.

river models are per-key Python objects, so this is the one place with a
per-key loop on the hot path; it is what the baselines cost. Each key's series
is standardised with running statistics before it reaches river (unscaled
prices and counts make SNARIMAX's SGD diverge; see PITFALLS.md), and a forecast
that comes back non-finite or absurd is reported as NaN (counted as diverged
by the evaluation) and the key's model is rebuilt.
"""
from __future__ import annotations

import math

import numpy as np
from river import compose, linear_model, optim, preprocessing, time_series

from .. import safepickle
from ..keyspace import grow
from .base import BatchForecaster

_ABSURD = 1e3  # |forecast| in standardised units beyond this is divergence


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

    def make(self):
        raise NotImplementedError

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
            m.learn_one(zi)

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
            except (ArithmeticError, ValueError, IndexError):
                ok = False
            if ok:
                out[i] = mean[i] + scale[i] * np.asarray(f, dtype=np.float64)
            else:
                out[i] = np.nan
                self.diverged += 1
                self._models[s] = None  # rebuilt on the next window
        return out

    def snapshot(self, slots):
        blobs = np.empty(len(slots), dtype=object)
        for i, s in enumerate(slots.tolist()):
            m = self._models[s]
            blobs[i] = b"" if m is None else safepickle.dumps(m)
        return {
            "blob": blobs,
            "mean": self._mean[slots].copy(),
            "var": self._var[slots].copy(),
            "n": self._n[slots].copy(),
            "last": self._last[slots].copy(),
        }

    def restore(self, slots, state):
        for s, b in zip(slots.tolist(), state["blob"].tolist()):
            self._models[s] = safepickle.loads(bytes(b)) if len(b) else None
        self._mean[slots] = state["mean"]
        self._var[slots] = state["var"]
        self._n[slots] = state["n"]
        self._last[slots] = state["last"]

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


class HoltWintersForecaster(RiverForecaster):
    name = "holt_winters"

    def make(self):
        # beta must be > 0: river treats 0.0 as "no trend" and crashes (PITFALLS.md).
        if self.season > 1:
            return time_series.HoltWinters(alpha=0.3, beta=0.05, gamma=0.3, seasonality=self.season)
        return time_series.HoltWinters(alpha=0.3, beta=0.05)

    def can_forecast(self, model, n):
        # forecast() raises IndexError until a whole season has been seen.
        return n > max(self.season, 2)
