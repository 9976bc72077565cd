"""Naive and seasonal-naive forecasts, vectorised over keys."""
from __future__ import annotations

import numpy as np

from ..keyspace import grow
from .base import BatchForecaster


class NaiveForecaster(BatchForecaster):
    """Every step = the last observed value.

    >>> m = NaiveForecaster(horizon=3); m.ensure_capacity(2)
    >>> m.update(np.array([0, 1]), np.array([[1.0], [5.0]]), np.array([False, False]))
    >>> m.forecast(np.array([1, 0])).tolist()
    [[5.0, 5.0, 5.0], [1.0, 1.0, 1.0]]
    """

    name = "naive"

    def __init__(self, horizon: int):
        self.horizon = horizon
        self._last = np.zeros(0)

    def ensure_capacity(self, capacity):
        self._last = grow(self._last, capacity, np.nan)

    def update(self, slots, x, filled, wid=None):
        self._last[slots] = x[:, 0]

    def forecast(self, slots):
        return np.repeat(self._last[slots][:, None], self.horizon, axis=1)

    def snapshot(self, slots):
        return {"last": self._last[slots].copy()}

    def restore(self, slots, state):
        self._last[slots] = state["last"]

    def reset(self, slots):
        self._last[slots] = np.nan


class SeasonalNaiveForecaster(BatchForecaster):
    """Step j = the value one season before the target; naive until a season has been seen.

    >>> m = SeasonalNaiveForecaster(horizon=4, season=2); m.ensure_capacity(1)
    >>> for v in (1.0, 2.0, 3.0): m.update(np.array([0]), np.array([[v]]), np.array([False]))
    >>> m.forecast(np.array([0])).tolist()
    [[2.0, 3.0, 2.0, 3.0]]
    """

    name = "seasonal_naive"

    def __init__(self, horizon: int, season: int):
        self.horizon = horizon
        self.season = max(1, int(season))
        self._ring = np.zeros((0, self.season))
        self._n = np.zeros(0, np.int64)

    def ensure_capacity(self, capacity):
        self._ring = grow(self._ring, capacity, np.nan)
        self._n = grow(self._n, capacity, 0)

    def update(self, slots, x, filled, wid=None):
        self._ring[slots, self._n[slots] % self.season] = x[:, 0]
        self._n[slots] += 1

    def forecast(self, slots):
        n = self._n[slots]  # next write position = n % m holds the value one season before step 1
        j = np.arange(self.horizon)
        pos = (n[:, None] + j[None, :]) % self.season
        out = self._ring[slots[:, None], pos]
        last = self._ring[slots, (n - 1) % self.season]
        young = n < self.season
        out[young] = last[young, None]
        return out

    def snapshot(self, slots):
        return {"ring": self._ring[slots].copy(), "n": self._n[slots].copy()}

    def restore(self, slots, state):
        self._ring[slots] = state["ring"]
        self._n[slots] = state["n"]

    def reset(self, slots):
        self._ring[slots] = np.nan
        self._n[slots] = 0
