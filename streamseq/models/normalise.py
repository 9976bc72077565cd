"""Per-key running normalisation shared by every neural forecaster and the window store.

One implementation, so the RNN, the transformer and the training samples
always agree on a key's units: features are divided by ``norm_scale``, and the
network's output is in ``target_scale`` units (the level's spread, or for
prices the spread of a j-step change).
"""
from __future__ import annotations

import numpy as np

_MAX_MEAN = 1e36  # no window of observations (|value| <= 1e30) has a larger mean; float32 holds it

def norm_scale(mean: np.ndarray, var: np.ndarray) -> np.ndarray:
    """The scale a key's features are divided by ."""
    return np.sqrt(var) + 1e-3 * (np.abs(mean) + 1e-3)


def update_running_stats(mean, var, n, x, real, alpha):
    """New (mean, var) after one window per row; ``n`` = windows seen before it.

    Gap-filled windows (``real`` False) leave the statistics unchanged but
    count in ``n``, exactly as in ``StatefulRNNForecaster.update``.
    """
    a = np.maximum(1.0 / (n + 1), alpha)[:, None]
    delta = x - mean
    new_mean = np.where(real[:, None], mean + a * delta, mean)
    new_var = np.where(real[:, None], (1 - a) * (var + a * delta * delta), var)
    return new_mean, new_var


def update_change_var(dvar, n, x0, prev, real, alpha):
    """Running variance of the target's one-window change ; ``prev`` = the previous window's value."""
    d = np.where(n > 0, x0 - prev, 0.0)
    a = np.where(n > 0, np.maximum(1.0 / np.maximum(n, 1), alpha), 0.0)
    return np.where(real, (1 - a) * dvar + a * d * d, dvar)


def target_scale(level: np.ndarray, dvar: np.ndarray, horizon: int, scale: str) -> np.ndarray:
    """(n, H) unit of the output per step ; ``level`` = the target's norm_scale."""
    level = level[:, None]
    if scale == "change":
        steps = np.sqrt(np.arange(1, horizon + 1))[None, :]
        return np.minimum(np.sqrt(dvar)[:, None] * steps, 2.0 * level) + 1e-3 * level
    return np.repeat(level, horizon, axis=1)



class RunningStats:
    """Per-key arena of the statistics above: running mean/variance of every feature and the
    variance of the target's one-window change. Both neural forecasters hold one, so their
    per-key state and snapshots have the same fields (mean, var, dvar)."""

    def __init__(self, n_features: int, alpha: float):
        self.alpha = alpha
        self.mean = np.zeros((0, n_features))
        self.var = np.zeros((0, n_features))
        self.dvar = np.zeros(0)

    def ensure_capacity(self, capacity: int) -> None:
        from ..keyspace import grow

        self.mean = grow(self.mean, capacity, 0.0)
        self.var = grow(self.var, capacity, 0.0)
        self.dvar = grow(self.dvar, capacity, 0.0)

    def update(self, slots, n, x, prev, real, features: bool = True) -> None:
        """One window per row: ``n`` windows seen before it, ``prev`` the previous target value."""
        if features:
            self.mean[slots], self.var[slots] = update_running_stats(
                self.mean[slots], self.var[slots], n, x, real, self.alpha)
        self.dvar[slots] = update_change_var(self.dvar[slots], n, x[:, 0], prev, real, self.alpha)

    def scale(self, slots) -> np.ndarray:
        return norm_scale(self.mean[slots], self.var[slots])  # (n, F)

    def target_scale(self, slots, horizon: int, mode: str) -> np.ndarray:
        return target_scale(self.scale(slots)[:, 0], self.dvar[slots], horizon, mode)  # (n, H)

    def snapshot(self, slots) -> dict[str, np.ndarray]:
        return {"mean": self.mean[slots].copy(), "var": self.var[slots].copy(), "dvar": self.dvar[slots].copy()}

    def state_faults(self, state: dict) -> np.ndarray:
        """Keys whose statistics no update writes (NaN, a negative variance, a mean past float32): in
        a shared network's learning step they would turn every key's weights into NaN."""
        mean, var = np.asarray(state["mean"], np.float64), np.asarray(state["var"], np.float64)
        dvar = np.asarray(state.get("dvar", np.zeros(len(mean))), np.float64)
        ok = ((np.abs(mean) <= _MAX_MEAN).all(axis=1) & ((var >= 0) & (var <= _MAX_MEAN**2)).all(axis=1)
              & (dvar >= 0) & (dvar <= _MAX_MEAN**2))
        return ~ok

    def restore(self, slots, state: dict) -> None:
        self.mean[slots] = state["mean"]
        self.var[slots] = state["var"]
        self.dvar[slots] = state.get("dvar", 0.0)

    def reset(self, slots) -> None:
        self.mean[slots] = 0.0
        self.var[slots] = 0.0
        self.dvar[slots] = 0.0
