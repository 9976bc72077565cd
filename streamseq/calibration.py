"""Prediction intervals calibrated online from each key's recent residuals.

Adaptive conformal: for every key and horizon step j the half-width q tracks
the ``level`` quantile of |residual| by a stochastic update, scaled by the
running mean absolute residual so it adapts as fast on prices as on counts:

    q <- q + gamma * s * (1{|r| > q} - (1 - level))

Misses push q up by gamma*s*level, hits pull it down by gamma*s*(1-level), so
at equilibrium a share ``1 - level`` of residuals falls outside.

Residuals need the forecasts that targeted this window, so each key keeps a
ring of its last H forecasts (origin -> H means). The same ring gives each
model's recent error per key, which the ensemble uses to weight models.
"""
from __future__ import annotations

import numpy as np

from .keyspace import grow
from .models.base import KeyedState

NO_ORIGIN = np.iinfo(np.int64).min


class ConformalCalibrator(KeyedState):
    def __init__(self, horizon: int, level: float = 0.9, gamma: float = 0.05, err_alpha: float = 0.05):
        self.horizon = horizon
        self.level = level
        self.gamma = gamma
        self.err_alpha = err_alpha
        H = horizon
        self._fc = np.zeros((0, H, H), np.float32)  # [slot, origin % H, step]
        self._origin = np.zeros((0, H), np.int64)  # wid of the forecast in that ring row
        self._q = np.zeros((0, H))  # half-width per step; NaN until a residual was seen
        self._s = np.zeros((0, H))  # running mean |residual| per step
        self._err = np.zeros(0)  # running mean |residual| of step 1..H (ensemble weights)

    def ensure_capacity(self, capacity: int) -> None:
        self._fc = grow(self._fc, capacity, np.nan)
        self._origin = grow(self._origin, capacity, NO_ORIGIN)
        self._q = grow(self._q, capacity, np.nan)
        self._s = grow(self._s, capacity, np.nan)
        self._err = grow(self._err, capacity, np.nan)

    def observe(self, slots: np.ndarray, wid: int, y: np.ndarray) -> None:
        """The actual y of window ``wid`` arrived: score the forecasts that targeted it."""
        H = self.horizon
        steps = np.arange(1, H + 1)
        origins = wid - steps  # (H,)
        rows = origins % H
        have = self._origin[slots][:, rows] == origins[None, :]  # (n, H)
        fc = self._fc[slots[:, None], rows[None, :], steps[None, :] - 1].astype(np.float64)
        have &= np.isfinite(fc)
        if not have.any():
            return
        r = np.abs(y[:, None] - fc)
        q, s = self._q[slots], self._s[slots]
        new = have & np.isnan(s)
        s = np.where(new, r, s)
        q = np.where(new & np.isnan(q), 1.645 * r, q)  # start at the normal 90% width of one residual
        miss = (r > q).astype(np.float64)
        q_next = np.maximum(q + self.gamma * s * (miss - (1 - self.level)), 0.0)
        s_next = s + self.err_alpha * (r - s)
        self._q[slots] = np.where(have, q_next, q)
        self._s[slots] = np.where(have, s_next, s)
        cnt = have.sum(axis=1)
        mean_err = np.where(cnt > 0, np.where(have, r, 0.0).sum(axis=1) / np.maximum(cnt, 1), np.nan)
        old = self._err[slots]
        upd = np.where(np.isnan(old), mean_err, old + self.err_alpha * (mean_err - old))
        self._err[slots] = np.where(have.any(axis=1), upd, old)

    def record(self, slots: np.ndarray, wid: int, mean: np.ndarray) -> None:
        row = wid % self.horizon
        self._fc[slots, row] = mean.astype(np.float32)
        self._origin[slots, row] = wid

    def bounds(self, slots: np.ndarray, mean: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(lo, hi) of the prediction interval around ``mean``."""
        q = self._q[slots]
        return mean - q, mean + q

    def recent_error(self, slots: np.ndarray) -> np.ndarray:
        return self._err[slots]

    def snapshot(self, slots):
        return {
            "fc": self._fc[slots].copy(),
            "origin": self._origin[slots].copy(),
            "q": self._q[slots].copy(),
            "s": self._s[slots].copy(),
            "err": self._err[slots].copy(),
        }

    def restore(self, slots, state):
        self._fc[slots] = state["fc"]
        self._origin[slots] = state["origin"]
        self._q[slots] = state["q"]
        self._s[slots] = state["s"]
        self._err[slots] = state["err"]

    def reset(self, slots):
        self._fc[slots] = np.nan
        self._origin[slots] = NO_ORIGIN
        self._q[slots] = np.nan
        self._s[slots] = np.nan
        self._err[slots] = np.nan
